// Reads and writes with nothing of the database in them, with and without an
// audit record per request: a ceiling for the security benchmark. One process
// serves GET /r/<id> (a row already in its LevelDB) and POST /w (stores the
// JSON body under a new key through a synced group commit, as the daemon's
// writes are) on a Unix socket (node:http, no fastify, no tokens, no rules,
// no encryption). In mode `audited` every request also appends one record of
// the audit trail's size (hash-chained with SHA-256, as the trail does) to
// the same LevelDB, buffered and written every 50 ms in one synced batch, as
// the trail's batches are. Whatever the audited mode reaches as a share of
// the plain one bounds what any design that writes a durable record for
// every request reaches on these components.
//
//   node test/bench/audit-skeleton.js <dir> <socket> [plain|audited] <rows>
//
// Routes: GET /status; GET /r/<n> answers the row stored under n; POST /w
// stores the body and answers 201 {"id"}. SIGTERM
// stops it. Benchmark code: input is trusted.
import '../../dist/util/polyfill.js'
import { createHash } from 'node:crypto'
import { createServer } from 'node:http'
import { Level } from 'level'
import { GroupCommitter } from '../../dist/storage/group-commit.js'

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

const committer = new GroupCommitter(async (ops, sync) => { await db.batch(ops, { sync }) })
let written = 0
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
  if (req.method === 'POST') {
    const chunks = []
    req.on('data', c => chunks.push(c))
    req.on('end', () => {
      const id = String(ROWS + written++)
      committer.commit([{ type: 'put', key: `r!${id.padStart(10, '0')}`, value: Buffer.concat(chunks).toString('utf8') }]).then(() => {
        if (mode === 'audited') audit(id)
        res.statusCode = 201
        res.setHeader('content-type', 'application/json')
        res.end(`{"id":"${id}"}`)
      }, err => { res.statusCode = 500; res.end(String(err)) })
    })
    return
  }
  const id = req.url.slice(3)
  db.get(`r!${id.padStart(10, '0')}`).then(value => {
    if (mode === 'audited') audit(id)
    res.setHeader('content-type', 'application/json')
    res.end(value === undefined ? '{}' : `{"row":${value}}`)
  }, err => { res.statusCode = 500; res.end(String(err)) })
})
server.listen(socketPath)
process.on('SIGTERM', () => { server.close(); void db.close().then(() => process.exit(0)) })
