import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { BODY_LIMIT, createApi, parseIfMatch } from '../../src/api/server.js'
import type { Row } from '../../src/schema/index.js'
import { UserDirectory } from '../../src/security/users.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

let dir: TempDir
let node: LocalNode
let app: FastifyInstance
/** The admin's token: these tests are about rows, not rights (test/unit/auth.test.ts is) */
let token: string

beforeEach(async () => {
  dir = await tempDir('ntk-api-')
  node = await openLocalNode(dir.path)
  const users = new UserDirectory({ db: node.db })
  await users.ensureRoles()
  token = (await users.add('admin', 'admin')).token
  app = createApi({ db: node.db, users, status: async () => ({ ok: true, rows: await node.store.countRows() }) })
  await app.ready()
})

afterEach(async () => {
  await app.close()
  await node.close()
  await dir.remove()
})

const patient = patientRow

async function request (opts: InjectOptions): Promise<LightMyRequestResponse & { body: string, json: <T = any>() => T }> {
  return await app.inject({ ...opts, headers: { authorization: `Bearer ${token}`, ...opts.headers } })
}

/** Checks the error body shape and returns its `error` */
function errorOf (res: LightMyRequestResponse): { code: string, message: string, column?: string } {
  expect(res.headers['content-type']).toMatch(/^application\/json/)
  const body = res.json()
  expect(Object.keys(body)).toEqual(['error'])
  expect(typeof body.error.code).toBe('string')
  expect(typeof body.error.message).toBe('string')
  expect(body.error.message.length).toBeGreaterThan(0)
  return body.error
}

async function post (table: string, row: unknown): Promise<LightMyRequestResponse> {
  return await request({ method: 'POST', url: `/v1/tables/${table}/rows`, payload: row as Record<string, unknown> })
}

async function count (table: string): Promise<number> {
  return (await node.db.list(table, {}, { limit: 1000 })).rows.length
}

describe('api: rows', () => {
  it('creates a row with 201 and an ETag that is the quoted version', async () => {
    const res = await post('patient_records', patient(1))
    expect(res.statusCode).toBe(201)
    const body = res.json()
    expect(body).toEqual({ id: '1', version: expect.any(String), row: { ...patient(1), allergies: null } })
    expect(res.headers.etag).toBe(`"${body.version as string}"`)

    const get = await request({ method: 'GET', url: '/v1/tables/patient_records/rows/1' })
    expect(get.statusCode).toBe(200)
    expect(get.json()).toEqual({ row: body.row, version: body.version, conflicts: [] })
    expect(get.headers.etag).toBe(`"${body.version as string}"`)
  })

  it('makes an id when the body has none', async () => {
    const { patient_id: _, ...noKey } = patient(0)
    const res = await post('patient_records', noKey)
    expect(res.statusCode).toBe(201)
    const { id } = res.json()
    expect((await request({ method: 'GET', url: `/v1/tables/patient_records/rows/${id as string}` })).statusCode).toBe(200)
  })

  it('answers 400 with the column for an invalid row, and stores nothing', async () => {
    const res = await post('patient_records', patient(1, { contact_number: '01234567890' }))
    expect(res.statusCode).toBe(400)
    expect(errorOf(res)).toMatchObject({ code: 'INVALID', column: 'contact_number' })
    const unknown = await post('patient_records', patient(1, { blood_type: 'O+' }))
    expect(unknown.statusCode).toBe(400)
    expect(errorOf(unknown)).toMatchObject({ code: 'INVALID', column: 'blood_type' })
    // Text that no encoding can carry is a 400 too, never a 500 from an index key.
    // Role 1 (admin) is one of the roles a network is created with.
    const surrogate = await request({ method: 'POST', url: '/v1/tables/users/rows', headers: { 'content-type': 'application/json' }, payload: '{"user_id": 1, "user_name": "x\\ud800", "role_id": 1}' })
    expect(surrogate.statusCode).toBe(400)
    expect(errorOf(surrogate)).toMatchObject({ code: 'INVALID', column: 'user_name' })
    expect(await count('patient_records')).toBe(0)
    expect(await count('users')).toBe(1) // the admin these tests act as
  })

  it('answers 400 to malformed JSON and to a missing body, and stores nothing', async () => {
    const res = await request({ method: 'POST', url: '/v1/tables/patient_records/rows', headers: { 'content-type': 'application/json' }, payload: '{"patient_id": 1,' })
    expect(res.statusCode).toBe(400)
    expect(errorOf(res).code).toBe('INVALID')
    const empty = await request({ method: 'POST', url: '/v1/tables/patient_records/rows', headers: { 'content-type': 'application/json' }, payload: '' })
    expect(empty.statusCode).toBe(400)
    expect(errorOf(empty).code).toBe('INVALID')
    const none = await request({ method: 'POST', url: '/v1/tables/patient_records/rows' })
    expect(none.statusCode).toBe(400)
    expect(errorOf(none).code).toBe('INVALID')
    expect(await count('patient_records')).toBe(0)
  })

  it('answers 415 to a body that is not JSON', async () => {
    for (const type of ['text/plain', 'text/csv', 'application/x-ndjson', 'application/xml']) {
      const res = await request({ method: 'POST', url: '/v1/tables/patient_records/rows', headers: { 'content-type': type }, payload: JSON.stringify(patient(1)) })
      expect(res.statusCode, type).toBe(415)
      expect(errorOf(res).code).toBe('UNSUPPORTED_MEDIA_TYPE')
    }
    const put = await request({ method: 'PUT', url: '/v1/tables/patient_records/rows/1', headers: { 'content-type': 'text/plain' }, payload: JSON.stringify(patient(1)) })
    expect(put.statusCode).toBe(415)
    expect(await count('patient_records')).toBe(0)
  })

  it('answers 413 to a JSON body over 1 MiB', async () => {
    const res = await post('patient_records', patient(1, { address: 'x'.repeat(BODY_LIMIT) }))
    expect(res.statusCode).toBe(413)
    expect(errorOf(res).code).toBe('TOO_LARGE')
    expect(await count('patient_records')).toBe(0)
  })

  it('answers 404 to a missing row, an unknown table and an unknown route', async () => {
    const row = await request({ method: 'GET', url: '/v1/tables/patient_records/rows/42' })
    expect(row.statusCode).toBe(404)
    expect(errorOf(row).code).toBe('NOT_FOUND')
    for (const [method, url] of [['GET', '/v1/tables/nope/rows/1'], ['GET', '/v1/tables/nope/rows'], ['POST', '/v1/tables/nope/rows']] as const) {
      const res = await request({ method, url, ...(method === 'POST' ? { payload: {} } : {}) })
      expect(res.statusCode, url).toBe(404)
      expect(errorOf(res).code).toBe('UNKNOWN_TABLE')
    }
    const route = await request({ method: 'GET', url: '/v1/nowhere' })
    expect(route.statusCode).toBe(404)
    expect(errorOf(route).code).toBe('NOT_FOUND')
    const badId = await request({ method: 'GET', url: '/v1/tables/patient_records/rows/abc' })
    expect(badId.statusCode).toBe(400)
  })

  it('answers 409 to an existing key and to a missing reference', async () => {
    expect((await post('patient_records', patient(1))).statusCode).toBe(201)
    const dup = await post('patient_records', patient(1))
    expect(dup.statusCode).toBe(409)
    expect(errorOf(dup).code).toBe('CONFLICT')
    const ref = await post('billing_insurance', {
      billing_id: 1, patient_id: 2, amount: '10', date: '2026-01-01', insurance_provider: 'Acme', insurance_policy_number: 'P'
    })
    expect(ref.statusCode).toBe(409)
    expect(errorOf(ref)).toMatchObject({ code: 'REFERENCE', column: 'patient_id' })
  })

  it('replaces and patches with If-Match, answering 412 to a stale version and changing nothing', async () => {
    const created = (await post('patient_records', patient(1))).json()
    const v1 = created.version as string
    const put = await request({ method: 'PUT', url: '/v1/tables/patient_records/rows/1', headers: { 'if-match': `"${v1}"` }, payload: patient(1, { address: 'Second' }) })
    expect(put.statusCode).toBe(200)
    const v2 = put.json().version as string
    expect(put.headers.etag).toBe(`"${v2}"`)
    expect(v2 > v1).toBe(true)

    for (const method of ['PUT', 'PATCH', 'DELETE'] as const) {
      const res = await request({
        method,
        url: '/v1/tables/patient_records/rows/1',
        headers: { 'if-match': `"${v1}"` },
        ...(method === 'DELETE' ? {} : { payload: method === 'PUT' ? patient(1, { address: 'Third' }) : { address: 'Third' } })
      })
      expect(res.statusCode, method).toBe(412)
      expect(errorOf(res).code).toBe('PRECONDITION_FAILED')
    }
    const bad = await request({ method: 'PATCH', url: '/v1/tables/patient_records/rows/1', headers: { 'if-match': '"not-a-version"' }, payload: { address: 'Third' } })
    expect(bad.statusCode).toBe(412)
    const now = await request({ method: 'GET', url: '/v1/tables/patient_records/rows/1' })
    expect(now.json().version).toBe(v2)
    expect(now.json().row.address).toBe('Second')

    const patch = await request({ method: 'PATCH', url: '/v1/tables/patient_records/rows/1', headers: { 'if-match': `W/"${v2}"` }, payload: { address: 'Third' } })
    expect(patch.statusCode).toBe(200)
    expect(patch.json().row).toEqual({ ...patient(1, { address: 'Third' }), allergies: null })
    const missing = await request({ method: 'PATCH', url: '/v1/tables/patient_records/rows/2', payload: { address: 'x' } })
    expect(missing.statusCode).toBe(404)
  })

  it('deletes, refusing a referenced row unless asked to cascade', async () => {
    await post('patient_records', patient(1))
    await post('billing_insurance', { billing_id: 1, patient_id: 1, amount: '10', date: '2026-01-01', insurance_provider: 'Acme', insurance_policy_number: 'P' })
    const refused = await request({ method: 'DELETE', url: '/v1/tables/patient_records/rows/1' })
    expect(refused.statusCode).toBe(409)
    expect(errorOf(refused).code).toBe('CONFLICT')
    const res = await request({ method: 'DELETE', url: '/v1/tables/patient_records/rows/1?cascade=true' })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toMatchObject({ id: '1', deleted: true, cascaded: 1 })
    expect(res.headers.etag).toBe(`"${res.json().version as string}"`)
    expect((await request({ method: 'GET', url: '/v1/tables/patient_records/rows/1' })).statusCode).toBe(404)
    expect((await request({ method: 'GET', url: '/v1/tables/billing_insurance/rows/1' })).statusCode).toBe(404)
    expect((await request({ method: 'DELETE', url: '/v1/tables/patient_records/rows/1' })).statusCode).toBe(404)
    expect((await request({ method: 'DELETE', url: '/v1/tables/patient_records/rows/1?cascade=maybe' })).statusCode).toBe(400)
  })

  it('serves a row history, oldest first, deletes included', async () => {
    const v1 = (await post('patient_records', patient(1))).json().version
    const v2 = (await request({ method: 'PATCH', url: '/v1/tables/patient_records/rows/1', payload: { email: 'new@example.org' } })).json().version
    const v3 = (await request({ method: 'DELETE', url: '/v1/tables/patient_records/rows/1' })).json().version
    const res = await request({ method: 'GET', url: '/v1/tables/patient_records/rows/1/history' })
    expect(res.statusCode).toBe(200)
    const { versions } = res.json()
    expect(versions.map((v: { version: string }) => v.version)).toEqual([v1, v2, v3])
    expect(versions.map((v: { deleted: boolean }) => v.deleted)).toEqual([false, false, true])
    expect(versions[1].parents).toEqual([v1])
    expect(versions[1].row.email).toBe('new@example.org')
    expect((await request({ method: 'GET', url: '/v1/tables/patient_records/rows/2/history' })).statusCode).toBe(404)
  })

  it('purges a row: every version gone, history included', async () => {
    await post('patient_records', patient(1))
    await request({ method: 'PATCH', url: '/v1/tables/patient_records/rows/1', payload: { email: 'new@example.org' } })
    const res = await request({ method: 'POST', url: '/v1/tables/patient_records/rows/1/purge' })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({ table: 'patient_records', id: '1', purged: true, replicas: 1 })
    expect((await request({ method: 'GET', url: '/v1/tables/patient_records/rows/1' })).statusCode).toBe(404)
    expect((await request({ method: 'GET', url: '/v1/tables/patient_records/rows/1/history' })).statusCode).toBe(404)
    expect(errorOf(await request({ method: 'POST', url: '/v1/tables/patient_records/rows/1/purge' })).code).toBe('NOT_FOUND')
    expect(errorOf(await request({ method: 'POST', url: '/v1/tables/patient_records/rows/x/purge' })).code).toBe('INVALID')
    expect(errorOf(await request({ method: 'POST', url: '/v1/tables/nope/rows/1/purge' })).code).toBe('UNKNOWN_TABLE')
  })
})

describe('api: Idempotency-Key', () => {
  it('a write sent again with its key answers the first result; a malformed key is 400 and writes nothing', async () => {
    const { patient_id: _, ...noKey } = patient(0)
    const send = async (key: string): Promise<LightMyRequestResponse> => await request({ method: 'POST', url: '/v1/tables/patient_records/rows', payload: noKey, headers: { 'idempotency-key': key } })
    const first = await send('7d5c2a9e-0f1b-4c55-9a8e-3b1f2d4c6e80')
    expect(first.statusCode).toBe(201)
    const again = await send('7d5c2a9e-0f1b-4c55-9a8e-3b1f2d4c6e80')
    expect(again.statusCode).toBe(201)
    expect(again.json()).toMatchObject({ id: first.json().id, version: first.json().version })
    expect(again.headers.etag).toBe(first.headers.etag)
    expect(await count('patient_records')).toBe(1)
    for (const bad of ['', 'has space', 'x'.repeat(129), 'caf\u00e9', 'a,b']) {
      const res = await request({ method: 'PATCH', url: `/v1/tables/patient_records/rows/${first.json().id as string}`, payload: { address: 'Bad' }, headers: { 'idempotency-key': bad } })
      expect(res.statusCode, JSON.stringify(bad)).toBe(400)
      expect(errorOf(res).code).toBe('INVALID')
    }
    const batch = { operations: [{ op: 'patch', table: 'patient_records', id: first.json().id, row: { address: 'B' } }] }
    const b1 = await request({ method: 'POST', url: '/v1/batch', payload: batch, headers: { 'idempotency-key': 'batch-1' } })
    const b2 = await request({ method: 'POST', url: '/v1/batch', payload: batch, headers: { 'idempotency-key': 'batch-1' } })
    expect(b2.json().results[0].version).toBe(b1.json().results[0].version)
    expect((await request({ method: 'GET', url: `/v1/tables/patient_records/rows/${first.json().id as string}/history` })).json().versions).toHaveLength(2)
  })
})

describe('api: bad URLs', () => {
  it('answers a malformed percent-escape (400) and an overlong path parameter (414) with the error shape, as fastify\'s router refuses them before any route', async () => {
    const bad = await request({ method: 'GET', url: '/v1/tables/%E0%A4%A/rows' })
    expect(bad.statusCode).toBe(400)
    expect(errorOf(bad).code).toBe('INVALID')
    const long = await request({ method: 'GET', url: `/v1/tables/patient_records/rows/${'7'.repeat(500)}` })
    expect(long.statusCode).toBe(414)
    expect(errorOf(long).code).toBe('INVALID')
  })
})

describe('api: list', () => {
  beforeEach(async () => {
    for (let i = 1; i <= 25; i++) await post('patient_records', patient(i, { gender: i % 2 === 0 ? 'male' : 'female' }))
  })

  it('filters by equality and pages with limit and cursor', async () => {
    const males = await request({ method: 'GET', url: '/v1/tables/patient_records/rows?gender=male' })
    expect(males.statusCode).toBe(200)
    expect(males.json().rows).toHaveLength(12)
    expect(males.json().next).toBeNull()
    const one = await request({ method: 'GET', url: '/v1/tables/patient_records/rows?patient_id=7' })
    expect(one.json().rows.map((r: Row) => r.patient_id)).toEqual([7])

    const ids: number[] = []
    let url = '/v1/tables/patient_records/rows?limit=10'
    for (let page = 0; page < 10; page++) {
      const res = await request({ method: 'GET', url })
      expect(res.statusCode).toBe(200)
      const body = res.json()
      ids.push(...body.rows.map((r: Row) => r.patient_id))
      if (body.next === null) break
      url = `/v1/tables/patient_records/rows?limit=10&cursor=${encodeURIComponent(body.next as string)}`
    }
    expect(ids.sort((a, b) => a - b)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1))
  })

  it('answers 400 to a limit out of 1..1000, an unknown column or a repeated filter', async () => {
    for (const query of ['limit=0', 'limit=1001', 'limit=-1', 'limit=abc', 'limit=', 'nope=1', 'gender=male&gender=female', 'patient_id=x', 'cursor=zzz', 'consistency=most']) {
      const res = await request({ method: 'GET', url: `/v1/tables/patient_records/rows?${query}` })
      expect(res.statusCode, query).toBe(400)
      expect(errorOf(res).code).toBe('INVALID')
    }
    expect((await request({ method: 'GET', url: '/v1/tables/patient_records/rows?limit=1000' })).json().rows).toHaveLength(25)
    expect((await request({ method: 'GET', url: '/v1/tables/patient_records/rows?limit=1' })).json().rows).toHaveLength(1)
  })
})

describe('api: import', () => {
  beforeEach(async () => {
    await post('patient_records', patient(1))
  })

  it('imports NDJSON and reports the line numbers it rejected', async () => {
    const bill = (id: number, extra: Record<string, unknown> = {}): string => JSON.stringify({
      billing_id: id, patient_id: 1, amount: '10.5', date: '2026-01-01', insurance_provider: 'Acme', insurance_policy_number: 'P', ...extra
    })
    const payload = [bill(1), '{not json', '', bill(2, { amount: '1.234' }), bill(3, { patient_id: 9 }), bill(4), bill(1)].join('\n') + '\n'
    const res = await request({ method: 'POST', url: '/v1/tables/billing_insurance/import', headers: { 'content-type': 'application/x-ndjson' }, payload })
    expect(res.statusCode).toBe(200)
    const report = res.json()
    expect(report.accepted).toBe(2)
    expect(report.rejected.map((r: { line: number, error: { code: string } }) => [r.line, r.error.code]).sort((a: number[], b: number[]) => (a[0] as number) - (b[0] as number)))
      .toEqual([[2, 'INVALID'], [4, 'INVALID'], [5, 'REFERENCE'], [7, 'CONFLICT']])
    expect(report.rejected.find((r: { line: number }) => r.line === 4).error.column).toBe('amount')
    expect(await count('billing_insurance')).toBe(2)
  })

  it('imports CSV and reports the line numbers it rejected', async () => {
    const payload = [
      'billing_id,patient_id,amount,date,insurance_provider,insurance_policy_number',
      '1,1,10.5,2026-01-01,Acme,P-1',
      '2,1,10.5,2023-02-29,Acme,P-2',
      '3,1,,2026-01-01,Acme,P-3',
      '4,1,99.99,2026-01-02,"Acme, Inc.",P-4',
      '5,x,1,2026-01-01,Acme,P-5'
    ].join('\n') + '\n'
    const res = await request({ method: 'POST', url: '/v1/tables/billing_insurance/import', headers: { 'content-type': 'text/csv; charset=utf-8' }, payload })
    expect(res.statusCode).toBe(200)
    const report = res.json()
    expect(report.accepted).toBe(2)
    const rejected = report.rejected.map((r: { line: number, error: { column?: string } }) => [r.line, r.error.column]).sort((a: number[], b: number[]) => (a[0] as number) - (b[0] as number))
    expect(rejected).toEqual([[3, 'date'], [4, 'amount'], [6, 'patient_id']])
    expect((await request({ method: 'GET', url: '/v1/tables/billing_insurance/rows/4' })).json().row).toMatchObject({ amount: '99.99', insurance_provider: 'Acme, Inc.' })
  })

  it('rejects a CSV line with the wrong number of fields alone, and keeps the lines before a broken quote', async () => {
    const header = 'billing_id,patient_id,amount,date,insurance_provider,insurance_policy_number'
    const short = await request({
      method: 'POST',
      url: '/v1/tables/billing_insurance/import',
      headers: { 'content-type': 'text/csv' },
      payload: [header, '1,1,10,2026-01-01,Acme,P', '2,1,10,2026-01-01,Acme', '3,1,10,2026-01-01,Acme,P,extra', '4,1,10,2026-01-01,Acme,P'].join('\r\n')
    })
    expect(short.json()).toMatchObject({ accepted: 2, rejected: [{ line: 3, error: { code: 'INVALID' } }, { line: 4, error: { code: 'INVALID' } }] })
    const broken = await request({
      method: 'POST',
      url: '/v1/tables/billing_insurance/import',
      headers: { 'content-type': 'text/csv' },
      payload: [header, '5,1,10,2026-01-01,Acme,P', '6,1,10,2026-01-01,Acme,P', '7,1,10,2026-01-01,"Acme,P', '8,1,10,2026-01-01,Acme,P'].join('\n')
    })
    const report = broken.json()
    expect(report.accepted).toBe(2)
    expect(report.rejected).toHaveLength(1)
    expect(report.rejected[0].error.code).toBe('INVALID')
    expect((await node.db.list('billing_insurance', {})).rows.map(r => r.billing_id).sort()).toEqual([1, 4, 5, 6])
  })

  it('imports the same file twice without writing its rows twice, ids or not; rejects come in line order', async () => {
    const bill = (extra: Record<string, unknown> = {}): string => JSON.stringify({
      patient_id: 1, amount: '10.5', date: '2026-01-01', insurance_provider: 'Acme', insurance_policy_number: 'P', ...extra
    })
    const visit = (extra: Record<string, unknown> = {}): string => JSON.stringify({ patient_id: 1, diagnosis: 'flu', treatment: 'rest', date_of_visit: '2026-01-10T10:00:00Z', ...extra })
    // Two identical lines are two rows: a line's key is its place as well as its content.
    const bills = [bill(), bill({ billing_id: 77 }), '{broken', bill(), bill({ amount: 'x' })].join('\n') + '\n'
    const visits = [visit(), visit({ diagnosis: 'cold' }), visit({ patient_id: 99 })].join('\n') + '\n'
    const importBody = async (table: string, payload: string, key?: string): Promise<any> => (await request({
      method: 'POST', url: `/v1/tables/${table}/import`, payload, headers: { 'content-type': 'application/x-ndjson', ...(key === undefined ? {} : { 'idempotency-key': key }) }
    })).json()
    for (let round = 1; round <= 2; round++) {
      const b = await importBody('billing_insurance', bills)
      expect(b.accepted, `round ${round}`).toBe(3)
      expect(b.rejected.map((r: { line: number }) => r.line)).toEqual([3, 5])
      expect(await count('billing_insurance')).toBe(3)
      const v = await importBody('medical_history', visits)
      expect(v.accepted, `round ${round}`).toBe(2)
      expect(v.rejected.map((r: { line: number, error: { code: string } }) => [r.line, r.error.code])).toEqual([[3, 'REFERENCE']])
      expect(await count('medical_history')).toBe(2)
    }
    // Another Idempotency-Key is another import: its lines are written anew.
    expect((await importBody('medical_history', visits, 'second-batch')).accepted).toBe(2)
    expect(await count('medical_history')).toBe(4)
  })

  it('answers 415 to an import that is neither NDJSON nor CSV, JSON included, and 404 to an unknown table', async () => {
    const res = await request({ method: 'POST', url: '/v1/tables/billing_insurance/import', payload: { billing_id: 1 } })
    expect(res.statusCode).toBe(415)
    expect(errorOf(res).code).toBe('UNSUPPORTED_MEDIA_TYPE')
    // NDJSON sent as JSON is not a JSON parse error (400): the route takes no JSON at all.
    const ndjsonAsJson = await request({ method: 'POST', url: '/v1/tables/billing_insurance/import', headers: { 'content-type': 'application/json' }, payload: '{"billing_id":1}\n{"billing_id":2}\n' })
    expect(ndjsonAsJson.statusCode).toBe(415)
    expect(errorOf(ndjsonAsJson).message).toMatch(/application\/x-ndjson or text\/csv, not application\/json/)
    expect(await count('billing_insurance')).toBe(0)
    const unknown = await request({ method: 'POST', url: '/v1/tables/nope/import', headers: { 'content-type': 'application/x-ndjson' }, payload: '{}\n' })
    expect(unknown.statusCode).toBe(404)
    expect(errorOf(unknown).code).toBe('UNKNOWN_TABLE')
  })
})

describe('api: batch and status', () => {
  it('applies a batch with 201, and an invalid batch writes nothing', async () => {
    await post('patient_records', patient(1))
    const history = { history_id: 5, patient_id: 1, diagnosis: 'flu', treatment: 'rest', date_of_visit: '2026-01-10T10:00:00Z' }
    const bad = await request({
      method: 'POST',
      url: '/v1/batch',
      payload: { operations: [{ op: 'insert', table: 'medical_history', row: history }, { op: 'patch', table: 'patient_records', id: 1, row: { email: null } }] }
    })
    expect(bad.statusCode).toBe(400)
    expect(errorOf(bad)).toMatchObject({ code: 'INVALID', column: 'email' })
    expect(await count('medical_history')).toBe(0)

    const ok = await request({
      method: 'POST',
      url: '/v1/batch',
      payload: { operations: [{ op: 'insert', table: 'medical_history', row: history }, { op: 'patch', table: 'patient_records', id: 1, row: { email: 'b@example.org' } }] }
    })
    expect(ok.statusCode).toBe(201)
    expect(ok.json().results.map((r: { table: string, id: string }) => [r.table, r.id])).toEqual([['medical_history', '5'], ['patient_records', '1']])
    expect((await request({ method: 'GET', url: '/v1/tables/medical_history/rows/5' })).statusCode).toBe(200)

    const empty = await request({ method: 'POST', url: '/v1/batch', payload: {} })
    expect(empty.statusCode).toBe(400)
  })

  it('serves status and the table definitions', async () => {
    const status = await request({ method: 'GET', url: '/v1/status' })
    expect(status.statusCode).toBe(200)
    expect(status.json().ok).toBe(true)
    const tables = await request({ method: 'GET', url: '/v1/tables' })
    expect(tables.json().tables.map((t: { name: string }) => t.name)).toContain('lab_results')
  })
})

describe('api: TIMESTAMP values on every path', () => {
  /** The one moment every accepted form below names: 10:00 in UTC+2 */
  const UTC = '2026-12-02T08:00:00.000Z'
  const FORMS = ['2026-12-02T10:00:00+02:00', '2026-12-02 10:00+0200', '2026-12-02T08:00Z']
  const BARE = '2026-12-02 10:00'
  const visit = (id: number, date: string): Record<string, unknown> => ({ history_id: id, patient_id: 1, diagnosis: 'flu', treatment: 'rest', date_of_visit: date })
  const refusedBare = (res: LightMyRequestResponse): void => {
    expect(res.statusCode, res.body).toBe(400)
    expect(errorOf(res).message).toMatch(/date_of_visit: .* has no time zone, so it names no moment/)
  }
  const sql = async (statement: string, params: unknown[] = []): Promise<LightMyRequestResponse> =>
    await request({ method: 'POST', url: '/v1/sql', payload: { sql: statement, params } })
  const stored = async (id: number): Promise<unknown> => (await node.db.get('medical_history', String(id))).row.date_of_visit

  it('insert, PUT, PATCH, batch, NDJSON and CSV imports and SQL writes store one UTC form; a time without a zone is refused by each, writing nothing', async () => {
    await post('patient_records', patient(1))
    // Insert, each accepted form.
    for (const [i, form] of FORMS.entries()) {
      const res = await post('medical_history', visit(10 + i, form))
      expect(res.statusCode, res.body).toBe(201)
      expect(res.json().row.date_of_visit).toBe(UTC)
    }
    refusedBare(await post('medical_history', visit(19, BARE)))
    // PUT and PATCH over row 10.
    refusedBare(await request({ method: 'PUT', url: '/v1/tables/medical_history/rows/10', payload: visit(10, '2026-12-03T10:00') }))
    refusedBare(await request({ method: 'PATCH', url: '/v1/tables/medical_history/rows/10', payload: { date_of_visit: BARE } }))
    expect(await stored(10)).toBe(UTC)
    expect((await request({ method: 'PUT', url: '/v1/tables/medical_history/rows/10', payload: visit(10, '2026-12-03T10:00-05:00') })).json().row.date_of_visit).toBe('2026-12-03T15:00:00.000Z')
    expect((await request({ method: 'PATCH', url: '/v1/tables/medical_history/rows/10', payload: { date_of_visit: FORMS[1] } })).json().row.date_of_visit).toBe(UTC)
    // A batch.
    refusedBare(await request({ method: 'POST', url: '/v1/batch', payload: { operations: [{ op: 'insert', table: 'medical_history', row: visit(20, FORMS[0] as string) }, { op: 'patch', table: 'medical_history', id: 11, row: { date_of_visit: BARE } }] } }))
    await expect(node.db.get('medical_history', '20')).rejects.toMatchObject({ code: 'NOT_FOUND' })
    const batch = await request({ method: 'POST', url: '/v1/batch', payload: { operations: [{ op: 'insert', table: 'medical_history', row: visit(20, FORMS[1] as string) }] } })
    expect(batch.json().results[0].row.date_of_visit).toBe(UTC)
    // Imports: NDJSON and CSV, the line without a zone rejected alone.
    const ndjson = [visit(30, FORMS[0] as string), visit(31, BARE)].map(r => JSON.stringify(r)).join('\n') + '\n'
    const nd = (await request({ method: 'POST', url: '/v1/tables/medical_history/import', headers: { 'content-type': 'application/x-ndjson' }, payload: ndjson })).json()
    expect(nd.accepted).toBe(1)
    expect(nd.rejected.map((r: { line: number, error: { message: string } }) => [r.line, /no time zone/.test(r.error.message)])).toEqual([[2, true]])
    const csv = `history_id,patient_id,diagnosis,treatment,date_of_visit\n40,1,flu,rest,${BARE}\n41,1,flu,rest,${FORMS[1] as string}\n`
    const cs = (await request({ method: 'POST', url: '/v1/tables/medical_history/import', headers: { 'content-type': 'text/csv' }, payload: csv })).json()
    expect(cs.accepted).toBe(1)
    expect(cs.rejected.map((r: { line: number, error: { message: string } }) => [r.line, /no time zone/.test(r.error.message)])).toEqual([[2, true]])
    for (const id of [30, 41]) expect(await stored(id)).toBe(UTC)
    for (const id of [31, 40]) await expect(node.db.get('medical_history', String(id))).rejects.toMatchObject({ code: 'NOT_FOUND' })
    // SQL INSERT and UPDATE, literal and parameter.
    const columns = 'history_id, patient_id, diagnosis, treatment, date_of_visit'
    refusedBare(await sql(`INSERT INTO medical_history (${columns}) VALUES (50, 1, 'flu', 'rest', '${BARE}')`))
    refusedBare(await sql(`INSERT INTO medical_history (${columns}) VALUES (50, 1, 'flu', 'rest', $1)`, ['2026-12-02T10:00']))
    expect((await sql(`INSERT INTO medical_history (${columns}) VALUES (50, 1, 'flu', 'rest', $1)`, [FORMS[0]])).statusCode).toBe(200)
    refusedBare(await sql(`UPDATE medical_history SET date_of_visit = '${BARE}' WHERE history_id = 50`))
    expect((await sql(`UPDATE medical_history SET date_of_visit = '${FORMS[2] as string}' WHERE history_id = 50`)).statusCode).toBe(200)
    expect(await stored(50)).toBe(UTC)
    expect(await count('medical_history')).toBe(7)
  })

  it('list filters and SQL WHERE find the moment however it is written, and refuse a time without a zone', async () => {
    await post('patient_records', patient(1))
    await post('medical_history', visit(10, FORMS[0] as string))
    await post('medical_history', visit(11, '2026-12-03T08:00:00Z'))
    const list = async (query: string): Promise<LightMyRequestResponse> => await request({ method: 'GET', url: `/v1/tables/medical_history/rows?${query}` })
    const ids = (res: LightMyRequestResponse): number[] => res.json().rows.map((r: Row) => r.history_id)
    for (const form of [...FORMS, UTC]) {
      expect(ids(await list(`date_of_visit=${encodeURIComponent(form)}`)), form).toEqual([10])
      expect(ids(await list(`where=${encodeURIComponent(`date_of_visit<=${form}`)}`)), form).toEqual([10])
      expect((await sql('SELECT history_id FROM medical_history WHERE date_of_visit = $1', [form])).json().rows, form).toEqual([[10]])
      expect((await sql(`SELECT history_id FROM medical_history WHERE date_of_visit > '${form}'`)).json().rows, form).toEqual([[11]])
    }
    // A date alone is its midnight UTC.
    expect(ids(await list(`where=${encodeURIComponent('date_of_visit>=2026-12-03')}`))).toEqual([11])
    refusedBare(await list(`date_of_visit=${encodeURIComponent(BARE)}`))
    refusedBare(await list(`where=${encodeURIComponent(`date_of_visit>=${BARE}`)}`))
    refusedBare(await sql(`SELECT history_id FROM medical_history WHERE date_of_visit = '${BARE}'`))
    refusedBare(await sql('SELECT history_id FROM medical_history WHERE date_of_visit IN ($1, $2)', [FORMS[0], '2026-12-02T10:00']))
    refusedBare(await sql(`SELECT history_id FROM medical_history WHERE date_of_visit BETWEEN '${BARE}' AND '2026-12-04T00:00Z'`))
  })
})

describe('api: If-Match header', () => {
  it('parses quoted, weak and several versions', () => {
    const v1 = '000001767225600000.000000.nodeA'.slice(3)
    const v2 = '000001767225600000.000001.nodeB'.slice(3)
    expect(parseIfMatch(undefined)).toBeUndefined()
    expect(parseIfMatch('*')).toBeUndefined()
    expect(parseIfMatch(`"${v1}"`)).toEqual([v1])
    expect(parseIfMatch(`W/"${v1}", "${v2}"`)).toEqual([v1, v2])
    expect(parseIfMatch([`"${v1}"`, `"${v2}"`])).toEqual([v1, v2])
    expect(() => parseIfMatch('"nope"')).toThrow(expect.objectContaining({ code: 'PRECONDITION_FAILED' }))
  })
})
