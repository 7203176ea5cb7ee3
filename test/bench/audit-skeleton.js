// Reads with nothing of the database in them, with and without an audit
// record per read: a ceiling for the security benchmark's gets. One process
// serves GET /r/<id> on a Unix socket (node:http, no fastify, no tokens, no
// rules, no encryption) from rows already in its LevelDB. In mode `audited`
// every read also appends one record of the audit trail's size (hash-chained
// with SHA-256, as the trail does) to the same LevelDB, buffered and written
// every 50 ms in one synced batch, as the trail's batches are. Whatever the
// audited mode reaches as a share of the plain one bounds what any design
// that writes a durable record for every read reaches on these components.
//
//   node test/bench/audit-skeleton.js <dir> <socket> [plain|audited] <rows>
//
// Routes: GET /status; GET /r/<n> answers the row stored under n. SIGTERM
// stops it. Benchmark code: input is trusted.
import '../../dist/util/polyfill.js'
import { createHash } from 'node:crypto'
import { createServer } from 'node:http'
import { Level } from 'level'

const [home, socketPath, mode = 'plain', rowsArg = '10000'] = process.argv.slice(2)
if (home === undefined || socketPath === undefined || !['plain', 'audited'].includes(mode)) {
  console.error('usage: node test/bench/audit-skeleton.js <dir> <socket> [plain|audited] <rows>')
  process.exit(2)
}
const ROWS = Number(rowsArg)
const db = new Level(home, { valueEncoding: 'utf8', writeBufferSize: 16 * 1024 * 1024 })
await db.open()
for (let i = 0; i < ROWS; i += 1000) {
  await db.batch(Array.from({ length: Math.min(1000, ROWS - i) }, (_, j) => ({
    type: 'put',
    key: `r!${String(i + j).padStart(10, '0')}`,
    value: JSON.stringify({ patient_id: i + j, patient_name: `Patient ${i + j}`, date_of_birth: '1980-05-17', gender: 'female', address: `${i + j} Church Street`, contact_number: '0712345678', email: `p${i + j}@example.org`, allergies: null })
  })))
}

let pending = []
let seq = 0
let prev = '0'.repeat(64)
let flushing = false
setInterval(() => {
  if (flushing || pending.length === 0) return
  flushing = true
  const batch = pending
  pending = []
  db.batch(batch, { sync: true }).finally(() => { flushing = false })
}, 50).unref()

function audit (id) {
  seq++
  const entry = { node: '12D3KooWAuditSkeleton', seq, prev, time: new Date().toISOString(), user: 'dr.bench', role: 'doctor', action: 'read', table: 'patient_records', key: id, columns: 'patient_id,patient_name,date_of_birth,gender,address,contact_number,email,allergies', outcome: 'ok', status: 200, reason: null, break_glass: 0, patient_id: Number(id) }
  const hash = createHash('sha256').update(JSON.stringify(entry)).digest('hex')
  prev = hash
  pending.push({ type: 'put', key: `a!${String(Number(id)).padStart(10, '0')}!${seq}`, value: JSON.stringify({ ...entry, hash }) })
}

const server = createServer((req, res) => {
  if (req.url === '/status') { res.end('{"ok":true}'); return }
  const id = req.url.slice(3)
  db.get(`r!${id.padStart(10, '0')}`).then(value => {
    if (mode === 'audited') audit(id)
    res.setHeader('content-type', 'application/json')
    res.end(value === undefined ? '{}' : `{"row":${value}}`)
  }, err => { res.statusCode = 500; res.end(String(err)) })
})
server.listen(socketPath)
process.on('SIGTERM', () => { server.close(); void db.close().then(() => process.exit(0)) })
