/**
 * Socket fuzz: generated requests (fast-check, fixed seed) against one real
 * daemon over its Unix socket. Every answer must be a 2xx for a request that
 * is valid, else a clean 4xx with `{error: {code, message}}`; the daemon must
 * stay up with bounded memory, and every stored row must still pass the schema.
 */
import { Agent } from 'node:http'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TABLES, type TableDef } from '../../src/schema/index.js'
import { adminToken, cli, json, startDaemon, statusAnswers, type TestDaemon } from '../helpers/daemon.js'
import { bump, rawRequest, sendRaw, rowsBreakingSchema, rssSampler, runBounded, sorted, type RawRequest } from './fuzz-helpers.js'

const SEED = 20_260_901
const REQUESTS = 10_000
const RAW_CONNECTIONS = 50
const CONCURRENCY = 12
const MAX_RSS_MB = 600
const MIB = 1024 * 1024
/** Bodies this large go on a connection of their own: the daemon may refuse them unread and close it */
const BIG_BODY = 64 * 1024

interface Tokens { admin: string, nurse: string, billing: string, auditor: string, revoked: string }

let daemon: TestDaemon
let tokens: Tokens
/** Ids of rows seeded before the run, so some requests reach real rows */
const seeded: Record<string, string[]> = {}
/** Versions of seeded rows, for If-Match values that parse */
const versions: string[] = []

afterAll(async () => { await daemon?.stop().catch(() => {}) }, 30_000)

async function addUser (name: string, role: string): Promise<string> {
  const r = await cli(['user', 'add', name, '--role', role, '--json'], { home: daemon.home })
  if (r.code !== 0) throw new Error(`user add ${name} failed: ${r.stderr}`)
  return json<{ token: string }>(r).token
}

beforeAll(async () => {
  daemon = await startDaemon({ args: ['--replicas', '1', '--write-quorum', '1', '--read-quorum', '1'] })
  const admin = await adminToken(daemon.home)
  const [nurse, billing, auditor, revoked] = [await addUser('nurse.fz', 'nurse'), await addUser('billing.fz', 'billing'), await addUser('auditor.fz', 'auditor'), await addUser('gone.fz', 'doctor')]
  const rv = await cli(['user', 'revoke', 'gone.fz'], { home: daemon.home })
  if (rv.code !== 0) throw new Error(`user revoke failed: ${rv.stderr}`)
  tokens = { admin, nurse, billing, auditor, revoked }
  const post = async (table: string, row: Record<string, unknown>): Promise<string> => {
    const res = await rawRequest(daemon.socket, { method: 'POST', path: `/v1/tables/${table}/rows`, headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' }, body: JSON.stringify(row), label: 'seed' })
    if (res.status !== 201) throw new Error(`seeding ${table} answered ${res.status}: ${res.body}`)
    const b = JSON.parse(res.body) as { id: string, version: string }
    ;(seeded[table] ??= []).push(b.id)
    versions.push(b.version)
    return b.id
  }
  for (let i = 0; i < 5; i++) {
    const p = await post('patient_records', validRow('patient_records', i))
    const d = await post('doctors_info', validRow('doctors_info', i))
    const m = await post('medications', validRow('medications', i))
    const h = await post('medical_history', { ...validRow('medical_history', i), patient_id: Number(p) })
    await post('appointments', { ...validRow('appointments', i), patient_id: Number(p), doctor_id: Number(d) })
    await post('billing_insurance', { ...validRow('billing_insurance', i), patient_id: Number(p) })
    await post('patient_medications', { patient_id: Number(p), medication_id: Number(m) })
    await post('lab_results', { ...validRow('lab_results', i), patient_id: Number(p), record_id: Number(h) })
  }
}, 60_000)

/** A valid row of `table` without its key (the daemon makes one) and without references filled in */
function validRow (table: string, i: number): Record<string, unknown> {
  const def = TABLES.find(t => t.name === table) as TableDef
  const row: Record<string, unknown> = {}
  for (const c of def.columns) {
    if (def.primaryKey.includes(c.name) && def.primaryKey.length === 1) continue
    if (c.type === 'INT') row[c.name] = c.notNull ? 1 : null
    else if (c.type === 'DATE') row[c.name] = '1990-01-0' + String(1 + (i % 9))
    else if (c.type === 'TIMESTAMP') row[c.name] = c.notNull ? '2025-03-04T10:00:00Z' : null
    else if (c.type === 'DECIMAL') row[c.name] = '12.50'
    else if (c.name === 'contact_number') row[c.name] = '0712345678'
    else row[c.name] = c.notNull ? `v${i}`.slice(0, c.length) : null
  }
  return row
}

// ---- generators -------------------------------------------------------------

const TABLE_NAMES = TABLES.map(t => t.name)
const ODD_NAMES = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', '_audit', '_locator', '_unique', '..', '.', '%2e%2e', '%2F', 'a%2Fb', '%00', 'patient_records%2F..', 'PATIENT_RECORDS', 'patient_records%20', '']

const segment = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...TABLE_NAMES) },
  { weight: 3, arbitrary: fc.constantFrom(...ODD_NAMES) },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map(s => encodeURIComponent(s)) }
)

const anyId = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('1', '2', '3', '0', '-1', '1:1', '2:3') },
  { weight: 3, arbitrary: fc.integer({ min: 1, max: 60 }).map(String) },
  { weight: 2, arbitrary: fc.constantFrom('__proto__', 'constructor', '..', '%2F', '%2e%2e%2f', '9007199254740993', '1e3', '0x10', '%20', '1:2:3', '::', '-0', '99999999999999999999999') },
  { weight: 1, arbitrary: fc.string({ maxLength: 30 }).map(s => encodeURIComponent(s)) },
  { weight: 1, arbitrary: fc.integer({ min: 300, max: 3000 }).map(n => '7'.repeat(n)) }
)

/** Values of every wrong kind, and some right ones */
const anyValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 30 }) },
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 4000 }).map(n => 'x'.repeat(n)) },
  { weight: 1, arbitrary: fc.integer({ min: 50, max: 400 }).map(n => '\u00e9\ud83d\ude00'.repeat(n)) },
  { weight: 1, arbitrary: fc.constantFrom('\ud800', 'a\udfffb') },
  { weight: 2, arbitrary: fc.integer() },
  { weight: 1, arbitrary: fc.double() },
  { weight: 1, arbitrary: fc.constantFrom(null, true, false, 2 ** 53, -0, 1e308, '1e5', ' 12 ', '99999999999.99', '-0.001', '2025-02-30', '2025-13-01', '0000-00-00', '2025-01-01T25:00:00Z', '2025-01-01T10:00:00+99:99') },
  { weight: 1, arbitrary: fc.constantFrom([], {}, [1, 2], { a: 1 }, [[[]]], { __proto__: 1 }) },
  { weight: 2, arbitrary: fc.constantFrom('1990-01-01', '2025-03-04T10:00:00Z', '12.50', '0712345678', 'female', 1, 2, 3) }
)

const columnName = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...new Set(TABLES.flatMap(t => t.columns.map(c => c.name)))) },
  { weight: 1, arbitrary: fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'valueOf', 'token_hash', 'revoked_at', '', ' ', 'patient_id ') },
  { weight: 1, arbitrary: fc.string({ maxLength: 20 }) }
)

/** A JSON object text built by hand, so `__proto__` and repeated keys reach the daemon as own keys */
const objectText = fc.array(fc.tuple(columnName, anyValue), { maxLength: 10 })
  .map(pairs => `{${pairs.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v) ?? 'null'}`).join(',')}}`)

/** A row close to valid for some table, with one column spoiled or not */
const nearValidRow = fc.tuple(fc.constantFrom(...TABLE_NAMES), fc.nat(50), fc.option(fc.tuple(columnName, anyValue), { nil: undefined }))
  .map(([table, i, spoil]) => {
    const row = validRow(table, i)
    for (const k of Object.keys(row)) if (row[k] === 1) row[k] = 1 + (i % 5)
    const text = JSON.stringify(row)
    return { table, text: spoil === undefined ? text : `${text.slice(0, -1)}${text.length > 2 ? ',' : ''}${JSON.stringify(spoil[0])}:${JSON.stringify(spoil[1]) ?? 'null'}}` }
  })

const badJson = fc.oneof(
  fc.constantFrom('', '{', '}', '{"a":', '[]', 'true', 'false', 'null', '0', '"x"', '{"a":1,}', "{'a':1}", 'NaN', '{"a":NaN}', '\u0000', '\ufeff{}', '{"a":1}{"b":2}', '1e999', '{"__proto__":{"polluted":1}}', '{"constructor":{"prototype":{"polluted":1}}}'),
  fc.integer({ min: 10, max: 60_000 }).map(n => '['.repeat(n) + ']'.repeat(n)),
  fc.integer({ min: 10, max: 60_000 }).map(n => '{"a":'.repeat(n) + '1' + '}'.repeat(n)),
  fc.string({ maxLength: 200 }),
  fc.uint8Array({ maxLength: 200 }).map(b => Buffer.from(b).toString('latin1'))
)

/** A body: mostly objects, sometimes bad JSON; 'HUGE' and 'OVER' are made at send time (past the 1 MiB limit) */
const bodyText = fc.oneof(
  { weight: 6, arbitrary: objectText },
  { weight: 3, arbitrary: nearValidRow.map(r => r.text) },
  { weight: 3, arbitrary: badJson },
  { weight: 1, arbitrary: fc.constantFrom('HUGE', 'OVER', 'NEAR') }
)

type Who = keyof Tokens | 'none' | 'garbage' | 'basic' | 'empty' | 'twice'
const who = fc.oneof(
  { weight: 12, arbitrary: fc.constantFrom<Who>('admin', 'admin', 'nurse', 'billing', 'auditor') },
  { weight: 3, arbitrary: fc.constantFrom<Who>('revoked', 'none', 'garbage', 'basic', 'empty', 'twice') }
)

const contentType = fc.oneof(
  { weight: 8, arbitrary: fc.constant('application/json') },
  { weight: 1, arbitrary: fc.constantFrom(undefined, 'text/plain', 'application/json; charset=utf-16', 'APPLICATION/JSON', 'application/x-ndjson', 'text/csv', 'multipart/form-data; boundary=x', 'application/octet-stream', ';;;', 'application/json;') }
)

const breakGlass = fc.oneof(
  { weight: 8, arbitrary: fc.constant(undefined) },
  { weight: 2, arbitrary: fc.constantFrom('', ' ', '%', '%E0%A4%A', '%00', 'emergency', 'code%20blue', '%F0%9F%98%80', '\t', 'x'.repeat(501), '%41'.repeat(600)) },
  { weight: 1, arbitrary: fc.string({ maxLength: 60 }).map(s => encodeURIComponent(s)) }
)

const ifMatch = fc.oneof(
  { weight: 6, arbitrary: fc.constant(undefined) },
  { weight: 2, arbitrary: fc.constantFrom('*', '', '""', '"abc"', 'W/"x"', ',,,', '"', 'W/', '"1-2-3"', '*, "a"') },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 9 }).map(i => `"${i}"`) },
  { weight: 1, arbitrary: fc.string({ maxLength: 80 }).map(s => s.replace(/[^\x20-\x7e]/g, '')) },
  { weight: 1, arbitrary: fc.integer({ min: 50, max: 400 }).map(n => Array.from({ length: n }, () => '"v"').join(', ')) }
)

const consistency = fc.oneof(
  { weight: 6, arbitrary: fc.constant(undefined) },
  { weight: 2, arbitrary: fc.constantFrom('one', 'quorum', 'all') },
  { weight: 2, arbitrary: fc.constantFrom('', 'ALL', 'two', '__proto__', 'one&consistency=all', 'quorum%00', '%FF') }
)

const queryExtra = fc.array(fc.oneof(
  fc.tuple(columnName, fc.string({ maxLength: 20 })).map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`),
  fc.constantFrom('limit=0', 'limit=-1', 'limit=1001', 'limit=abc', 'limit=1&limit=2', 'limit=99999999999999999999', 'cursor=', 'cursor=garbage', 'cursor=%00%01', 'local=maybe', 'local=true', 'cascade=yes', 'cascade=true', '__proto__=x', 'constructor=x', 'constructor[prototype]=1', '__proto__[x]=1', 'a[b]=c', '=', '&&&', 'patient_id=1&patient_id=2', 'allergies=x', 'diagnosis=x', 'token_hash=x'),
  fc.integer({ min: 100, max: 5000 }).map(n => `cursor=${'A'.repeat(n)}`)
), { maxLength: 4 })

const importBody = fc.oneof(
  fc.array(fc.oneof(objectText, nearValidRow.map(r => r.text), badJson.filter(s => s.length < 5000)), { maxLength: 20 }).map(lines => ({ type: 'application/x-ndjson', text: lines.join('\n') })),
  fc.tuple(fc.array(columnName, { maxLength: 8 }), fc.array(fc.array(fc.string({ maxLength: 30 }), { maxLength: 8 }), { maxLength: 10 }))
    .map(([header, rows]) => ({ type: 'text/csv', text: [header.join(','), ...rows.map(r => r.join(','))].join('\n') })),
  fc.constantFrom(
    { type: 'text/csv', text: 'patient_name,"unclosed\n1,2' },
    { type: 'text/csv', text: '' },
    { type: 'text/csv', text: '\n\n\n' },
    { type: 'application/x-ndjson', text: '' },
    { type: 'application/x-ndjson', text: 'LONGLINE' },
    { type: 'text/csv', text: 'LONGLINE' },
    { type: 'application/ndjson', text: '{}\n{}\n' }
  )
)

const batchBody = fc.oneof(
  fc.array(fc.oneof(
    fc.record({ op: fc.constantFrom('insert', 'put', 'patch', 'delete', 'upsert', '__proto__', ''), table: segment, id: fc.option(anyId, { nil: undefined }), row: fc.option(anyValue, { nil: undefined }), ifMatch: fc.option(fc.oneof(fc.constant(['x']), anyValue), { nil: undefined }) }).map(o => JSON.stringify(o)),
    nearValidRow.map(r => `{"op":"insert","table":${JSON.stringify(r.table)},"row":${r.text}}`),
    fc.constantFrom('null', '1', '"x"', '[]', '{}')
  ), { maxLength: 12 }).map(ops => `{"operations":[${ops.join(',')}]}`),
  fc.constantFrom('{"operations":null}', '{"operations":{}}', '{"operations":"x"}', '{}', '{"operations":[]}', 'BATCH_MANY'),
  objectText
)

const request: fc.Arbitrary<RawRequest> = fc.record({
  kind: fc.constantFrom('get', 'list', 'insert', 'put', 'patch', 'delete', 'history', 'purge', 'batch', 'import', 'users', 'cluster', 'odd'),
  who,
  table: segment,
  id: anyId,
  body: bodyText,
  contentType,
  breakGlass,
  ifMatch,
  consistency,
  query: queryExtra,
  importBody,
  batchBody,
  valid: nearValidRow,
  seededId: fc.nat(4),
  odd: fc.constantFrom('/v1/../v1/status', '/v1/tables/../status', '/v1//tables', '/v1/tables/', '/v1/tables/patient_records/rows/1/../2', '/v1/tables/patient_records%2Frows', '/v1/status?__proto__=1', '/v2/status', '/', '/v1', '/v1/members/x', '/v1/users/__proto__/revoke', '/v1/users/constructor/revoke', '/v1/users/gone.fz/revoke', '/v1/audit?since=garbage', '/v1/audit?verify=maybe', '/v1/audit?patient=__proto__', '/v1/roles', '/v1/ring', '/v1/peers', '/v1/tables/patient_records/rows/1/history/extra', '/%', '/v1/%ZZ', '/v1/tables/%E0%A4%A/rows', '//v1/status', '/v1/status#x', '/v1/tables/patient_records/rows?%=1'),
  oddMethod: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD', 'TRACE')
}).map(g => {
  const headers: Record<string, string> = {}
  switch (g.who) {
    case 'none': break
    case 'garbage': headers.authorization = 'Bearer AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'; break
    case 'basic': headers.authorization = 'Basic YWRtaW46YWRtaW4='; break
    case 'empty': headers.authorization = 'Bearer '; break
    case 'twice': headers.authorization = `Bearer ${tokens.admin} ${tokens.nurse}`; break
    default: headers.authorization = `Bearer ${tokens[g.who]}`
  }
  if (g.breakGlass !== undefined) headers['x-break-glass'] = g.breakGlass
  if (g.ifMatch !== undefined) headers['if-match'] = g.ifMatch
  const qs = [...(g.consistency === undefined ? [] : [`consistency=${g.consistency}`]), ...g.query]
  const q = qs.length === 0 ? '' : `?${qs.join('&')}`
  const rows = `/v1/tables/${g.table}/rows`
  const withBody = (method: string, path: string, text: string, type: string | undefined = g.contentType): RawRequest => {
    if (type !== undefined) headers['content-type'] = type
    return { method, path, headers, body: text, label: `${g.who} ${method} ${path} [${type ?? 'no type'}] ${text.length > 300 ? `${text.slice(0, 300)}… (${text.length} chars)` : text}` }
  }
  const bare = (method: string, path: string): RawRequest => ({ method, path, headers, label: `${g.who} ${method} ${path}` })
  switch (g.kind) {
    case 'get': return bare('GET', `${rows}/${g.id}${q}`)
    case 'list': return bare('GET', `${rows}${q}`)
    case 'history': return bare('GET', `${rows}/${g.id}/history${q}`)
    case 'delete': return bare('DELETE', `${rows}/${g.id}${q}`)
    case 'purge': return bare('POST', `${rows}/${g.id}/purge`)
    // Half of the writes carry a row near to valid for their own table, at a seeded id: they reach the database's checks.
    case 'insert': return g.seededId % 2 === 0 ? withBody('POST', `/v1/tables/${g.valid.table}/rows${q}`, g.valid.text) : withBody('POST', `${rows}${q}`, g.body)
    case 'put': return g.seededId % 2 === 0 ? withBody('PUT', `/v1/tables/${g.valid.table}/rows/${seeded[g.valid.table]?.[g.seededId] ?? g.id}${q}`, g.valid.text) : withBody('PUT', `${rows}/${g.id}${q}`, g.body)
    case 'patch': return g.seededId % 2 === 0 ? withBody('PATCH', `/v1/tables/${g.valid.table}/rows/${seeded[g.valid.table]?.[g.seededId] ?? g.id}${q}`, g.valid.text) : withBody('PATCH', `${rows}/${g.id}${q}`, g.body)
    case 'batch': return withBody('POST', `/v1/batch${q}`, g.batchBody)
    case 'import': return withBody('POST', `/v1/tables/${g.table}/import${q}`, g.importBody.text, g.importBody.type)
    case 'users': return withBody('POST', '/v1/users', g.body)
    case 'cluster': return bare('GET', `/v1/${g.table === '' ? 'status' : g.table}`)
    default: return g.oddMethod === 'GET' || g.oddMethod === 'HEAD' || g.oddMethod === 'OPTIONS' || g.oddMethod === 'TRACE' ? bare(g.oddMethod, g.odd) : withBody(g.oddMethod, g.odd, g.body)
  }
})

/** Turns the send-time markers into bodies: past the 1 MiB limit, at it, and import lines past theirs */
function materialise (req: RawRequest): RawRequest {
  const body = req.body
  if (typeof body !== 'string') return req
  let out: string | undefined
  if (body === 'HUGE') out = `{"patient_name":"${'x'.repeat(MIB + 10)}"}`
  else if (body === 'OVER') out = `{"a":[${'1,'.repeat(MIB / 2 + 10)}1]}`
  else if (body === 'NEAR') out = `{"patient_name":"${'y'.repeat(MIB - 100)}"}`
  else if (body === 'LONGLINE') out = req.headers?.['content-type'] === 'text/csv' ? `patient_name\n"${'z'.repeat(MIB + 10)}"\n` : `{"patient_name":"${'z'.repeat(MIB + 10)}"}\n{"x":1}\n`
  else if (body.includes('BATCH_MANY')) out = `{"operations":[${Array.from({ length: 3000 }, () => '{"op":"insert","table":"medications","row":{"name":"a","dosage":"b","manufacturer":"c"}}').join(',')}]}`
  const made = out === undefined ? req : { ...req, body: out, label: `${req.label.slice(0, 200)} (body: ${out.length} bytes)` }
  return { ...made, label: made.label.length > 600 ? `${made.label.slice(0, 600)}…` : made.label }
}

describe('socket fuzz', () => {
  it(`${REQUESTS} generated requests: no crash, no 5xx, every error a clean 4xx, RSS bounded, every row still valid`, async () => {
    const requests = fc.sample(request, { seed: SEED, numRuns: REQUESTS }).map(materialise)
    const statuses: Record<string, number> = {}
    const failures: string[] = []
    let crashes = 0
    let fiveXX = 0
    let ok = 0
    let resets = 0
    const rss = rssSampler([daemon.proc.pid as number])
    const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY })
    const started = Date.now()
    try {
      await runBounded(requests, CONCURRENCY, async req => {
        let res
        try {
          // A body the daemon may refuse before reading it all goes on a connection of its own, closed after.
          res = await rawRequest(daemon.socket, req, typeof req.body === 'string' && req.body.length > BIG_BODY ? undefined : agent)
        } catch (err) {
          // A large body refused before it was read (401, 403, 413, ...) may end in a reset; anything else is a failure.
          if (typeof req.body === 'string' && req.body.length > BIG_BODY && /ECONNRESET|EPIPE/.test((err as Error).message)) { resets++; return }
          failures.push(`no answer (${(err as Error).message}) to: ${req.label}`)
          return
        }
        bump(statuses, res.status)
        if (res.status >= 500) { fiveXX++; failures.push(`${res.status} ${res.body.slice(0, 300)} for: ${req.label}`); return }
        if (res.status >= 200 && res.status < 300) { ok++; return }
        if (res.status < 400) { failures.push(`${res.status} for: ${req.label}`); return }
        if (req.method === 'HEAD') return
        let body: any
        try { body = JSON.parse(res.body) } catch { body = undefined }
        if (typeof body?.error?.code !== 'string' || typeof body.error.message !== 'string') {
          failures.push(`${res.status} without the error shape (${res.body.slice(0, 200)}) for: ${req.label}`)
        }
      })
    } finally {
      agent.destroy()
      rss.stop()
    }
    // Bytes that are not HTTP at all, on connections of their own.
    const garbage = fc.sample(fc.uint8Array({ minLength: 1, maxLength: 4096 }), { seed: SEED, numRuns: RAW_CONNECTIONS })
    await runBounded(garbage, 4, async bytes => { await sendRaw(daemon.socket, bytes) })
    const alive = daemon.proc.exitCode === null && daemon.proc.signalCode === null && await statusAnswers(daemon.socket)
    if (!alive) crashes++
    const maxRss = rss.max()
    const check = alive ? await rowsBreakingSchema(daemon.socket, tokens.admin) : { rows: 0, broken: [{ table: '-', row: null, error: 'daemon down' }] }
    console.log(`socket fuzz: ${requests.length} requests in ${((Date.now() - started) / 1000).toFixed(1)} s, ${crashes} crashes, ${fiveXX} 5xx, ${ok} 2xx (valid requests), ${resets} large bodies refused unread (connection reset), statuses ${sorted(statuses)}, ${RAW_CONNECTIONS} connections of raw garbage, rows read back ${check.rows}, rows breaking the schema ${check.broken.length}, max RSS ${maxRss} MB`)
    for (const f of failures.slice(0, 20)) console.log(`  failure: ${f}`)
    expect(crashes, daemon.stderr().slice(-2000)).toBe(0)
    expect(failures.slice(0, 10)).toEqual([])
    expect(check.broken.slice(0, 5)).toEqual([])
    expect(maxRss).toBeLessThan(MAX_RSS_MB)
  }, 150_000)
})
