import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { OPENAPI_ROUTE, openApiDocument, openApiPath, recordRoutes, type RouteEntry } from '../../src/api/openapi.js'
import { ROUTE_SCHEMAS } from '../../src/api/schemas.js'
import { TABLES } from '../../src/schema/index.js'
import { defaultConfig } from '../../src/daemon/config.js'
import { HIDDEN_COLUMNS } from '../../src/security/rights.js'
import { AuditTrail, storeHead } from '../../src/security/audit.js'
import { UserDirectory } from '../../src/security/users.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'
import { answerChecker, fullApi, type OpenApiDoc } from '../helpers/api.js'

let dir: TempDir
let node: LocalNode
let trail: AuditTrail
let app: FastifyInstance
let routes: readonly RouteEntry[]
let token: string
let nurseToken: string

beforeEach(async () => {
  dir = await tempDir('ntk-openapi-')
  node = await openLocalNode(dir.path)
  trail = new AuditTrail({ coordinator: node.coordinator, peerId: node.peerId, head: storeHead(node.store) }, { flushIntervalMs: 10_000 })
  await trail.start()
  const users = new UserDirectory({ db: node.db })
  await users.ensureRoles()
  token = (await users.add('admin', 'admin')).token
  nurseToken = (await users.add('nina', 'nurse')).token
  ;({ app, routes } = fullApi({ node, users, trail }))
  await app.ready()
})

afterEach(async () => {
  await app.close()
  await trail.stop()
  await node.close()
  await dir.remove()
})

async function request (opts: InjectOptions, as = token): Promise<LightMyRequestResponse> {
  return await app.inject({ ...opts, headers: { authorization: `Bearer ${as}`, ...opts.headers } })
}

type Doc = { openapi: string, paths: Record<string, Record<string, Operation>>, components: { schemas: Record<string, unknown> } }
type Operation = { operationId: string, parameters: Array<{ name: string, in: string }>, responses: Record<string, { content: Record<string, { schema: unknown }> }> }

async function documentOf (): Promise<Doc> {
  const res = await request({ method: 'GET', url: OPENAPI_ROUTE })
  expect(res.statusCode).toBe(200)
  return res.json()
}

describe('openapi: the document and the routes', () => {
  it('every route the server has declares a schema (the failure lists those without)', () => {
    const without = routes.filter(r => r.schema === undefined).map(r => `${r.method} ${r.url}`)
    expect(without, `routes without a schema (add one in src/api/schemas.ts and name it as the route's \`schema\`): ${without.join(', ')}`).toEqual([])
    // The recorder saw the routes: the rows API and the cluster routes are all there.
    expect(routes.length).toBeGreaterThan(20)
  })

  it('lists exactly the routes the server has, with the method of each', async () => {
    const doc = await documentOf()
    expect(doc.openapi).toBe('3.1.0')
    const documented: string[] = []
    for (const [path, operations] of Object.entries(doc.paths)) {
      for (const method of Object.keys(operations)) {
        const url = path.replace(/\{([^}]+)\}/g, ':$1')
        expect(app.hasRoute({ method: method.toUpperCase() as 'GET', url }), `${method.toUpperCase()} ${path} is documented but not served`).toBe(true)
        documented.push(`${method.toUpperCase()} ${path}`)
      }
    }
    const served = routes.map(r => `${r.method} ${openApiPath(r.url)}`)
    expect(documented.sort()).toEqual(served.sort())
  })

  it('gives each route its schemas: a body where the route checks one, its parameters, a success answer with its shape, the error body', async () => {
    const doc = await documentOf() as Doc & { paths: Record<string, Record<string, Operation & { requestBody?: { content: Record<string, unknown> } }>> }
    for (const route of routes) {
      const where = `${route.method} ${route.url}`
      const op = doc.paths[openApiPath(route.url)]?.[route.method.toLowerCase()]
      const schema = route.schema as Record<string, any>
      expect(op, where).toBeDefined()
      expect(op?.requestBody !== undefined, `${where}: a request body in the document iff the route checks one`).toBe(schema.body !== undefined || Array.isArray(schema.consumes))
      for (const [part, place] of [['params', 'path'], ['querystring', 'query'], ['headers', 'header']] as const) {
        const names = Object.keys(schema[part]?.properties ?? {}).map(n => n.toLowerCase()).sort()
        expect(op?.parameters.filter(p => p.in === place).map(p => p.name.toLowerCase()).filter(n => n !== 'filters').sort(), `${where}: ${place} parameters`).toEqual(names)
      }
      const success = Object.keys(op?.responses ?? {}).filter(status => /^2/.test(status))
      expect(success.length, `${where}: a success answer`).toBeGreaterThan(0)
      for (const status of [...success, 'default']) {
        expect(Object.values(op?.responses[status]?.content ?? {}).length, `${where} ${status}`).toBeGreaterThan(0)
        for (const body of Object.values(op?.responses[status]?.content ?? {})) expect(body.schema, `${where} ${status}: its shape`).toBeDefined()
      }
    }
  })

  it('is well formed: unique operation ids, a path parameter for each {name}, every $ref resolves', async () => {
    const doc = await documentOf()
    const ids = Object.values(doc.paths).flatMap(ops => Object.values(ops).map(o => o.operationId))
    expect(new Set(ids).size).toBe(ids.length)
    for (const [path, operations] of Object.entries(doc.paths)) {
      const names = [...path.matchAll(/\{([^}]+)\}/g)].map(m => m[1])
      for (const op of Object.values(operations)) {
        expect(op.parameters.filter(p => p.in === 'path').map(p => p.name).sort(), path).toEqual([...names].sort())
        expect(Object.keys(op.responses), path).toContain('default')
      }
    }
    const refs = [...JSON.stringify(doc).matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)].map(m => m[1] as string)
    expect(refs.length).toBeGreaterThan(0)
    for (const ref of refs) expect(doc.components.schemas[ref], ref).toBeDefined()
    // Each table's row shape comes from its definition, less the columns the API never shows (a token's hash).
    expect(Object.keys((doc.components.schemas['row.users'] as { properties: object }).properties)).not.toContain('token_hash')
    for (const table of TABLES) {
      const row = doc.components.schemas[`row.${table.name}`] as { properties: Record<string, unknown> }
      expect(Object.keys(row.properties)).toEqual(table.columns.map(c => c.name).filter(c => !(HIDDEN_COLUMNS[table.name] ?? []).includes(c)))
    }
  })

  it('names the socket it is served on as the daemon makes it, and the package\'s version', () => {
    const doc = openApiDocument(routes, { version: '9.9.9', tables: TABLES }) as unknown as Doc & { info: { version: string, description: string } }
    expect(doc.info.version).toBe('9.9.9')
    expect(doc.info.description).toContain(`<home>/${defaultConfig().api.socket}`)
  })

  it('is made from the route schemas fastify validates with: a schema change shows in the document', () => {
    const list = routes.find(r => r.method === 'GET' && r.url === '/v1/tables/:table/rows')
    expect(list?.schema).toBe(ROUTE_SCHEMAS.list)
    const doc = openApiDocument(routes, { version: 'test', tables: TABLES }) as unknown as Doc
    const params = doc.paths['/v1/tables/{table}/rows']?.get?.parameters.map(p => `${p.in}:${p.name}`)
    expect(params).toEqual(['path:table', 'query:limit', 'query:cursor', 'query:consistency', 'query:where', 'query:order_by', 'query:filters', 'header:X-Break-Glass'])
  })

  it('is served to any authenticated user, and to no one else', async () => {
    const nurse = await request({ method: 'GET', url: OPENAPI_ROUTE }, nurseToken)
    expect(nurse.statusCode).toBe(200)
    expect(nurse.json().paths['/v1/openapi.json'].get['x-required-right']).toBe('authenticated')
    const anonymous = await app.inject({ method: 'GET', url: OPENAPI_ROUTE })
    expect(anonymous.statusCode).toBe(401)
  })

  it('a route made after the others with a schema is documented; one without is reported', async () => {
    const extra = (await import('fastify')).default()
    const seen = recordRoutes(extra)
    extra.get('/v1/with', { schema: { summary: 'has one', response: { 200: { type: 'object' } } } }, async () => ({}))
    extra.get('/v1/without', async () => ({}))
    await extra.ready()
    const doc = openApiDocument(seen, { version: 'test', tables: TABLES }) as unknown as Doc
    expect(Object.keys(doc.paths)).toEqual(['/v1/with'])
    expect(seen.filter(r => r.schema === undefined).map(r => r.url)).toEqual(['/v1/without'])
    await extra.close()
  })
})

describe('openapi: the schemas check requests, and answer in our error body', () => {
  it('a request the schema refuses is a 400 INVALID naming what is wrong, and writes nothing', async () => {
    const cases: Array<[InjectOptions, RegExp]> = [
      [{ method: 'GET', url: '/v1/tables/patient_records/rows?limit=abc' }, /^limit must be an integer from 1 to 1000$/],
      [{ method: 'GET', url: '/v1/tables/patient_records/rows?limit=1001' }, /^limit must be an integer from 1 to 1000$/],
      [{ method: 'GET', url: '/v1/tables/patient_records/rows?gender=a&gender=b' }, /^gender is given more than once$/],
      [{ method: 'GET', url: '/v1/tables/patient_records/rows/1?consistency=most' }, /^consistency must be one of one, quorum, all$/],
      [{ method: 'GET', url: '/v1/tables/patient_records/rows/1?consistancy=all' }, /^Unknown parameter consistancy: use consistency or local$/],
      [{ method: 'DELETE', url: '/v1/tables/patient_records/rows/1?cascade=maybe' }, /^cascade must be true or false$/],
      [{ method: 'POST', url: '/v1/tables/patient_records/rows', payload: [1] }, /^The body must be a JSON object, not an array$/],
      [{ method: 'POST', url: '/v1/tables/patient_records/rows', headers: { 'content-type': 'application/json' }, payload: 'null' }, /^This request needs a JSON body$/],
      [{ method: 'POST', url: '/v1/tables/patient_records/rows', payload: patientRow(9), headers: { 'idempotency-key': 'has space' } }, /^Idempotency-Key must be 1 to 128/],
      [{ method: 'POST', url: '/v1/batch', payload: {} }, /^The body needs operations$/],
      [{ method: 'POST', url: '/v1/batch', payload: { operations: [] } }, /^A batch needs an operations array of 1 to 1000/],
      [{ method: 'POST', url: '/v1/batch', payload: { operations: [{ op: 'upsert', table: 'patient_records' }] } }, /^operations\[0\]\.op must be one of insert, put, patch, delete$/],
      [{ method: 'POST', url: '/v1/batch', payload: { operations: [{ op: 'insert', table: 'patient_records', rows: {} }] } }, /^operations\[0\]: Unknown operation field rows/],
      [{ method: 'POST', url: '/v1/batch', payload: { operations: [{ op: 'insert', table: 'patient_records', row: 5 }] } }, /^operations\[0\]\.row must be an object, got 5$/],
      [{ method: 'POST', url: '/v1/users', payload: { user: 'x' } }, /^The body needs role$/],
      [{ method: 'GET', url: '/v1/audit?who=x' }, /^Unknown audit filter who: use patient, user, since or verify$/],
      [{ method: 'GET', url: '/v1/export?tables=x' }, /^Unknown export parameter tables: use table, anonymize or consistency$/]
    ]
    for (const [opts, message] of cases) {
      const res = await request(opts)
      expect(res.statusCode, `${String(opts.method)} ${String(opts.url)}`).toBe(400)
      expect(Object.keys(res.json())).toEqual(['error'])
      expect(res.json().error.code).toBe('INVALID')
      expect(res.json().error.message, `${String(opts.method)} ${String(opts.url)}`).toMatch(message)
    }
    expect((await node.db.list('patient_records', {})).rows).toEqual([])
    expect((await request({ method: 'GET', url: '/v1/users' })).json().users.map((u: { user: string }) => u.user).sort()).toEqual(['admin', 'nina'])
  })

  it('the right is checked before the schema: a caller without it learns that, not what the request lacks', async () => {
    const res = await request({ method: 'POST', url: '/v1/users', payload: { nope: 1 } }, nurseToken)
    expect(res.statusCode).toBe(403)
    expect(res.json().error.code).toBe('FORBIDDEN')
  })
})

describe('openapi: answers match the document', () => {
  it('each answer of a day\'s requests validates against its operation\'s response schema', async () => {
    const doc = await documentOf()
    const conforms = answerChecker(doc as unknown as OpenApiDoc)
    const check = async (opts: InjectOptions, path: string): Promise<LightMyRequestResponse> => {
      const res = await request(opts)
      const ndjson = String(res.headers['content-type'] ?? '').startsWith('application/x-ndjson')
      const bodies = ndjson ? res.body.split('\n').filter(l => l !== '').map(l => JSON.parse(l) as unknown) : [res.json()]
      for (const body of bodies) expect(conforms(String(opts.method), path, res.statusCode, body)).toBeNull()
      return res
    }
    const rows = '/v1/tables/{table}/rows'
    const row = '/v1/tables/{table}/rows/{id}'
    expect((await check({ method: 'POST', url: '/v1/tables/patient_records/rows', payload: patientRow(1) }, rows)).statusCode).toBe(201)
    await check({ method: 'POST', url: '/v1/tables/billing_insurance/rows', payload: { billing_id: 1, patient_id: 1, amount: 10.5, date: '2026-01-01', insurance_provider: 'Acme', insurance_policy_number: 'P' } }, rows)
    await check({ method: 'GET', url: '/v1/tables/billing_insurance/rows/1' }, row)
    await check({ method: 'PATCH', url: '/v1/tables/patient_records/rows/1', payload: { allergies: 'none' } }, row)
    await check({ method: 'PUT', url: '/v1/tables/patient_records/rows/1', payload: patientRow(1) }, row)
    await check({ method: 'GET', url: '/v1/tables/patient_records/rows?limit=5' }, rows)
    await check({ method: 'GET', url: '/v1/tables/patient_records/rows/1/history' }, `${row}/history`)
    await check({ method: 'POST', url: '/v1/batch', payload: { operations: [{ op: 'patch', table: 'patient_records', id: 1, row: { allergies: 'dust' } }] } }, '/v1/batch')
    await check({ method: 'POST', url: '/v1/tables/billing_insurance/import', headers: { 'content-type': 'application/x-ndjson' }, payload: '{"billing_id":2,"patient_id":1,"amount":"1","date":"2026-01-02","insurance_provider":"A","insurance_policy_number":"Q"}\n{bad\n' }, '/v1/tables/{table}/import')
    await check({ method: 'GET', url: '/v1/export?anonymize=true' }, '/v1/export')
    await check({ method: 'DELETE', url: '/v1/tables/patient_records/rows/1?cascade=true' }, row)
    await check({ method: 'POST', url: '/v1/tables/billing_insurance/rows/2/purge' }, `${row}/purge`)
    await check({ method: 'GET', url: '/v1/tables/patient_records/rows/1' }, row) // 404: the error body
    await check({ method: 'GET', url: '/v1/tables/patient_records/rows?limit=0' }, rows) // 400
    await check({ method: 'POST', url: '/v1/users', payload: { user: 'omar', role: 'doctor' } }, '/v1/users')
    await check({ method: 'GET', url: '/v1/users' }, '/v1/users')
    await check({ method: 'POST', url: '/v1/users/omar/revoke' }, '/v1/users/{name}/revoke')
    await check({ method: 'GET', url: '/v1/roles' }, '/v1/roles')
    await check({ method: 'GET', url: '/v1/tables' }, '/v1/tables')
    await check({ method: 'GET', url: '/v1/audit?user=admin' }, '/v1/audit')
    await check({ method: 'GET', url: '/v1/audit?verify=true' }, '/v1/audit')
    await check({ method: 'GET', url: OPENAPI_ROUTE }, OPENAPI_ROUTE)
  })
})
