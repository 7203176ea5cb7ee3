// The write path with nothing of the database in it: a ceiling for the
// cluster benchmark. Three of these processes do what three daemons do for
// one single-row write, on the same components, and nothing else:
//
//   HTTP POST on a Unix socket (node:http, no fastify, no validation)
//   -> forward to the key's primary over libp2p (TCP + Noise + yamux, the
//      product's RpcService with its frame coalescing), unless this process is
//      it, or the mode is `local`
//   -> the coordinator commits the row to its LevelDB (group commit, fsync)
//      and sends it to the other two; it answers once 2 of the 3 have it on disk
//   -> each replica commits it (group commit, fsync) and acknowledges.
//
// No schema, versions, history, indexes, locks, ordering, hints or retries;
// one LevelDB put per copy (a daemon writes four or five); whatever is bound
// for one peer in one turn of the event loop goes as one request (forwards
// too, which the daemon does not batch). Whatever rate this reaches on a
// machine bounds what the database reaches there with one row per request,
// the same message pattern and durability. Mode `local` drops the hop to the
// primary (every write is coordinated where it arrives, which a 3-node ring
// with N=3 allows): the ceiling of any design that keeps three synchronous
// copies on these components.
//
//   node test/bench/skeleton.js <dir> <socket> [primary|local]
//
// Reads by id, the same way: GET /r/<id> reads the local copy and asks one
// other member for its copy over the same RPC (R=2 on a ring where every
// member owns every key, as 3 nodes with N=3 are), and answers the local one.
// GET /ra/<id> does the same and also queues one audit record of the read,
// which a flush every 50 ms commits here (fsync) and on the other members,
// done at 2 of 3: the daemon's audit trail in its simplest form (no hash
// chain, journal or seals). They bound the daemon's reads by id on these
// components, without and with an audit record per read.
//
// Routes: GET /status answers { peerId, addr }; POST /members with every
// member's [{ peerId, addr }] dials the others; POST /w stores the JSON body
// and answers 201 { id }; GET /r/<id> and /ra/<id> answer 200 with the
// stored body. SIGTERM stops it. Benchmark code: input is trusted.
import '../../dist/util/polyfill.js'
import { createHash } from 'node:crypto'
import { createServer } from 'node:http'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { Level } from 'level'
import { createNode } from '../../dist/p2p/node.js'
import { RpcService } from '../../dist/p2p/rpc.js'
import { GroupCommitter } from '../../dist/storage/group-commit.js'

const [home, socketPath, mode = 'primary'] = process.argv.slice(2)
if (home === undefined || socketPath === undefined || !['primary', 'local'].includes(mode)) {
  console.error('usage: node test/bench/skeleton.js <dir> <socket> [primary|local]')
  process.exit(2)
}

const db = new Level(home, { valueEncoding: 'utf8', writeBufferSize: 16 * 1024 * 1024 })
await db.open()
const committer = new GroupCommitter(async (ops, sync) => { await db.batch(ops, { sync }) })
const node = await createNode({ privateKey: await generateKeyPair('Ed25519') }, { listen: ['/ip4/127.0.0.1/tcp/0'] })
const self = node.peerId.toString()
let members = []

const commit = async (key, value) => { await committer.commit([{ type: 'put', key, value }]) }

/**
 * Everything bound for one peer in one turn of the event loop goes as one
 * request with one answer (as the daemon's replica batching does, and more:
 * forwards are batched too)
 */
const queues = new Map()
async function batched (peer, type, item) {
  return await new Promise((resolve, reject) => {
    const key = `${type} ${peer}`
    let queue = queues.get(key)
    if (queue === undefined) {
      queue = []
      queues.set(key, queue)
      setImmediate(() => {
        queues.delete(key)
        rpc.request(peer, { type, items: queue.map(q => q.item) }).then(
          results => { queue.forEach((q, i) => { if (results[i]?.ok === true) q.resolve(results[i].value); else q.reject(new Error(results[i]?.error ?? 'no answer')) }) },
          err => { for (const q of queue) q.reject(err) })
      })
    }
    queue.push({ item, resolve, reject })
  })
}

/** Commits here and on the other members; resolves once `need` of them have it */
async function coordinate (key, value, need) {
  const copies = [commit(key, value), ...members.filter(m => m !== self).map(m => batched(m, 'apply', { key, value }))]
  await new Promise((resolve, reject) => {
    let acked = 0
    let failed = 0
    for (const c of copies) {
      c.then(() => { if (++acked === need) resolve() }, err => { if (++failed > copies.length - need) reject(err) })
    }
  })
}

const settle = async (promises) => (await Promise.allSettled(promises)).map(r => r.status === 'fulfilled' ? { ok: true, value: r.value } : { ok: false, error: String(r.reason?.message ?? r.reason) })

const rpc = new RpcService({ node, logger: msg => { console.error(msg) } }, {
  protocol: '/ntsoekhe-skeleton/1.0.0',
  handler: async (msg) => {
    if (msg.type === 'apply') {
      await committer.commit(msg.items.map(i => ({ type: 'put', key: i.key, value: i.value })))
      return msg.items.map(() => ({ ok: true }))
    }
    if (msg.type === 'read') return await settle(msg.items.map(async i => await db.get(i.key)))
    if (msg.type === 'write') return await settle(msg.items.map(async i => { await coordinate(i.key, i.value, 2); return i.key }))
    throw new Error(`unknown message ${msg.type}`)
  }
})
await rpc.start()

/** Audit records of reads, flushed every AUDIT_FLUSH_MS at 2 of 3 copies */
const AUDIT_FLUSH_MS = 50
let audits = []
let auditSeq = 0
const auditFlush = setInterval(() => {
  if (audits.length === 0) return
  const batch = audits
  audits = []
  const key = `audit-${self.slice(-8)}-${auditSeq++}`
  coordinate(key, JSON.stringify(batch), 2).catch(err => { console.error(`audit flush failed: ${err.message}`) })
}, AUDIT_FLUSH_MS)

let readTurn = 0
/** Reads the local copy and one other member's (R=2); answers the local one */
async function quorumRead (key) {
  const others = members.filter(m => m !== self)
  const [local] = await Promise.all([db.get(key), batched(others[(readTurn++) % others.length], 'read', { key })])
  return local
}

let nextId = 0
const primaryOf = (key) => members[createHash('sha256').update(key).digest().readUInt32BE(0) % members.length]

const json = (res, status, body) => {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text)
}

const server = createServer((req, res) => {
  const chunks = []
  req.on('data', c => chunks.push(c))
  req.on('end', () => {
    if (req.method === 'GET' && req.url === '/status') {
      const addr = node.getMultiaddrs().find(a => a.toString().startsWith('/ip4/127.0.0.1/'))
      json(res, 200, { peerId: self, addr: addr?.toString() })
      return
    }
    const read = /^\/(r|ra)\/([^/?]+)$/.exec(req.url ?? '')
    if (req.method === 'GET' && read !== null) {
      const key = decodeURIComponent(read[2])
      quorumRead(key).then(value => {
        if (value === undefined) { json(res, 404, { error: `no ${key}` }); return }
        if (read[1] === 'ra') audits.push({ action: 'read', id: key, at: Date.now(), user: 'bench' })
        const text = `{"row":${value}}`
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text)
      }, err => { json(res, 503, { error: String(err?.message ?? err) }) })
      return
    }
    let body
    try {
      body = JSON.parse(Buffer.concat(chunks).toString())
    } catch {
      json(res, 400, { error: 'not JSON' })
      return
    }
    if (req.method === 'POST' && req.url === '/members') {
      members = body.map(m => m.peerId).sort()
      Promise.all(body.filter(m => m.peerId !== self).map(async m => await node.dial(multiaddr(m.addr)))).then(
        () => { json(res, 200, { members: members.length }) },
        err => { json(res, 503, { error: String(err?.message ?? err) }) })
      return
    }
    if (req.method !== 'POST' || req.url !== '/w') {
      json(res, 404, { error: `no route ${req.method} ${req.url}` })
      return
    }
    if (members.length === 0) {
      json(res, 503, { error: 'no members yet: POST /members first' })
      return
    }
    const key = `${self.slice(-8)}-${nextId++}`
    const value = JSON.stringify(body)
    const primary = mode === 'local' ? self : primaryOf(key)
    const done = primary === self ? coordinate(key, value, 2) : batched(primary, 'write', { key, value })
    done.then(() => { json(res, 201, { id: key }) }, err => { json(res, 503, { error: String(err?.message ?? err) }) })
  })
})
await new Promise((resolve, reject) => { server.once('error', reject); server.listen(socketPath, resolve) })

let stopping = false
process.on('SIGTERM', () => {
  if (stopping) return
  stopping = true
  void (async () => {
    server.close()
    clearInterval(auditFlush)
    await rpc.stop()
    await node.stop()
    await db.close()
    process.exit(0)
  })()
})
