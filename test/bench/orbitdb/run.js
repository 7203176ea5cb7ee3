// OrbitDB 4 baseline: two peers on 127.0.0.1, one writes patient rows into a
// `documents` database, the other replicates them. Prints one JSON line on stdout;
// everything else goes to stderr.
//
//   node run.js [--rows 500] [--gets 20] [--timeout 300]
//
// Peer A (the writer) is this process; peer B (the replica) is a child process
// forked from this same file, so each peer has its own event loop, as two
// database daemons would. They talk to each other over libp2p (TCP + Noise +
// yamux, gossipsub for heads, bitswap for missing entries) and to the harness
// over Node's IPC channel (control messages only, never row data).
import './polyfill.js' // must stay first: Node 20 lacks Promise.withResolvers

import { fork } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { bitswap } from '@helia/block-brokers'
import { libp2pRouting } from '@helia/routers'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createOrbitDB, Documents } from '@orbitdb/core'
import { LevelBlockstore } from 'blockstore-level'
import { createHelia } from 'helia'
import { createLibp2p } from 'libp2p'

const SELF = fileURLToPath(import.meta.url)
const ORBITDB_VERSION = JSON.parse(readFileSync(new URL('./node_modules/@orbitdb/core/package.json', import.meta.url), 'utf8')).version
const INDEX_BY = 'patient_id'
const DB_NAME = 'documents'

const START_TIMEOUT_MS = 60_000 // one peer's libp2p + helia + orbitdb start
const OPEN_TIMEOUT_MS = 60_000 // B dials A, fetches the manifest, opens, both see each other
const STEP_TIMEOUT_MS = 120_000 // a verify scan or the get loop
const STOP_TIMEOUT_MS = 15_000 // each stop step
const PUT_TIMEOUT_MS = 30_000 // one local put on A

const now = () => performance.timeOrigin + performance.now() // ms, comparable across the two processes
const log = (...args) => console.error(`[orbitdb-bench ${process.argv.includes('--peer-b') ? 'B' : 'A'}]`, ...args)

function withTimeout (promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms) })
  ]).finally(() => clearTimeout(timer))
}

async function waitFor (fn, ms, what, everyMs = 50) {
  const until = Date.now() + ms
  while (!(await fn())) {
    if (Date.now() > until) throw new Error(`${what}: not true within ${ms} ms`)
    await new Promise(resolve => setTimeout(resolve, everyMs))
  }
}

// ---------------------------------------------------------------- one peer

const isLoopback = (ma) => /^\/ip4\/127\.|^\/ip6\/::1\//.test(ma.toString())

/** libp2p on 127.0.0.1 only: no bootstrap, mDNS, relay, autonat, upnp, DHT, WebRTC or WebSockets */
async function startPeer (dir, id) {
  await mkdir(dir, { recursive: true })
  const libp2p = await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    connectionGater: {
      denyDialMultiaddr: (ma) => !isLoopback(ma)
    },
    services: {
      identify: identify(),
      pubsub: gossipsub({ allowPublishToZeroTopicPeers: true })
    }
  })
  const blockstore = new LevelBlockstore(join(dir, 'blocks'))
  await blockstore.open()
  const ipfs = await createHelia({
    libp2p,
    blockstore,
    blockBrokers: [bitswap()], // no trustless-gateway broker: it would reach for public HTTP gateways
    routers: [libp2pRouting(libp2p)] // no delegated/HTTP-gateway routing
  })
  const orbitdb = await createOrbitDB({ ipfs, id, directory: join(dir, 'orbitdb') })
  const peer = { libp2p, ipfs, blockstore, orbitdb, db: null }
  peer.stop = async () => {
    const step = async (what, fn) => {
      try { await withTimeout(Promise.resolve().then(fn), STOP_TIMEOUT_MS, what) } catch (err) { log(`stop: ${what}: ${err.message}`) }
    }
    if (peer.db) await step('close database', () => peer.db.close())
    await step('stop orbitdb', () => orbitdb.stop())
    await step('stop helia/libp2p', () => ipfs.stop())
    await step('close blockstore', () => blockstore.close())
  }
  return peer
}

function openDocuments (orbitdb, address) {
  return orbitdb.open(address, { type: 'documents', Database: Documents({ indexBy: INDEX_BY }) })
}

// ---------------------------------------------------------------- rows

function makeRow (i) {
  // deterministic (seeded by the row number) so every run writes the same bytes
  let s = (i * 2654435761) >>> 0
  const rnd = (n) => { s = (s * 1664525 + 1013904223) >>> 0; return s % n }
  const first = ['Thabo', 'Lerato', 'Mpho', 'Naledi', 'Sipho', 'Palesa', 'Kagiso', 'Dineo'][rnd(8)]
  const last = ['Mokoena', 'Nkosi', 'Dlamini', 'Molefe', 'Khumalo', 'Mahlangu'][rnd(6)]
  const pad = (n, w) => String(n).padStart(w, '0')
  return {
    patient_id: i,
    patient_name: `${first} ${last}`,
    date_of_birth: `${1940 + rnd(80)}-${pad(1 + rnd(12), 2)}-${pad(1 + rnd(28), 2)}`,
    gender: ['F', 'M', 'X'][rnd(3)],
    address: `${1 + rnd(999)} Main Road, Maseru ${pad(100 + rnd(900), 3)}`,
    contact_number: `+266 ${pad(rnd(100_000_000), 8)}`,
    email: `${first}.${last}.${i}@example.org`.toLowerCase(),
    allergies: ['none', 'penicillin', 'peanuts', 'latex', 'sulfa drugs'][rnd(5)]
  }
}

function percentile (sorted, p) {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
}
const round = (x, d = 2) => (x == null || !Number.isFinite(x)) ? null : Math.round(x * 10 ** d) / 10 ** d
const maxRssMB = () => process.resourceUsage().maxRSS / 1024 // maxRSS is in KiB: the peak (VmHWM)

// ---------------------------------------------------------------- peer B (child)

async function peerB () {
  const dir = process.env.ORBITDB_BENCH_DIR
  if (!dir || !process.send) throw new Error('peer B is started by run.js itself')
  let peer = null
  let rows = 0 // highest Lamport time seen: with one sequential writer, entry k has clock.time k
  let target = Infinity
  let firstAt = null
  let doneAt = null
  let lastProgress = 0
  let stopping = null

  const stop = () => {
    stopping ??= (async () => {
      if (peer) await peer.stop()
      await rm(dir, { recursive: true, force: true }).catch(() => {})
    })()
    return stopping
  }
  const exit = async (code) => { await stop(); process.exit(code) }
  process.on('disconnect', () => { log('harness went away; stopping'); exit(1) })
  process.on('SIGINT', () => exit(130))
  process.on('SIGTERM', () => exit(143))

  const commands = {
    async start () {
      peer = await startPeer(dir, 'replica')
      return { peerId: peer.libp2p.peerId.toString() }
    },
    async open ({ address, dial, writerId, rows: n }) {
      target = n
      await peer.libp2p.dial(dial.map(a => multiaddr(a)))
      peer.db = await openDocuments(peer.orbitdb, address)
      peer.db.events.on('error', (err) => log('database error:', err?.message ?? err))
      peer.db.events.on('update', (entry) => {
        const t = entry?.clock?.time ?? 0
        if (t <= rows) return
        rows = t
        const at = now()
        firstAt ??= at
        if (rows >= target && doneAt == null) {
          doneAt = at
          process.send({ event: 'done', rows, at })
        } else if (at - lastProgress > 1000) {
          lastProgress = at
          process.send({ event: 'progress', rows, at })
        }
      })
      await waitFor(() => peer.db.peers.has(writerId), OPEN_TIMEOUT_MS, 'B sees A on the database topic')
      return { address: peer.db.address }
    },
    status () {
      return { rows, firstAt, doneAt, at: now() }
    },
    async verify () {
      // one full scan of B's log: distinct patient ids present
      const keys = new Set()
      for await (const doc of peer.db.iterator()) keys.add(doc.key)
      return { rows: keys.size, entries: (await peer.db.log.values()).length }
    },
    async gets ({ keys }) {
      const ms = []
      let found = 0
      for (const key of keys) {
        const t = performance.now()
        const doc = await peer.db.get(key)
        ms.push(performance.now() - t)
        if (doc && doc.value && doc.value.patient_id === key) found++
      }
      return { ms, found }
    },
    async stop () {
      const rssMB = maxRssMB()
      await stop()
      setTimeout(() => process.exit(0), 50)
      return { rssMB }
    }
  }

  process.on('message', async (msg) => {
    if (!msg || msg.id == null) return
    try {
      const result = await commands[msg.cmd](msg.args ?? {})
      process.send({ id: msg.id, ok: true, result })
    } catch (err) {
      process.send({ id: msg.id, ok: false, error: err?.stack ?? String(err) })
    }
  })
  process.send({ event: 'ready' })
}

// ---------------------------------------------------------------- peer A + harness (parent)

function parseArgs (argv) {
  const opts = { rows: 500, gets: 20, timeout: 300 }
  for (let i = 0; i < argv.length; i++) {
    const m = /^--(rows|gets|timeout)(?:=(.*))?$/.exec(argv[i])
    if (!m) {
      if (argv[i] === '--help' || argv[i] === '-h') {
        console.error('usage: node run.js [--rows N=500] [--gets G=20] [--timeout SECONDS=300]')
        process.exit(0)
      }
      throw new Error(`unknown argument ${argv[i]}`)
    }
    const v = Number(m[2] ?? argv[++i])
    if (!Number.isInteger(v) || v < (m[1] === 'gets' ? 0 : 1)) throw new Error(`--${m[1]} needs a positive integer`)
    opts[m[1]] = v
  }
  return opts
}

async function main () {
  const opts = parseArgs(process.argv.slice(2))
  const N = opts.rows
  const root = await mkdtemp(join(tmpdir(), 'orbitdb-bench-'))
  let child = null
  let peerA = null
  let cleaning = null
  const events = []
  const waiters = []
  const pending = new Map()
  let nextId = 1

  const cleanup = () => {
    cleaning ??= (async () => {
      if (child && child.exitCode == null && child.signalCode == null) {
        try { await call('stop', {}, STOP_TIMEOUT_MS * 4) } catch (err) { log(`stopping B: ${err.message}`) }
        const exited = new Promise(resolve => child.once('exit', resolve))
        if (child.exitCode == null && child.signalCode == null) {
          await withTimeout(exited, 10_000, 'B exit').catch(() => { log('B did not exit; killing it'); child.kill('SIGKILL') })
        }
      }
      if (peerA) await peerA.stop()
      await rm(root, { recursive: true, force: true }).catch((err) => log(`removing ${root}: ${err.message}`))
    })()
    return cleaning
  }
  let interrupted = false
  const bail = async (code) => { interrupted = true; await cleanup(); process.exit(code) }
  process.on('SIGINT', () => bail(130))
  process.on('SIGTERM', () => bail(143))
  // hard watchdog: whatever hangs, the run ends
  const watchdog = setTimeout(() => { log('watchdog fired; giving up'); bail(2) }, (opts.timeout + 420) * 1000)

  function call (cmd, args, ms) {
    const id = nextId++
    const p = new Promise((resolve, reject) => pending.set(id, { resolve, reject }))
    child.send({ id, cmd, args })
    return withTimeout(p, ms, `B ${cmd}`).finally(() => pending.delete(id))
  }
  function nextEvent (pred, ms, what) {
    const hit = events.find(pred)
    if (hit) return Promise.resolve(hit)
    return withTimeout(new Promise(resolve => waiters.push({ pred, resolve })), ms, what)
  }

  try {
    child = fork(SELF, ['--peer-b'], {
      stdio: ['ignore', 2, 2, 'ipc'], // B's stdout goes to stderr: stdout carries only the result line
      env: { ...process.env, ORBITDB_BENCH_DIR: join(root, 'b') }
    })
    child.on('message', (msg) => {
      if (msg.id != null) {
        const p = pending.get(msg.id)
        if (p && msg.ok) p.resolve(msg.result)
        else if (p) p.reject(new Error(`B: ${msg.error}`))
        return
      }
      events.push(msg)
      for (let i = waiters.length - 1; i >= 0; i--) {
        if (waiters[i].pred(msg)) { waiters[i].resolve(msg); waiters.splice(i, 1) }
      }
    })
    child.on('exit', (code, signal) => {
      for (const p of pending.values()) p.reject(new Error(`B exited (${code ?? signal})`))
    })

    const t0 = Date.now()
    await nextEvent(e => e.event === 'ready', START_TIMEOUT_MS, 'B ready')
    const [a, b] = await Promise.all([
      startPeer(join(root, 'a'), 'writer'),
      call('start', {}, START_TIMEOUT_MS)
    ])
    peerA = a
    const db = peerA.db = await openDocuments(peerA.orbitdb, DB_NAME)
    db.events.on('error', (err) => log('database error:', err?.message ?? err))
    log(`OrbitDB ${ORBITDB_VERSION}; database ${db.address}; peers started in ${Date.now() - t0} ms`)

    await call('open', {
      address: db.address,
      dial: peerA.libp2p.getMultiaddrs().map(String).filter(a => isLoopback(a)),
      writerId: peerA.libp2p.peerId.toString(),
      rows: N
    }, OPEN_TIMEOUT_MS + 5_000)
    const pubsub = peerA.libp2p.services.pubsub
    await waitFor(() => db.peers.has(b.peerId) && pubsub.getSubscribers(db.address).some(p => p.toString() === b.peerId),
      OPEN_TIMEOUT_MS, 'A sees B on the database topic')
    log(`B opened the database and both peers are subscribed (${Date.now() - t0} ms); writing ${N} rows`)

    // (1) A's local writes, one at a time as a client awaiting each put
    const putMs = []
    const firstWriteAt = now()
    for (let i = 1; i <= N; i++) {
      const t = performance.now()
      await withTimeout(db.put(makeRow(i)), PUT_TIMEOUT_MS, `put of row ${i}`)
      putMs.push(performance.now() - t)
    }
    const writesDoneAt = now()
    const writeSeconds = (writesDoneAt - firstWriteAt) / 1000
    log(`A wrote ${N} rows in ${writeSeconds.toFixed(2)} s; waiting up to ${opts.timeout} s (from the first write) for B`)

    // (2) replicated: from A's first write until B holds all N rows (or the deadline)
    const deadline = firstWriteAt + opts.timeout * 1000
    let replicatedRows, replicatedAt, complete
    try {
      const done = await nextEvent(e => e.event === 'done', Math.max(0, deadline - now()), 'B holds every row')
      replicatedRows = done.rows
      replicatedAt = done.at
      complete = true
    } catch {
      const st = await call('status', {}, STEP_TIMEOUT_MS)
      replicatedRows = st.rows
      replicatedAt = st.at
      complete = false
      log(`deadline: B has ${st.rows} of ${N} rows after ${opts.timeout} s`)
    }
    const replicationSeconds = (replicatedAt - firstWriteAt) / 1000
    log(`B held ${replicatedRows}/${N} rows ${replicationSeconds.toFixed(2)} s after A's first write`)

    const verified = await call('verify', {}, STEP_TIMEOUT_MS)
    if (verified.rows !== replicatedRows) log(`warning: B's scan finds ${verified.rows} distinct rows (${verified.entries} entries), progress said ${replicatedRows}`)
    else log(`B's full scan confirms ${verified.rows} distinct rows`)

    // (3) gets on B: Documents.get walks the log from the heads until it meets the key
    const G = Math.min(opts.gets, N)
    const keys = Array.from({ length: G }, (_, k) => 1 + Math.floor(((k + 0.5) * N) / G))
    const got = G > 0 ? await call('gets', { keys }, STEP_TIMEOUT_MS) : { ms: [], found: 0 }
    const getSorted = [...got.ms].sort((x, y) => x - y)
    log(`B: ${G} gets, ${got.found} found, p50 ${round(percentile(getSorted, 50))} ms, max ${round(getSorted.at(-1))} ms`)

    const stopB = await call('stop', {}, STOP_TIMEOUT_MS * 4)
    const rssA = maxRssMB()
    const putSorted = [...putMs].sort((x, y) => x - y)
    const result = {
      system: 'orbitdb',
      version: ORBITDB_VERSION,
      rows: N,
      writeRowsPerSec: round(N / writeSeconds, 1),
      writeP50Ms: round(percentile(putSorted, 50)),
      writeP99Ms: round(percentile(putSorted, 99)),
      replicatedRowsPerSec: round(replicatedRows / replicationSeconds, 1),
      replicationSeconds: round(replicationSeconds, 3),
      getP50Ms: round(percentile(getSorted, 50)),
      rssMB: round(Math.max(rssA, stopB.rssMB), 1),
      // extras (after the fixed fields)
      replicatedRows,
      complete,
      getCount: G,
      getsFound: got.found,
      getP99Ms: round(percentile(getSorted, 99)),
      rssMBWriter: round(rssA, 1),
      rssMBReplica: round(stopB.rssMB, 1),
      processes: 2,
      node: process.version
    }
    await cleanup()
    clearTimeout(watchdog)
    process.stdout.write(JSON.stringify(result) + '\n')
    log(`total ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    process.exit(0)
  } catch (err) {
    log(interrupted ? 'interrupted; stopped both peers' : `failed: ${err?.stack ?? err}`)
    await cleanup()
    clearTimeout(watchdog)
    process.exit(1)
  }
}

if (process.argv.includes('--peer-b')) {
  peerB().catch((err) => { log(`failed: ${err?.stack ?? err}`); process.exit(1) })
} else {
  main()
}
