// A join with nothing of the database in it: a ceiling for the healing
// benchmark's join. Two processes do what a sender and a joining node do for
// the records that move, on the same components, and nothing else:
//
//   the sender builds each record in its wire form (the `records` message of
//   the replica protocol: its state, heads with parents and row, seen and
//   superseded lists, its other versions) and sends them in messages of
//   REBALANCE_BATCH records, REBALANCE_WINDOW messages in flight (as a
//   rebalance does), over one stream of the product's RpcService (JSON frames)
//   on createNode (TCP, a network key, Noise, yamux);
//   the receiver decodes each message and writes, through the store's group
//   commit (fsync), one LevelDB batch of the keys the store writes for a
//   record it receives: the record, each of its other versions, the table
//   list entry, its equality index entries and its ordered index entries;
//   it answers once the batch is durable.
//
// No validation of the message, no encryption of rows or index values, no
// locks, no reads of what the receiver holds, no range summary, no `holds`
// questions, no copies dropped on the sender: whatever rate this reaches
// bounds what a join reaches on these components.
//
//   node test/bench/join-skeleton.js receive <dir>          prints {"addr","key"} on one line, then serves
//   node test/bench/join-skeleton.js send <addr> <key> <rows.ndjson> <count>   prints {"records","bytes","seconds"}
//
// The sender takes the first <count> rows of the file (one JSON row a line,
// as the bench imports them) as patient_records rows 1..count. Timed from the
// first message to the last answer. Benchmark code: input is trusted.
import '../../dist/util/polyfill.js'
import { readFile } from 'node:fs/promises'
import { performance } from 'node:perf_hooks'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { generateKey } from '@libp2p/pnet'
import { multiaddr } from '@multiformats/multiaddr'
import { Level } from 'level'
import { tokenOf } from '../../dist/cluster/token.js'
import { createNode } from '../../dist/p2p/node.js'
import { RpcService } from '../../dist/p2p/rpc.js'
import { findTable } from '../../dist/schema/index.js'
import { GroupCommitter } from '../../dist/storage/group-commit.js'
import { encodeIndexValue, recordKey, SEP } from '../../dist/storage/keys.js'
import { orderedEntries } from '../../dist/storage/ordered.js'
import { encodeVersionLists } from '../../dist/storage/version-list.js'
import { formatVersion } from '../../dist/storage/version.js'

const PROTOCOL = '/ntsoekhe-bench-join/1.0.0'
const TABLE = 'patient_records'
/** As src/cluster/distributed.ts sends them */
const REBALANCE_BATCH = 512
const REBALANCE_WINDOW = 4
const [role, ...args] = process.argv.slice(2)

if (role === 'receive') {
  const [dir] = args
  const db = new Level(dir, { valueEncoding: 'utf8' })
  await db.open()
  // The store writes its encoded operations straight to classic-level's _batch (see writeBatch in store.ts).
  const committer = new GroupCommitter(async (ops, sync) => { await db._batch(ops, { sync }) }, { sync: true })
  const sub = name => `!${name}!`
  const indexed = findTable(TABLE).indexed
  const key = new Uint8Array(95)
  generateKey(key)
  const node = await createNode({ privateKey: await generateKeyPair('Ed25519') }, { listen: ['/ip4/127.0.0.1/tcp/0'], pnetKey: key })
  const rpc = new RpcService({ node, logger: msg => { console.error(msg) } }, {
    protocol: PROTOCOL,
    handler: async (msg) => {
      const ops = []
      for (const { state, versions } of msg.records) {
        const { table, token, id } = state
        const rk = recordKey(token, table, id)
        const stored = { heads: state.heads.map(h => ({ version: h.version, parents: h.parents, row: h.row })), ...encodeVersionLists(state.seen, state.superseded) }
        ops.push({ type: 'put', key: sub('r') + rk, value: JSON.stringify(stored) })
        for (const v of versions) ops.push({ type: 'put', key: sub('h') + rk + SEP + v.version, value: JSON.stringify({ version: v.version, parents: v.parents, row: v.row }) })
        const pos = token + SEP + id
        ops.push({ type: 'put', key: sub('t') + table + SEP + pos, value: '1' })
        for (const h of state.heads) {
          if (h.row === null) continue
          for (const col of indexed) {
            const v = h.row[col]
            if (v !== null && v !== undefined) ops.push({ type: 'put', key: sub('i') + table + SEP + col + SEP + encodeIndexValue(v) + SEP + pos, value: '1' })
          }
          for (const k of orderedEntries(findTable(table), h.row, token, id)) ops.push({ type: 'put', key: sub('o') + k, value: '1' })
        }
      }
      await committer.commit(ops)
      return { results: msg.records.map(() => ({ ok: true })) }
    }
  })
  await rpc.start()
  const addr = node.getMultiaddrs().find(a => a.toString().startsWith('/ip4/127.0.0.1/'))
  process.stdout.write(JSON.stringify({ addr: addr.toString(), key: Buffer.from(key).toString('hex') }) + '\n')
  process.on('SIGTERM', () => {
    void (async () => {
      await rpc.stop()
      await node.stop()
      await db.close()
      process.exit(0)
    })()
  })
} else if (role === 'send') {
  const [addr, keyHex, file, countArg] = args
  const count = Number(countArg)
  const lines = (await readFile(file, 'utf8')).split('\n').filter(l => l !== '').slice(0, count)
  const wall = Date.now()
  // Each record as a hand-off carries one with a single version: its state, and no other versions.
  const records = lines.map((line, i) => {
    const id = String(i + 1)
    const token = tokenOf(`patient_id:${id}`)
    const version = formatVersion({ wall: wall + i, counter: 0, node: 'bench' })
    const row = { patient_id: i + 1, ...JSON.parse(line) }
    return { state: { table: TABLE, id, token, heads: [{ table: TABLE, id, token, version, parents: [], row }], seen: [version], superseded: [] }, versions: [] }
  })
  const node = await createNode({ privateKey: await generateKeyPair('Ed25519') }, { listen: ['/ip4/127.0.0.1/tcp/0'], pnetKey: Buffer.from(keyHex, 'hex') })
  const peer = multiaddr(addr)
  const peerId = (await node.dial(peer)).remotePeer.toString()
  const rpc = new RpcService({ node, logger: msg => { console.error(msg) } }, { protocol: PROTOCOL, handler: async () => ({}), streamsPerPeer: 1, timeout: 120_000 })
  await rpc.start()
  const messages = []
  for (let at = 0; at < records.length; at += REBALANCE_BATCH) messages.push({ type: 'records', records: records.slice(at, at + REBALANCE_BATCH) })
  const bytes = messages.reduce((n, m) => n + Buffer.byteLength(JSON.stringify(m)), 0)
  const started = performance.now()
  const inflight = new Set()
  for (const msg of messages) {
    const job = rpc.request(peerId, msg).then(reply => {
      if (reply?.results?.length !== msg.records.length || !reply.results.every(r => r.ok === true)) throw new Error('the receiver refused a batch')
    }).finally(() => { inflight.delete(job) })
    inflight.add(job)
    while (inflight.size >= REBALANCE_WINDOW) await Promise.race(inflight)
  }
  await Promise.all(inflight)
  const seconds = (performance.now() - started) / 1000
  process.stdout.write(JSON.stringify({ records: records.length, bytes, seconds }) + '\n')
  await rpc.stop()
  await node.stop()
  process.exit(0)
} else {
  console.error('usage: node test/bench/join-skeleton.js receive <dir> | send <addr> <keyHex> <rows.ndjson> <count>')
  process.exit(2)
}
