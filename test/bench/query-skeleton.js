// The one-node query path with nothing of the database in it: a ceiling for the
// queries section. One process serves, on a Unix socket through fastify (as the
// daemon does), the requests the section sends a daemon, answering the same JSON:
//
//   GET /v1/tables/patient_records/rows/<id>                 {"row","version","conflicts":[]}
//   GET /v1/tables/<table>/rows?patient_id=<p>               {"rows","next":null}, by primary key
//   GET /v1/tables/appointments/rows?doctor_id=<d>&where=appointment_date>=<day>
//       &where=appointment_date<<next day>&order_by=appointment_date   {"rows","next":null}, by time
//
// It holds the same rows (the section's NDJSON files, loaded at start) in one
// LevelDB with the daemon's ordered indexes as keys, and per request reads
// what the daemon reads: the index range (one LevelDB iterator), then each
// row by key (a synchronous get, as the store reads records), and appends
// one audit record (hash-chained with SHA-256, as the trail is) buffered and
// written every 50 ms in one synced batch, as the trail's batches are. No
// tokens, no rules, no encryption, no versions, no replication: whatever the
// daemon reaches as a share of this bounds how much of the path is its own.
//
//   node test/bench/query-skeleton.js <dir> <socket> <ndjson dir>
//
// GET /status answers once the rows are loaded. SIGTERM stops it.
// Benchmark code: input is trusted.
import '../../dist/util/polyfill.js'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import Fastify from 'fastify'
import { Level } from 'level'

const [home, socketPath, rowsDir] = process.argv.slice(2)
if (home === undefined || socketPath === undefined || rowsDir === undefined) {
  console.error('usage: node test/bench/query-skeleton.js <dir> <socket> <ndjson dir>')
  process.exit(2)
}

/** Each table's primary key and the daemon's index entries of its rows (src/schema/tables.ts): primary key, ordered, equality */
const TABLES = {
  doctors_info: { key: 'doctor_id', ordered: [['doctor_id']] },
  patient_records: { key: 'patient_id', ordered: [['patient_id'], ['patient_name']] },
  appointments: { key: 'appointment_id', ordered: [['appointment_id'], ['doctor_id', 'appointment_date'], ['appointment_date'], ['patient_id', 'appointment_date'], ['patient_id'], ['doctor_id']] },
  medical_history: { key: 'history_id', ordered: [['history_id'], ['patient_id', 'date_of_visit'], ['date_of_visit'], ['patient_id'], ['role_id']] },
  lab_results: { key: 'result_id', ordered: [['result_id'], ['patient_id', 'test_date'], ['test_date'], ['patient_id'], ['record_id']] }
}
const SEP = '!'

/** A value as a key part that sorts as the value does: integers fixed-width, text as it is */
function enc (v) {
  if (v === null || v === undefined) return ''
  return typeof v === 'number' ? String(v).padStart(16, '0') : String(v)
}
const rowKey = (table, id) => `r${SEP}${table}${SEP}${enc(id)}`
const indexPrefix = (table, cols, values) => `o${SEP}${table}${SEP}${cols.join(',')}${SEP}${values.map(v => enc(v) + SEP).join('')}`

const db = new Level(home, { valueEncoding: 'utf8', writeBufferSize: 16 * 1024 * 1024 })
await db.open()
for (const [table, def] of Object.entries(TABLES)) {
  const rows = readFileSync(join(rowsDir, `${table}.ndjson`), 'utf8').split('\n').filter(l => l !== '').map(l => JSON.parse(l))
  for (let i = 0; i < rows.length; i += 1000) {
    const ops = []
    for (const row of rows.slice(i, i + 1000)) {
      const id = row[def.key]
      ops.push({ type: 'put', key: rowKey(table, id), value: JSON.stringify(row) })
      for (const cols of def.ordered) ops.push({ type: 'put', key: indexPrefix(table, cols, cols.map(c => row[c])) + enc(id), value: '' })
    }
    await db.batch(ops)
  }
}

let pending = []
let seq = 0
let prev = '0'.repeat(64)
/** The write under way, if any */
let flushing
const timer = setInterval(() => {
  if (flushing !== undefined || pending.length === 0) return
  const batch = pending
  pending = []
  flushing = db.batch(batch, { sync: true }).finally(() => { flushing = undefined })
}, 50)

/** One audit record of the trail's size, hash-chained, buffered for the next synced batch */
function audit (action, table, key, patient) {
  seq++
  const entry = { node: '12D3KooWQuerySkeleton', seq, prev, time: new Date().toISOString(), user: 'admin', role: 'admin', action, table, key, columns: null, outcome: 'ok', status: 200, reason: null, break_glass: 0, patient_id: patient }
  const hash = createHash('sha256').update(JSON.stringify(entry)).digest('hex')
  prev = hash
  pending.push({ type: 'put', key: `a${SEP}${String(patient).padStart(16, '0')}${SEP}${seq}`, value: JSON.stringify({ ...entry, hash }) })
}

/** The keys of an index range, read as the store reads one: one iterator, one batch */
async function rangeKeys (gte, lt) {
  const it = db.keys({ gte, lt })
  try {
    return await it.nextv(1000)
  } finally {
    await it.close()
  }
}

/** The rows an index range points at, each read by key */
function rowsOf (table, keys) {
  const rows = []
  for (const k of keys) {
    const value = db.getSync(rowKey(table, k.slice(k.lastIndexOf(SEP) + 1)))
    if (value !== undefined) rows.push(JSON.parse(value))
  }
  return rows
}

const app = Fastify({ logger: false })
app.get('/status', async () => ({ ok: true }))
app.get('/v1/tables/patient_records/rows/:id', async (req, reply) => {
  const value = db.getSync(rowKey('patient_records', Number(req.params.id)))
  if (value === undefined) return await reply.status(404).send({ error: { code: 'NOT_FOUND' } })
  audit('read', 'patient_records', req.params.id, Number(req.params.id))
  return { row: JSON.parse(value), version: '00000196e5f0a1b2-0000-1a2b3c4d', conflicts: [] }
})
app.get('/v1/tables/:table/rows', async req => {
  const table = req.params.table
  const def = TABLES[table]
  const q = req.query
  if (q.patient_id !== undefined) {
    const p = Number(q.patient_id)
    // The daemon's default order is the primary key: the patient's entries of the equality index, rows sorted.
    const prefix = indexPrefix(table, ['patient_id'], [p])
    const rows = rowsOf(table, await rangeKeys(prefix, prefix + '\xff')).sort((a, b) => a[def.key] - b[def.key])
    audit('list', table, null, p)
    return { rows, next: null }
  }
  // A doctor's day: the (doctor_id, appointment_date) index from the day to the next, in order.
  const [from, to] = [].concat(q.where).map(w => w.slice(w.search(/[<>=]+/)).replace(/^[<>=]+/, ''))
  const prefix = indexPrefix(table, ['doctor_id', 'appointment_date'], [Number(q.doctor_id)])
  const rows = rowsOf(table, await rangeKeys(prefix + from, prefix + to))
  // One audit record per patient the answer holds, as the daemon's list writes.
  for (const p of new Set(rows.map(r => r.patient_id))) audit('list', table, null, p)
  return { rows, next: null }
})
await app.listen({ path: socketPath })
process.on('SIGTERM', () => {
  clearInterval(timer)
  void (async () => {
    await app.close()
    await flushing
    await db.close()
    process.exit(0)
  })()
})
