// Benchmarks, measured side by side in one run on this machine; writes BENCHMARKS.md.
//
//   npm run bench            (builds first; this file runs the built dist/ through bin/ntsoekhe)
//
// Each entry of `sections` is an async function that receives the shared
// context and returns markdown; append a new section (a cluster, say) to the
// array. Every process spawned through the context is stopped at the end and
// every temp dir removed, whether the run succeeds or not.
//
// Environment: BENCH_REQUESTS (requests per HTTP run, default 10000),
// BENCH_IMPORT_ROWS (rows in the bulk import, default 50000), BENCH_ROUNDS (default 3),
// BENCH_CLUSTER_REQUESTS (requests per cluster round, default 6000), BENCH_CLUSTER_WARMUP
// (writes before the cluster rounds, default 15000), BENCH_CLUSTER_IMPORT_ROWS (default
// 20000), BENCH_ORBITDB_ROWS (default 500), BENCH_HEAL_ROWS (rows in the healing section, default
// 100000), BENCH_HEAL_UPDATES (updates of one row in the healing section, default 10000); at the
// defaults that section took 5.4 min on 2 cores (join ~90 s, the 10,000 updates the rest).
// BENCH_CHAOS_RUNS (short chaos runs in the chaos section, default 1), BENCH_CHAOS_SEED (default 1).
// BENCH_BACKUP_ROWS: rows backed up and restored in the backup section (default 100000).
import { spawn } from 'node:child_process'
import { createReadStream, existsSync, readFileSync, rmSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { Agent, request } from 'node:http'
import { cpus, loadavg, totalmem, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { createTablesSql, startPostgres } from './postgres.js'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const BIN = join(ROOT, 'bin', 'ntsoekhe')
const SELF = fileURLToPath(import.meta.url)

const CONCURRENCY = 32
const REQUESTS = positiveInt(process.env.BENCH_REQUESTS, 10_000)
const WARMUP = 1_000
const ROUNDS = positiveInt(process.env.BENCH_ROUNDS, 3)
const IMPORT_ROWS = positiveInt(process.env.BENCH_IMPORT_ROWS, 50_000)
/** Rows per LevelDB batch in the raw baseline: the same chunk the import endpoint hands to the store */
const RAW_BATCH = 2_000
const START_TIMEOUT = 30_000
const STOP_TIMEOUT = 15_000
const DAEMON_FLAGS = ['--listen', '/ip4/127.0.0.1/tcp/0', '--log-level', 'warn']
const GOAL_HTTP = 0.5
const GOAL_IMPORT = 0.25
const CLUSTER_SIZE = 3
const CLUSTER_REQUESTS = positiveInt(process.env.BENCH_CLUSTER_REQUESTS, 6_000)
/** Writes before the cluster's measured rounds: the daemons' throughput climbs (JIT) for ~15,000 writes after start */
const CLUSTER_WARMUP = positiveInt(process.env.BENCH_CLUSTER_WARMUP, 15_000)
const CLUSTER_IMPORT_ROWS = positiveInt(process.env.BENCH_CLUSTER_IMPORT_ROWS, 20_000)
const ORBITDB_ROWS = positiveInt(process.env.BENCH_ORBITDB_ROWS, 500)
const GOAL_ORBITDB = 50
const GOAL_P99_MS = 20

const GOAL_SECURITY = 0.8
/** Requests of warm-up per run in the security section: the daemons speed up (JIT) for a few thousand requests */
const SECURITY_WARMUP = positiveInt(process.env.BENCH_SECURITY_WARMUP, 4_000)

const HEAL_ROWS = positiveInt(process.env.BENCH_HEAL_ROWS, 100_000)
const HEAL_UPDATES = positiveInt(process.env.BENCH_HEAL_UPDATES, 10_000)
/** Share of one node's records made to differ before the anti-entropy round */
const HEAL_DIFFER = 0.01
const GOAL_JOIN = 0.5
const GOAL_RECORD = 2

/** Rows in the reads-by-id comparison with PostgreSQL */
const PG_ROWS = positiveInt(process.env.BENCH_PG_ROWS, 100_000)
/** Seconds of each pgbench round */
const PG_SECONDS = positiveInt(process.env.BENCH_PG_SECONDS, 5)
const GOAL_READS_VS_PG = 0.3

/** The chaos section's runs (a short chaos run each, ~1 min) and the seed of the first (the others follow it) */
const CHAOS_RUNS = positiveInt(process.env.BENCH_CHAOS_RUNS, 1)
const CHAOS_SEED = positiveInt(process.env.BENCH_CHAOS_SEED, 1)

const BACKUP_ROWS = positiveInt(process.env.BENCH_BACKUP_ROWS, 100_000)
const GOAL_BACKUP = 0.25


/** Rows of the queries section (spread over five tables), and seconds per measured run */
const QUERY_ROWS = positiveInt(process.env.BENCH_QUERY_ROWS, 100_000)
const QUERY_SECONDS = positiveInt(process.env.BENCH_QUERY_SECONDS, 10)
const GOAL_QUERY = 0.5
/** How long the query skeleton may take to load the section's rows before it answers */
const QUERY_SKELETON_LOAD_MS = 180_000
/** PostgreSQL 15 as Debian installs it; the bench installs it (apt-get) when absent */

const ALL_SECTIONS = { singleNode, security, cluster, healing, readsById, queries, chaos, backup }
/** BENCH_ONLY=security,cluster runs only those sections (for work on one of them); BENCHMARKS.md is then not written */
const ONLY = process.env.BENCH_ONLY?.split(',').map(s => s.trim()).filter(s => s !== '')
const sections = ONLY === undefined ? Object.values(ALL_SECTIONS) : ONLY.map(name => {
  const section = ALL_SECTIONS[name]
  if (section === undefined) throw new Error(`BENCH_ONLY: no section ${name} (sections: ${Object.keys(ALL_SECTIONS).join(', ')})`)
  return section
})

async function main () {
  const ctx = context()
  const started = performance.now()
  let failed = false
  try {
    const parts = [`# Benchmarks\n\n${machineLine()}\n`]
    for (const section of sections) parts.push(await section(ctx))
    parts.push(`_Whole run: ${fmt((performance.now() - started) / 1000, 1)} s, \`npm run bench\`._\n`)
    const md = parts.join('\n')
    if (ONLY === undefined) await writeFile(join(ROOT, 'BENCHMARKS.md'), md)
    process.stdout.write(md)
  } catch (err) {
    failed = true
    process.stderr.write(`bench failed: ${err?.stack ?? err}\n`)
  } finally {
    await ctx.cleanup()
  }
  process.exitCode = failed ? 1 : 0
}

// ---------------------------------------------------------------------------
// Sections

/** One daemon on this machine against a bare fastify server and against raw LevelDB */
async function singleNode (ctx) {
  const loadStart = loadAvg()
  log('single node: starting the baseline fastify server and the daemon (default config: fsync on every group commit)')
  const base = await ctx.spawnBaseline()
  const daemon = await ctx.spawnDaemon()
  const row = samplePatient(0)
  const ids = []
  const insertPath = '/v1/tables/patient_records/rows'
  let inserted = 0
  const runs = {
    hello: () => ({ socket: base.socket, make: () => ({ method: 'GET', path: '/hello' }) }),
    echo: () => ({ socket: base.socket, make: () => ({ method: 'POST', path: '/echo', body: row }) }),
    insert: () => ({ socket: daemon.socket, make: () => ({ method: 'POST', path: insertPath, body: samplePatient(inserted++) }), onBody: body => { ids.push(JSON.parse(body).id) } }),
    get: () => {
      const known = ids.length
      let k = 0
      return { socket: daemon.socket, make: () => ({ method: 'GET', path: `${insertPath}/${ids[(k++ * 7919) % known]}` }) }
    }
  }
  for (const [name, run] of Object.entries(runs)) {
    log(`single node: warm-up, ${name}`)
    await drive({ ...run(), total: WARMUP })
  }
  // Rounds interleave the four runs, so a burst of load from elsewhere on the machine hits all of them alike.
  const results = Object.fromEntries(Object.keys(runs).map(k => [k, []]))
  for (let round = 1; round <= ROUNDS; round++) {
    for (const [name, run] of Object.entries(runs)) {
      log(`single node: round ${round}/${ROUNDS}, ${name}, ${REQUESTS} requests at ${CONCURRENCY} concurrent`)
      results[name].push(await drive({ ...run(), total: REQUESTS }))
    }
  }
  const { hello, echo, insert: inserts, get: gets } = Object.fromEntries(Object.entries(results).map(([k, v]) => [k, medianRun(v)]))
  const baseRss = await peakRssKb(base.proc.pid)
  await base.stop()

  log(`single node: bulk import of ${IMPORT_ROWS} patient_records rows`)
  const dir = await ctx.tempDir()
  const rows = Array.from({ length: IMPORT_ROWS }, (_, i) => samplePatient(1_000_000 + i))
  const ndjson = join(dir, 'patients.ndjson')
  await writeFile(ndjson, rows.map(r => JSON.stringify(r)).join('\n') + '\n')
  const imported = await importFile(daemon.socket, 'patient_records', ndjson)
  if (imported.report.accepted !== IMPORT_ROWS) {
    throw new Error(`import accepted ${imported.report.accepted} of ${IMPORT_ROWS} rows: ${JSON.stringify(imported.report.rejected.slice(0, 3))}`)
  }
  const daemonRss = await peakRssKb(daemon.proc.pid)
  await daemon.stop()

  log('single node: raw LevelDB batched puts of the same rows')
  const rawSync = medianRun(await repeat(ROUNDS, async () => await rawLevel(await ctx.tempDir(), rows, true)), 'rate')
  const rawNoSync = medianRun(await repeat(ROUNDS, async () => await rawLevel(await ctx.tempDir(), rows, false)), 'rate')

  const importRate = IMPORT_ROWS / imported.seconds
  const ratio = (a, b) => a / b
  const verdict = (r, goal) => `${fmt(r, 2)} ${r >= goal ? '✓' : '✗'} (goal ≥ ${goal})`
  const httpRow = (name, r, baseline, extra = '') =>
    `| ${name} | ${fmt(r.rps, 0)} | ${fmt(r.p50, 2)} | ${fmt(r.p99, 2)} | ${baseline === undefined ? '—' : verdict(ratio(r.rps, baseline.rps), GOAL_HTTP)}${extra} |`

  return `## Single node

HTTP over the Unix socket, ${CONCURRENCY} requests in flight, ${fmtInt(REQUESTS)} requests per run after ${fmtInt(WARMUP)} of warm-up; each figure is the median of ${ROUNDS} rounds (by requests/s).

| run | requests/s | p50 ms | p99 ms | ratio to GET hello-world |
| --- | ---: | ---: | ---: | --- |
| baseline: fastify GET hello-world | ${fmt(hello.rps, 0)} | ${fmt(hello.p50, 2)} | ${fmt(hello.p99, 2)} | 1 |
| baseline: fastify POST JSON echo of a patient row | ${fmt(echo.rps, 0)} | ${fmt(echo.p50, 2)} | ${fmt(echo.p99, 2)} | ${fmt(ratio(echo.rps, hello.rps), 2)} |
${httpRow('daemon: insert one patient_records row', inserts, hello, `; ${fmt(ratio(inserts.rps, echo.rps), 2)} of the POST echo`)}
${httpRow('daemon: get one row by id', gets, hello)}

| bulk load of ${fmtInt(IMPORT_ROWS)} patient_records rows | rows/s | seconds | ratio |
| --- | ---: | ---: | --- |
| raw LevelDB, batches of ${fmtInt(RAW_BATCH)}, sync | ${fmt(rawSync.rate, 0)} | ${fmt(rawSync.seconds, 2)} | 1 |
| raw LevelDB, batches of ${fmtInt(RAW_BATCH)}, no sync | ${fmt(rawNoSync.rate, 0)} | ${fmt(rawNoSync.seconds, 2)} | ${fmt(ratio(rawNoSync.rate, rawSync.rate), 2)} |
| daemon: \`POST /v1/tables/patient_records/import\` (NDJSON) | ${fmt(importRate, 0)} | ${fmt(imported.seconds, 2)} | ${verdict(ratio(importRate, rawSync.rate), GOAL_IMPORT)}; ${fmt(ratio(importRate, rawNoSync.rate), 2)} of no-sync |

| process | peak RSS (VmHWM) |
| --- | ---: |
| daemon, after all the runs above | ${fmtInt(Math.round(daemonRss / 1024))} MiB |
| baseline fastify server | ${fmtInt(Math.round(baseRss / 1024))} MiB |

Method. Both servers run as child processes on this machine and are driven from
this script's process with \`node:http\` over the Unix socket (an \`http.Agent\`
with keep-alive and ${CONCURRENCY} sockets, ${CONCURRENCY} workers each sending its
next request when the last one answered), so client cost is the same on both
sides. Latency is per request, from send to the end of the body. The daemon runs
\`bin/ntsoekhe daemon\` on a fresh temp home with its default config (\`storage.sync\`
true: every group commit is fsynced before a write is acknowledged) and
\`--listen /ip4/127.0.0.1/tcp/0 --log-level warn\`. Inserts send distinct rows and
let the daemon draw the ids; gets read ids from the inserted set in a scattered
order. The import streams an NDJSON file of ${fmtInt(IMPORT_ROWS)} rows in one request
and is timed until the report arrives; the raw baseline writes the same rows as
JSON values under their ids with \`level\` batches of ${fmtInt(RAW_BATCH)} (the
import endpoint's chunk size), with and without \`sync\`. The daemon does
more per row than the raw baseline: schema validation, id and key claim,
version, history and index entries in the same batch. Peak RSS is \`VmHWM\` from
\`/proc/<pid>/status\` at the end of each server's runs. The machine may be shared:
load average (1 / 5 / 15 min) ${loadStart} at the start of this section, ${loadAvg()} at its end.
`
}

/**
 * What security costs: single-row inserts and gets on a daemon with
 * authentication, access rules, encryption at rest and the audit trail,
 * against the same daemon with them off (`--security-off --test`), in
 * interleaved rounds
 */
async function security (ctx) {
  const loadStart = loadAvg()
  log('security: starting a daemon with security on and one with it off (--security-off --test)')
  const on = await ctx.spawnDaemon()
  const off = await ctx.spawnDaemon(['--security-off', '--test'])
  // A doctor, not the admin: every request goes through a clinical role's table and column rules.
  const agent = new Agent({ keepAlive: true })
  const made = await send(agent, on.socket, 'POST', '/v1/users', { user: 'dr.bench', role: 'doctor' })
  agent.destroy()
  if (made.status !== 201) throw new Error(`making the benchmark's doctor answered ${made.status}: ${made.body}`)
  TOKENS.set(on.socket, JSON.parse(made.body).token)
  TOKENS.delete(off.socket)
  const insertPath = '/v1/tables/patient_records/rows'
  const ids = { on: [], off: [] }
  let n = 0
  const inserts = d => () => ({ socket: d.socket, make: () => ({ method: 'POST', path: insertPath, body: samplePatient(n++) }), onBody: body => { ids[d === on ? 'on' : 'off'].push(JSON.parse(body).id) } })
  const gets = d => () => {
    const known = ids[d === on ? 'on' : 'off']
    let k = 0
    return { socket: d.socket, make: () => ({ method: 'GET', path: `${insertPath}/${known[(k++ * 7919) % known.length]}` }) }
  }
  // The ceiling of auditing every read on these components: bare reads of LevelDB over HTTP, with and without one synced audit record per read.
  const SKELETON_ROWS = 20_000
  const skeletons = { plain: await ctx.spawnAuditSkeleton('plain', SKELETON_ROWS), audited: await ctx.spawnAuditSkeleton('audited', SKELETON_ROWS) }
  const skeletonGets = sk => () => {
    let k = 0
    return { socket: sk.socket, make: () => ({ method: 'GET', path: `/r/${(k++ * 7919) % SKELETON_ROWS}` }) }
  }
  const skeletonWrites = sk => () => ({ socket: sk.socket, make: () => ({ method: 'POST', path: '/w', body: samplePatient(n++) }) })
  const runs = {
    insertOn: inserts(on),
    insertOff: inserts(off),
    getOn: gets(on),
    getOff: gets(off),
    skeletonWritePlain: skeletonWrites(skeletons.plain),
    skeletonWriteAudited: skeletonWrites(skeletons.audited),
    skeletonPlain: skeletonGets(skeletons.plain),
    skeletonAudited: skeletonGets(skeletons.audited)
  }
  for (const [name, run] of Object.entries(runs)) {
    log(`security: warm-up, ${name}`)
    await drive({ ...run(), total: SECURITY_WARMUP })
  }
  const results = Object.fromEntries(Object.keys(runs).map(k => [k, []]))
  for (let round = 1; round <= ROUNDS; round++) {
    for (const [name, run] of Object.entries(runs)) {
      log(`security: round ${round}/${ROUNDS}, ${name}, ${REQUESTS} requests at ${CONCURRENCY} concurrent`)
      results[name].push(await drive({ ...run(), total: REQUESTS }))
    }
  }
  const m = Object.fromEntries(Object.entries(results).map(([k, v]) => [k, medianRun(v)]))
  const status = await getJson(on.socket, '/v1/status')
  const audit = status.audit ?? {}
  await on.stop()
  await off.stop()
  await skeletons.plain.stop()
  await skeletons.audited.stop()
  const ceiling = m.skeletonAudited.rps / m.skeletonPlain.rps
  const writeCeiling = m.skeletonWriteAudited.rps / m.skeletonWritePlain.rps
  const verdict = r => `${fmt(r, 2)} ${r >= GOAL_SECURITY ? '✓' : '✗'} (goal ≥ ${GOAL_SECURITY})`
  const row = (name, r) => `| ${name} | ${fmt(r.rps, 0)} | ${fmt(r.p50, 2)} | ${fmt(r.p99, 2)} |`
  return `## Security on against off

Single-row inserts and gets of patient_records on one daemon with authentication
(a doctor's bearer token), access rules (the doctor's table and column rights),
encryption at rest (AES-256-GCM of the sensitive columns) and the audit trail (an
entry for every request, hash-chained, written in batches), against the same daemon
with all four off (\`daemon --security-off --test\`: no token, plaintext store, no
trail). Both run on fresh temp homes with the default config (fsync on); ${CONCURRENCY}
requests in flight, ${fmtInt(REQUESTS)} requests per run after ${fmtInt(SECURITY_WARMUP)} of
warm-up per run; the four runs are interleaved in ${ROUNDS} rounds and each figure is the
median round.

| run | requests/s | p50 ms | p99 ms |
| --- | ---: | ---: | ---: |
${row('insert, security on', m.insertOn)}
${row('insert, security off', m.insertOff)}
${row('get, security on', m.getOn)}
${row('get, security off', m.getOff)}
${row('ceiling: bare synced LevelDB write over HTTP', m.skeletonWritePlain)}
${row('ceiling: the same, plus one synced audit record per write', m.skeletonWriteAudited)}
${row('ceiling: bare LevelDB read over HTTP', m.skeletonPlain)}
${row('ceiling: the same, plus one synced audit record per read', m.skeletonAudited)}

| ratio on / off | |
| --- | --- |
| inserts | ${verdict(m.insertOn.rps / m.insertOff.rps)}; ${fmt((m.insertOn.rps / m.insertOff.rps) / writeCeiling, 2)} of the ceiling's ratio |
| gets | ${verdict(m.getOn.rps / m.getOff.rps)}; ${fmt((m.getOn.rps / m.getOff.rps) / ceiling, 2)} of the ceiling's ratio |
| ceiling: writes with an audit record / without | ${fmt(writeCeiling, 2)} |
| ceiling: reads with an audit record / without | ${fmt(ceiling, 2)} |

The ceiling (\`test/bench/audit-skeleton.js\`) is a read and write path with nothing
of the database in it (node:http on the Unix socket, one LevelDB get, or one put
through a synced group commit; no tokens, rules or encryption), run bare and with one
audit record per request (hash-chained, about the trail's size, buffered and written
every 50 ms in one synced batch). Its ratios bound what any design that durably
records every request reaches against requests that record nothing, on these
components and this machine.

The daemon with security on recorded ${fmtInt(audit.recorded ?? 0)} audit entries, wrote ${fmtInt(audit.written ?? 0)}
(${fmtInt(audit.pending ?? 0)} pending, ${fmtInt(audit.dropped ?? 0)} dropped) by the end of the runs.
Load average (1 / 5 / 15 min) ${loadStart} at the start of this section, ${loadAvg()} at its end.
`
}

/** Three daemons on loopback (N=3, W=2, R=2), clients spread over them, against OrbitDB 4 */
async function cluster (ctx) {
  const loadStart = loadAvg()
  log(`cluster: starting ${CLUSTER_SIZE} daemons (N=3, W=2, R=2, fsync on)`)
  const nodes = await startNetwork(ctx)
  const sockets = nodes.map(n => n.socket)
  const insertPath = '/v1/tables/patient_records/rows'
  const ids = []
  let inserted = 2_000_000
  const writes = () => ({ make: i => ({ socket: sockets[i % sockets.length], method: 'POST', path: insertPath, body: samplePatient(inserted++) }), onBody: body => { ids.push(JSON.parse(body).id) } })
  log(`cluster: warm-up, ${CLUSTER_WARMUP} single-row writes`)
  await drive({ ...writes(), socket: sockets[0], total: CLUSTER_WARMUP })
  const writeRuns = []
  for (let round = 1; round <= ROUNDS; round++) {
    log(`cluster: round ${round}/${ROUNDS}, ${CLUSTER_REQUESTS} single-row writes at ${CONCURRENCY} concurrent, spread over the nodes`)
    writeRuns.push(await drive({ ...writes(), socket: sockets[0], total: CLUSTER_REQUESTS }))
  }
  const peakWrites = medianRun(writeRuns)
  const readRuns = []
  for (let round = 1; round <= ROUNDS; round++) {
    log(`cluster: round ${round}/${ROUNDS}, ${CLUSTER_REQUESTS} reads at ${CONCURRENCY} concurrent`)
    let k = 0
    readRuns.push(await drive({ socket: sockets[0], total: CLUSTER_REQUESTS, make: i => ({ socket: sockets[i % sockets.length], method: 'GET', path: `${insertPath}/${ids[(k++ * 7919) % ids.length]}` }) }))
  }
  const reads = medianRun(readRuns)
  const halfRate = peakWrites.rps / 2
  const pacedRuns = []
  for (let round = 1; round <= ROUNDS; round++) {
    log(`cluster: round ${round}/${ROUNDS}, writes paced at half the peak, ${fmtInt(halfRate)}/s for 5 s`)
    pacedRuns.push(await drivePaced({ rate: halfRate, seconds: 5, make: writes().make }))
  }
  // The round with the median p99: one 5 s run's tail moves with whatever else the disk was doing
  const paced = [...pacedRuns].sort((x, y) => x.p99 - y.p99)[Math.floor(pacedRuns.length / 2)]
  const pacedSent = pacedRuns.reduce((sum, r) => sum + r.sent, 0)

  log(`cluster: bulk import of ${CLUSTER_IMPORT_ROWS} rows through one node`)
  const dir = await ctx.tempDir()
  const ndjson = join(dir, 'cluster.ndjson')
  await writeFile(ndjson, Array.from({ length: CLUSTER_IMPORT_ROWS }, (_, i) => JSON.stringify(samplePatient(3_000_000 + i))).join('\n') + '\n')
  const imported = await importFile(sockets[1], 'patient_records', ndjson)
  if (imported.report.accepted !== CLUSTER_IMPORT_ROWS) throw new Error(`cluster import accepted ${imported.report.accepted} of ${CLUSTER_IMPORT_ROWS}`)
  // A write is answered once W=2 owners have it: the third copies of the last writes may still be on
  // their way. Wait (bounded) until every row is on its 3 owners, and say how long that took.
  const written = ids.length + pacedSent + CLUSTER_IMPORT_ROWS
  const expectedCopies = written * CLUSTER_SIZE
  const countCopies = async () => (await Promise.all(nodes.map(async n => (await getJson(n.socket, '/v1/ring')).localRows.patient_records ?? 0))).reduce((a, b) => a + b, 0)
  const settleStart = performance.now()
  let copies = await countCopies()
  const copiesAtAnswer = copies
  while (copies < expectedCopies && performance.now() - settleStart < 30_000) {
    await sleep(200)
    copies = await countCopies()
  }
  const settleMs = performance.now() - settleStart
  const rss = await Promise.all(nodes.map(async n => await peakRssKb(n.proc.pid)))
  for (const n of nodes) await n.stop()

  const ceiling = {}
  for (const mode of ['primary', 'local']) {
    log(`cluster: the skeleton write path, a ceiling (${mode}), ${CLUSTER_WARMUP} writes of warm-up and ${ROUNDS} rounds`)
    ceiling[mode] = await skeletonRuns(ctx, mode, samplePatient)
  }

  log(`cluster: OrbitDB 4, ${ORBITDB_ROWS} rows replicated between two local peers (test/bench/orbitdb)`)
  const orbit = await runOrbitDb()
  const importRate = CLUSTER_IMPORT_ROWS / imported.seconds
  const ratioToOrbit = (rate) => orbit === undefined ? '—' : `${fmt(rate / orbit.replicatedRowsPerSec, 0)}× (a ceiling, not a product figure)`
  const vsOrbit = (rate) => orbit === undefined ? '—' : `${fmt(rate / orbit.replicatedRowsPerSec, 0)}× ${rate / orbit.replicatedRowsPerSec >= GOAL_ORBITDB ? '✓' : '✗'}`
  const orbitRow = orbit === undefined
    ? '| OrbitDB 4: could not run (see the log) | — | — | — | — |'
    : `| OrbitDB ${orbit.version}: rows replicated A → B (\`put\` awaited one at a time, measured until B holds all ${orbit.rows}) | ${fmt(orbit.replicatedRowsPerSec, 0)} | ${fmt(orbit.writeP50Ms, 2)} (local put) | ${fmt(orbit.writeP99Ms, 2)} (local put) | 1 |`
  return `## Cluster: ${CLUSTER_SIZE} nodes on loopback

Three \`ntsoekhe daemon\` processes on 127.0.0.1 (TCP + Noise + yamux), default
N=3, W=2, R=2, fsync on. ${CONCURRENCY} clients spread round-robin over the three
sockets; a write is acknowledged after two replicas have it on disk; a read asks
two replicas. Median of ${ROUNDS} rounds of ${fmtInt(CLUSTER_REQUESTS)} requests, after
${fmtInt(CLUSTER_WARMUP)} writes of warm-up (a daemon's write rate climbs for about
15,000 writes after start, as V8 optimizes the hot paths).

| run | rows/s | p50 ms | p99 ms | ratio to OrbitDB (goal ≥ ${GOAL_ORBITDB}×) |
| --- | ---: | ---: | ---: | --- |
${orbitRow}
| ntsoekhe: single-row inserts, ${CONCURRENCY} in flight | ${fmt(peakWrites.rps, 0)} | ${fmt(peakWrites.p50, 2)} | ${fmt(peakWrites.p99, 2)} | ${vsOrbit(peakWrites.rps)} |
| ntsoekhe: bulk import (NDJSON, one request, rows written in groups) | ${fmt(importRate, 0)} | — | — | ${vsOrbit(importRate)} |
| ntsoekhe: reads by id (R=2) | ${fmt(reads.rps, 0)} | ${fmt(reads.p50, 2)} | ${fmt(reads.p99, 2)} | — |
| ceiling: the skeleton write path, via the primary, ${CONCURRENCY} in flight | ${fmt(ceiling.primary.rps, 0)} | ${fmt(ceiling.primary.p50, 2)} | ${fmt(ceiling.primary.p99, 2)} | ${ratioToOrbit(ceiling.primary.rps)} |
| ceiling: the skeleton write path, coordinated where it arrives | ${fmt(ceiling.local.rps, 0)} | ${fmt(ceiling.local.p50, 2)} | ${fmt(ceiling.local.p99, 2)} | ${ratioToOrbit(ceiling.local.rps)} |

The two ceiling rows run \`test/bench/skeleton.js\`: three processes on the same
components and durability as the daemons (HTTP on a Unix socket, libp2p TCP +
Noise + yamux with the product's RPC layer, LevelDB group commits with fsync;
3 copies, answered at 2) that do nothing else: no schema, versions, history,
indexes or locks, one LevelDB put per copy, and whatever is bound for one peer
in one turn of the event loop sent as one request. They bound this write path,
one row per client request, on these components and this machine: the daemons
do all of it and the database's work besides. (Rows sent many per request, as
the bulk import does, are not bound by it.) Single-row inserts ran at
${fmt(peakWrites.rps / ceiling.primary.rps, 2)} of the ceiling with the same hops, ${fmt(peakWrites.rps / ceiling.local.rps, 2)} of the ceiling without the hop to the primary.

Writes paced at half the peak rate (${fmtInt(halfRate)}/s offered for 5 s, ${ROUNDS} rounds of ${fmtInt(paced.sent)} writes): the round with the
median p99 achieved ${fmt(paced.rps, 0)}/s, p50 ${fmt(paced.p50, 2)} ms, p99 ${fmt(paced.p99, 2)} ms — ${paced.p99 < GOAL_P99_MS ? '✓' : '✗'} (goal p99 < ${GOAL_P99_MS} ms);
p99 of each round: ${pacedRuns.map(r => `${fmt(r.p99, 2)} ms`).join(', ')}.

When the import was answered the three nodes held ${fmtInt(copiesAtAnswer)} patient_records rows between them
(a write is answered once 2 of its 3 owners have it)${copies === copiesAtAnswer ? '' : `; ${fmt(settleMs / 1000, 1)} s later they held ${fmtInt(copies)}`}.
Every row written in this section (${fmtInt(written)}) on exactly 3 nodes would be ${fmtInt(expectedCopies)}${copies === expectedCopies ? ' ✓' : ' ✗'}.

| process | peak RSS (VmHWM) |
| --- | ---: |
${rss.map((kb, i) => `| node ${i + 1} | ${fmtInt(Math.round(kb / 1024))} MiB |`).join('\n')}
${orbit === undefined ? '' : `| OrbitDB peer (larger of the two) | ${fmtInt(orbit.rssMB)} MiB |`}

Method. OrbitDB runs from \`test/bench/orbitdb\` (its own package.json, installed on
first use) as two processes on loopback, A writing ${orbit?.rows ?? ORBITDB_ROWS} documents one awaited \`put\`
at a time and B replicating; its figure is the rate at which rows become present
on B (OrbitDB has no write quorum: a put returns once stored locally). Its gets
scan the log (${orbit === undefined ? '—' : `p50 ${fmt(orbit.getP50Ms, 1)} ms at ${orbit.rows} rows`}), so reads are not compared. The
paced run offers writes at a fixed rate (open loop, up to 256 in flight) and
measures each from its scheduled send time. All processes share this machine's
${cpus().length} cores. Load average ${loadStart} at the start of this section, ${loadAvg()} at its end.
`
}

/**
 * Reads by id at the default consistency on a 3-node network against
 * PostgreSQL 15 selecting by primary key on a primary with two synchronous
 * standbys, the same rows in both, 32 clients each
 */
async function readsById (ctx) {
  const loadStart = loadAvg()
  const { TABLES } = await import(join(ROOT, 'dist', 'schema', 'index.js'))
  const patients = TABLES.find(t => t.name === 'patient_records')
  const rows = Array.from({ length: PG_ROWS }, (_, i) => ({ patient_id: i + 1, ...samplePatient(i + 1) }))

  log(`reads: PostgreSQL 15, a primary and two synchronous standbys, ${fmtInt(PG_ROWS)} patient_records rows`)
  const pg = await startPostgres({ log })
  let pgRuns
  try {
    await pg.psql(createTablesSql([patients]))
    await pg.copy('patient_records', patients.columns.map(c => c.name), rows)
    await pg.psql('ANALYZE patient_records')
    const script = `\\set id random(1, ${PG_ROWS})\nSELECT * FROM patient_records WHERE patient_id = :id;\n`
    pgRuns = []
    for (let round = 1; round <= ROUNDS; round++) {
      log(`reads: pgbench round ${round}/${ROUNDS}, selects by primary key at ${CONCURRENCY} clients for ${PG_SECONDS} s`)
      pgRuns.push({ rps: await pg.pgbench(script, { clients: CONCURRENCY, seconds: PG_SECONDS }) })
    }
  } finally {
    await pg.stop()
  }
  const pgReads = medianRun(pgRuns)

  log(`reads: ${CLUSTER_SIZE} daemons (N=3, W=2, R=2), the same ${fmtInt(PG_ROWS)} rows imported through one node`)
  const nodes = await startNetwork(ctx)
  const sockets = nodes.map(n => n.socket)
  const dir = await ctx.tempDir()
  const ndjson = join(dir, 'reads.ndjson')
  await writeFile(ndjson, rows.map(r => JSON.stringify(r)).join('\n') + '\n')
  const imported = await importFile(sockets[0], 'patient_records', ndjson)
  if (imported.report.accepted !== PG_ROWS) throw new Error(`reads: the import accepted ${imported.report.accepted} of ${PG_ROWS} rows`)
  const path = id => `/v1/tables/patient_records/rows/${id}`
  log(`reads: warm-up, ${fmtInt(CLUSTER_WARMUP)} reads`)
  await drive({ socket: sockets[0], total: CLUSTER_WARMUP, make: i => ({ socket: sockets[i % sockets.length], method: 'GET', path: path(1 + ((i * 7919) % PG_ROWS)) }) })
  const runs = []
  for (let round = 1; round <= ROUNDS; round++) {
    log(`reads: round ${round}/${ROUNDS}, ${fmtInt(CLUSTER_REQUESTS)} reads by id at ${CONCURRENCY} concurrent, spread over the nodes`)
    runs.push(await drive({ socket: sockets[0], total: CLUSTER_REQUESTS, make: i => ({ socket: sockets[i % sockets.length], method: 'GET', path: path(1 + ((i * 104729 + round) % PG_ROWS)) }) }))
  }
  for (const n of nodes) await n.stop()
  const reads = medianRun(runs)
  const ratio = reads.rps / pgReads.rps

  log(`reads: the skeleton read path, a ceiling: ${fmtInt(CLUSTER_WARMUP)} writes, then reads without and with an audit record each`)
  const ceiling = await skeletonReads(ctx)
  return `## Reads by id against PostgreSQL

The same ${fmtInt(PG_ROWS)} patient_records rows in a 3-node network (N=3, W=2, R=2,
fsync on, security on: every read checks a token and is audited) and in
PostgreSQL 15 (Debian's package) run as a primary with two synchronous standbys
on Unix sockets in a temp dir (\`synchronous_standby_names = 'ANY 1 (s1, s2)'\`,
fsync on), selected by primary key at ${CONCURRENCY} clients: pgbench (\`-M prepared\`,
${ROUNDS} rounds of ${PG_SECONDS} s) against the primary, and ${ROUNDS} rounds of
${fmtInt(CLUSTER_REQUESTS)} \`GET /v1/tables/patient_records/rows/<id>\` spread over the
three sockets at the default consistency (\`quorum\`). Medians.

| run | reads/s | p50 ms | p99 ms |
| --- | ---: | ---: | ---: |
| PostgreSQL 15 primary, selects by primary key | ${fmt(pgReads.rps, 0)} | — | — |
| ntsoekhe, reads by id at \`quorum\` | ${fmt(reads.rps, 0)} | ${fmt(reads.p50, 2)} | ${fmt(reads.p99, 2)} |
| ceiling: the skeleton read path (local copy + one other's over RPC) | ${fmt(ceiling.plain.rps, 0)} | ${fmt(ceiling.plain.p50, 2)} | ${fmt(ceiling.plain.p99, 2)} |
| ceiling: the same, with one audit record a read (50 ms synced batches at 2 of 3) | ${fmt(ceiling.audited.rps, 0)} | ${fmt(ceiling.audited.p50, 2)} | ${fmt(ceiling.audited.p99, 2)} |

Ratio to PostgreSQL: ${fmt(ratio, 2)} ${ratio >= GOAL_READS_VS_PG ? '✓' : '✗'} (goal ≥ ${GOAL_READS_VS_PG}). The ceilings run \`test/bench/skeleton.js\`:
three processes doing only what a read by id needs on the same components (HTTP on a
Unix socket, LevelDB, libp2p TCP + Noise + yamux with the product's RPC layer):
without the audit record they reach ${fmt(ceiling.plain.rps / pgReads.rps, 2)} of PostgreSQL, with it ${fmt(ceiling.audited.rps / pgReads.rps, 2)}.
The daemons' reads ran at ${fmt(reads.rps / ceiling.audited.rps, 2)} of the audited ceiling. All processes share this
machine's ${cpus().length} cores. Load average ${loadStart} at the start of this section, ${loadAvg()} at its end.
`
}

/**
 * Healing: the rate at which a joining node receives its share against a raw
 * libp2p stream, one anti-entropy round with 1% of a node's records
 * differing, and a row's record size and write cost after many updates
 */
async function healing (ctx) {
  const loadStart = loadAvg()
  const insertPath = '/v1/tables/patient_records/rows'
  // Members are marked down (and leave the ring, which moves records) only after 10 min here: the
  // anti-entropy part stops and restarts the whole network and must find the same ring afterwards.
  const config = { membership: { downAfterMs: 600_000 } }
  const ports = await Promise.all(Array.from({ length: CLUSTER_SIZE }, freePort))
  log(`healing: starting ${CLUSTER_SIZE} daemons on fixed loopback ports`)
  const first = await ctx.spawnDaemon([], { port: ports[0], config })
  const { invite } = await getJson(first.socket, '/v1/invite')
  const nodes = [first]
  for (let i = 1; i < CLUSTER_SIZE; i++) {
    const home = await ctx.tempDir()
    nodes.push(await ctx.spawnDaemon(['--join', invite], { home, port: ports[i], config }))
  }
  await waitAlive(nodes, CLUSTER_SIZE)

  log(`healing: importing ${HEAL_ROWS} rows through node 1`)
  const dir = await ctx.tempDir()
  const ndjson = join(dir, 'heal.ndjson')
  const lines = Array.from({ length: HEAL_ROWS }, (_, i) => JSON.stringify(samplePatient(4_000_000 + i)))
  const jsonBytes = lines.reduce((n, l) => n + Buffer.byteLength(l), 0)
  await writeFile(ndjson, lines.join('\n') + '\n')
  const imported = await importFile(first.socket, 'patient_records', ndjson)
  if (imported.report.accepted !== HEAL_ROWS) throw new Error(`import accepted ${imported.report.accepted} of ${HEAL_ROWS}`)
  const localRows = async n => (await getJson(n.socket, '/v1/ring')).localRows.patient_records ?? 0
  await waitFor(async () => (await Promise.all(nodes.map(localRows))).every(c => c === HEAL_ROWS), 60_000, `every node to hold all ${HEAL_ROWS} rows`)

  // (2) Anti-entropy. Node 3 is stopped; 1% of the rows are updated through node 1 (nodes 1 and 2
  // keep hints for node 3); then nodes 1 and 2 are stopped and their hints deleted from their stores,
  // as if lost; all three start again and node 3 runs one round.
  const differ = Math.max(1, Math.round(HEAL_ROWS * HEAL_DIFFER))
  const ids = []
  let cursor
  while (ids.length < differ) {
    const page = await getJson(first.socket, `${insertPath}?limit=1000${cursor === undefined ? '' : `&cursor=${encodeURIComponent(cursor)}`}`)
    ids.push(...page.rows.map(r => r.patient_id))
    if (page.next == null) break
    cursor = page.next
  }
  if (ids.length < differ) throw new Error(`listed ${ids.length} rows, wanted ${differ}`)
  ids.length = differ
  const homes = nodes.map(n => n.home)
  log(`healing: anti-entropy: node 3 stopped, ${differ} rows updated through node 1`)
  await nodes[2].stop()
  await drive({ socket: first.socket, total: differ, make: i => ({ method: 'PATCH', path: `${insertPath}/${ids[i]}`, body: { allergies: `Updated ${i}` } }) })
  const hintsBefore = (await Promise.all(nodes.slice(0, 2).map(async n => (await getJson(n.socket, '/v1/status')).replication.pendingHints))).reduce((a, b) => a + b, 0)
  await nodes[0].stop()
  await nodes[1].stop()
  const { Level } = await import('level')
  for (const home of homes.slice(0, 2)) {
    const db = new Level(join(home, 'store'), { valueEncoding: 'json' })
    await db.open()
    await db.sublevel('x', { valueEncoding: 'json' }).clear()
    await db.close()
  }
  log('healing: anti-entropy: hints deleted on nodes 1 and 2; restarting the three')
  for (let i = 0; i < CLUSTER_SIZE; i++) nodes[i] = await ctx.spawnDaemon([], { home: homes[i], port: ports[i] })
  await waitAlive(nodes, CLUSTER_SIZE)
  const stale = (await Promise.all(ids.slice(0, 200).map(async id => (await getJson(nodes[2].socket, `${insertPath}/${id}?local=true`)).row.allergies))).filter(a => !a.startsWith('Updated')).length
  log('healing: anti-entropy: POST /v1/repair on node 3')
  const agent = new Agent({ keepAlive: false })
  const repairStart = performance.now()
  const repairRes = await send(agent, nodes[2].socket, 'POST', '/v1/repair')
  const repairWall = (performance.now() - repairStart) / 1000
  if (repairRes.status !== 200) throw new Error(`POST /v1/repair answered ${repairRes.status}: ${repairRes.body}`)
  const repair = JSON.parse(repairRes.body)
  // One read at a time: a thousand at once overflow the socket's accept queue (EAGAIN).
  let staleAfter = 0
  for (const id of ids) if (!(await getJson(nodes[2].socket, `${insertPath}/${id}?local=true`)).row.allergies.startsWith('Updated')) staleAfter++

  // (1) A fourth node joins the network holding the rows; its share (N=3 of 4 members: about 3/4 of
  // the rows) arrives by rebalance. Timed from the last poll that saw none to the last that saw more.
  log('healing: join: starting a fourth node')
  const joiner = await ctx.spawnDaemon(['--join', invite])
  const all = [...nodes, joiner]
  // Its first seconds it may not know the network's users yet (the token is refused): wait, bounded, for it to.
  const knows = Date.now() + START_TIMEOUT
  for (;;) {
    const res = await send(new Agent(), joiner.socket, 'GET', '/v1/status')
    if (res.status === 200) break
    if (Date.now() > knows) throw new Error(`the joining node still answers ${res.status} after ${START_TIMEOUT} ms: ${res.body}`)
    await sleep(100)
  }
  const joinStart = performance.now()
  let zeroAt = joinStart
  let changedAt = joinStart
  let received = 0
  for (;;) {
    const st = await getJson(joiner.socket, '/v1/status')
    const now = performance.now()
    const count = st.storage.rows.patient_records ?? 0
    if (count === 0) zeroAt = now
    if (count !== received) { received = count; changedAt = now }
    if (received > 0 && now - changedAt > 3000) {
      const pending = await Promise.all(all.map(async n => (await getJson(n.socket, '/v1/status')).replication.rebalance.pending))
      if (pending.every(p => !p)) break
    }
    if (now - joinStart > 180_000) throw new Error(`join: the fourth node held ${received} rows after 180 s and was still receiving`)
    await sleep(100)
  }
  const joinSeconds = (changedAt - zeroAt) / 1000
  const joinRate = received / joinSeconds
  const joinBytes = Math.round(received * jsonBytes / HEAL_ROWS)
  const rss = await Promise.all(all.map(async n => await peakRssKb(n.proc.pid)))
  for (const n of all) await n.stop()
  log(`healing: raw stream of ${joinBytes} bytes between two libp2p nodes, ${ROUNDS} rounds`)
  const receiver = await ctx.spawnStreamReceiver()
  const streams = []
  for (let r = 0; r < ROUNDS; r++) {
    const s = await ctx.streamTo(receiver, joinBytes)
    streams.push({ ...s, rate: received / s.seconds })
  }
  await receiver.stop()
  const stream = medianRun(streams, 'rate')
  // The ceiling: the same records on a skeleton of the join's path (test/bench/join-skeleton.js), a fresh receiver each round.
  log(`healing: join skeleton: ${received} records over one libp2p stream into LevelDB, ${ROUNDS} rounds`)
  const skeletons = []
  for (let r = 0; r < ROUNDS; r++) {
    const sink = await ctx.spawnJoinSkeleton()
    const s = await ctx.joinSkeletonTo(sink, ndjson, received)
    await sink.stop()
    skeletons.push({ ...s, rate: s.records / s.seconds })
  }
  const skeleton = medianRun(skeletons, 'rate')

  // (3) One row updated HEAL_UPDATES times, one at a time, on one daemon; another row updated once.
  log(`healing: record size: one row updated ${HEAL_UPDATES} times on one daemon`)
  const single = await ctx.spawnDaemon()
  const made = []
  for (const i of [0, 1]) {
    const res = await send(agent, single.socket, 'POST', insertPath, samplePatient(5_000_000 + i))
    if (res.status !== 201) throw new Error(`insert answered ${res.status}: ${res.body}`)
    made.push(JSON.parse(res.body).id)
  }
  const [hot, once] = made
  const patch = async (id, k) => {
    const t0 = performance.now()
    const res = await send(agent, single.socket, 'PATCH', `${insertPath}/${id}`, { allergies: `Revision ${k}` })
    if (res.status >= 400) throw new Error(`PATCH answered ${res.status}: ${res.body}`)
    return performance.now() - t0
  }
  await patch(once, 1)
  const costs = []
  for (let k = 1; k <= HEAL_UPDATES; k++) costs.push(await patch(hot, k))
  const window = Math.min(100, Math.floor(HEAL_UPDATES / 2))
  const mean = xs => xs.reduce((a, b) => a + b, 0) / xs.length
  const firstCost = mean(costs.slice(0, window))
  const lastCost = mean(costs.slice(-window))
  await single.stop()
  const sizes = await recordSizes(join(single.home, 'store'), [hot, once])
  const sizeRatio = sizes[hot] / sizes[once]
  const costRatio = lastCost / firstCost
  const within = (r, goal) => `${fmt(r, 2)}× ${r <= goal ? '✓' : '✗'} (goal within ${goal}×)`
  const joinRatio = joinRate / stream.rate
  const skeletonRatio = joinRate / skeleton.rate

  return `## Healing

Three \`ntsoekhe daemon\` processes on loopback (N=3, W=2, R=2, fsync on) holding
${fmtInt(HEAL_ROWS)} patient_records rows (imported through one node in ${fmt(imported.seconds, 1)} s), then:

| measurement | figure | against | ratio |
| --- | ---: | ---: | --- |
| a fourth node joins: rows/s at which it receives its share (${fmtInt(received)} rows in ${fmt(joinSeconds, 1)} s) | ${fmt(joinRate, 0)} | raw one-way libp2p stream of the same ${fmt(joinBytes / 2 ** 20, 1)} MiB: ${fmt(stream.rate, 0)} rows/s (${fmt(joinBytes / stream.seconds / 2 ** 20, 1)} MiB/s) | ${fmt(joinRatio, 3)} ${joinRatio >= GOAL_JOIN ? '✓' : '✗'} (goal ≥ ${GOAL_JOIN}) |
| the same join against a skeleton of its path (records in their wire form over one stream, written to LevelDB) | ${fmt(joinRate, 0)} | the skeleton: ${fmt(skeleton.rate, 0)} rows/s (${fmt(skeleton.bytes / skeleton.seconds / 2 ** 20, 1)} MiB/s of messages); ${fmt(skeleton.rate / stream.rate, 3)} of the raw stream | ${fmt(skeletonRatio, 2)} |
| anti-entropy round on a node with ${fmtInt(differ)} of ${fmtInt(HEAL_ROWS)} records (${fmt(HEAL_DIFFER * 100, 0)}%) stale | ${fmt(repair.seconds, 2)} s | ${fmtInt(repair.ranges)} ranges, ${fmtInt(repair.recordsCompared)} records compared, ${fmtInt(repair.recordsSent)} sent; ${fmt(repairWall, 2)} s as the client saw it | — |
| time from heal to convergence in the chaos suite | see *Chaos: heal to convergence* below | — | — |
| record size of a row after ${fmtInt(HEAL_UPDATES)} updates | ${fmtInt(sizes[hot])} B | after its first update: ${fmtInt(sizes[once])} B | ${within(sizeRatio, GOAL_RECORD)} |
| write cost: mean of the last ${window} of ${fmtInt(HEAL_UPDATES)} updates of that row | ${fmt(lastCost, 2)} ms | mean of its first ${window}: ${fmt(firstCost, 2)} ms | ${within(costRatio, GOAL_RECORD)} |

Method. *Join*: the fourth daemon starts with \`--join\` on a fresh home; two seconds
after the ring changes (\`replication.rebalanceDelayMs\`) the old owners send it
the records it now owns. This script polls its \`status\` (\`storage.rows\`) every
100 ms; the time runs from the last poll that saw no row to the last that saw the
count grow, once it held still for 3 s with no rebalance pending on any node. The
baseline (\`test/bench/stream.js\`) is two processes on the product's libp2p stack
(\`createNode\`: TCP, a network key, Noise, yamux) with one stream carrying as many
bytes as the JSON of the rows received (${fmt(jsonBytes / HEAL_ROWS, 0)} B a row; a record on the wire
carries its version and history besides), median of ${ROUNDS} rounds, expressed in rows/s.
The ceiling (\`test/bench/join-skeleton.js\`) is the join's path with nothing of the
database in it, on the same components: one process builds the ${fmtInt(received)} rows (the
same rows, ${fmt(skeleton.bytes / skeleton.records, 0)} B a record on the wire) as the \`records\` messages a
rebalance sends (each record's state, heads and version lists; 512 records a message,
4 in flight) and sends them over one stream of the product's RPC on \`createNode\`;
the other, on a fresh LevelDB, decodes each message and writes, through the
store's group commit (fsync), one batch of the keys the store writes for a record
it receives (the record, its other versions, the table list entry, its equality
and ordered index entries), answering once it is durable. No validation, no
encryption of rows or index values, no locks or reads of what is held, no range
summary, no \`holds\` questions and no copies dropped on the sender; median of ${ROUNDS} rounds.
*Anti-entropy*: node 3 was stopped, ${fmtInt(differ)} rows updated through node 1 (the others
keep hints for node 3: ${fmtInt(hintsBefore)} were pending, audit entries included), nodes 1 and 2 stopped and their
hints deleted from their stores (as if lost), all three started again on the same
homes and ports (\`membership.downAfterMs\` 10 min here, so the ring never changed),
and \`POST /v1/repair\` sent to node 3. Before it, ${stale} of the first ${Math.min(200, differ)} updated rows
read with \`?local=true\` on node 3 were stale; after it, ${staleAfter} of ${fmtInt(differ)}. Its \`seconds\`
are the daemon's own; records move under \`replication.syncBandwidthMbps\` (10 by default).
*Record size*: a fresh daemon, one row updated ${fmtInt(HEAL_UPDATES)} times with PATCH, one at a time
over the socket, another updated once; after a clean stop this script opens the
store with \`level\` and takes the length of each record's stored JSON value (the
record, not its history entries). Peak RSS of the four cluster daemons (VmHWM):
${rss.map(kb => `${fmtInt(Math.round(kb / 1024))}`).join(' / ')} MiB. Load average ${loadStart} at the start of this section, ${loadAvg()} at its end.
`
}

/**
 * The time from heal to convergence in the chaos suite (test/chaos/chaos.js):
 * short runs on fixed seeds, each its own daemons, namespaces and cleanup.
 */
async function chaos () {
  const { runChaos } = await import('../chaos/chaos.js')
  const loadStart = loadAvg()
  const runs = []
  for (let k = 0; k < CHAOS_RUNS; k++) {
    const seed = CHAOS_SEED + k
    log(`chaos: short run, seed ${seed}`)
    const lines = []
    const r = await runChaos({ profile: 'short', seed, log: line => { lines.push(line); log(line) } })
    if (!r.ok) throw new Error(`the chaos run on seed ${seed} failed:\n${lines.join('\n')}`)
    runs.push({ seed, ...r, mode: lines[0]?.includes('network namespace') === true ? 'a network namespace per daemon' : 'loopback' })
  }
  return `## Chaos: heal to convergence

| measure | value | runs |
|---|---|---|
| time from heal to convergence, short chaos run (median) | ${fmt(medianRun(runs, 'convergedSeconds').convergedSeconds, 1)} s | ${runs.map(r => `seed ${r.seed}: ${fmt(r.convergedSeconds, 1)} s`).join(', ')} |
| acknowledged writes (sets / register / batch), lost | ${runs.map(r => r.results.map(w => fmtInt(w.acked)).join(' / ')).join('; ')} | lost ${runs.reduce((n, r) => n + r.results.reduce((m, w) => m + w.lost, 0), 0)} |

Method. \`runChaos({ profile: 'short' })\` of the chaos suite (\`npm run chaos -- --short --seed <n>\`):
four daemons (${runs[0]?.mode}), sets, register and batch workloads for 25 s under kill -9,
a partition, SIGSTOP and a full disk, one node's clock skewed all along, and last one node
cut off while writes go on (a few seconds). The time runs
from the heal (links restored, paused daemons resumed, killed ones restarted) until the
checker finds every member alive, no hints, no rebalance pending, every record on exactly
its owners with equal heads and every range summary equal to its records'; meanwhile
it asks every node for an anti-entropy round (\`POST /v1/repair\`) every half second
or so. Load average ${loadStart} at the start of this section, ${loadAvg()} at its end.
`
}

/**
 * `ntsoekhe backup` of a daemon holding BACKUP_ROWS patient rows and
 * `ntsoekhe restore` of it into a new daemon, against a raw LevelDB read and
 * a raw LevelDB write of the same rows in this run; the backup's size against
 * the store's
 */
async function backup (ctx) {
  const loadStart = loadAvg()
  log('backup: starting a daemon (security on, default config)')
  const source = await ctx.spawnDaemon()
  const dir = await ctx.tempDir()
  const rows = Array.from({ length: BACKUP_ROWS }, (_, i) => ({ patient_id: 6_000_000 + i, ...samplePatient(6_000_000 + i) }))
  const ndjson = join(dir, 'backup.ndjson')
  await writeFile(ndjson, rows.map(r => JSON.stringify(r)).join('\n') + '\n')
  log(`backup: importing ${BACKUP_ROWS} rows`)
  const imported = await importFile(source.socket, 'patient_records', ndjson)
  if (imported.report.accepted !== BACKUP_ROWS) throw new Error(`import accepted ${imported.report.accepted} of ${BACKUP_ROWS}`)

  log('backup: ntsoekhe backup')
  const backupDir = join(dir, 'bk')
  const made = await runCli(['backup', backupDir, '--json', '--home', source.home], TOKENS.get(source.socket))
  await source.stop()
  const storeBytes = await treeBytes(join(source.home, 'store'))
  const manifestBytes = (await readFile(join(backupDir, 'manifest.json'))).length

  log('backup: ntsoekhe restore into a new daemon')
  const target = await ctx.spawnDaemon()
  const restored = await runCli(['restore', backupDir, '--json', '--home', target.home], TOKENS.get(target.socket))
  const again = await runCli(['restore', backupDir, '--json', '--home', target.home], TOKENS.get(target.socket))
  await target.stop()
  if (restored.records !== made.records || again.changed !== 0) throw new Error(`restore took ${restored.records} of ${made.records} records; the second changed ${again.changed}`)

  log('backup: raw LevelDB write and read of the same rows')
  const rawWrite = medianRun(await repeat(ROUNDS, async () => await rawLevel(await ctx.tempDir(), rows, true)), 'rate')
  const rawRead = medianRun(await repeat(ROUNDS, async () => await rawLevelRead(await ctx.tempDir(), rows)), 'rate')

  // The ceiling: the same records on a skeleton of each path (test/bench/backup-skeleton.js); the backup skeleton walks the store the last restore skeleton wrote.
  log(`backup: skeletons of restore and backup, ${ROUNDS} rounds each`)
  const skeletonDbs = []
  const skRestore = medianRun(await repeat(ROUNDS, async () => {
    const db = join(await ctx.tempDir(), 'db')
    skeletonDbs.push(db)
    const r = await runSkeleton(['restore', backupDir, db])
    if (r.records !== made.records) throw new Error(`the restore skeleton wrote ${r.records} of ${made.records} records`)
    return { ...r, rate: BACKUP_ROWS / r.seconds }
  }), 'rate')
  const skBackup = medianRun(await repeat(ROUNDS, async () => {
    const r = await runSkeleton(['backup', skeletonDbs.at(-1), await ctx.tempDir()])
    if (r.records !== made.records) throw new Error(`the backup skeleton read ${r.records} of ${made.records} records`)
    return { ...r, rate: BACKUP_ROWS / r.seconds }
  }), 'rate')

  // Rates over the rows the raw baselines move: the daemon's few records more per row (claims, audit entries) earn it nothing.
  const backupRate = BACKUP_ROWS / made.seconds
  const restoreRate = BACKUP_ROWS / restored.seconds
  const verdict = r => `${fmt(r, 2)} ${r >= GOAL_BACKUP ? '✓' : '✗'} (goal ≥ ${GOAL_BACKUP})`
  const backupBytes = made.bytes + manifestBytes
  return `## Backup and restore

One daemon (security on, default config) holding ${fmtInt(BACKUP_ROWS)} patient_records rows
(imported), backed up with \`ntsoekhe backup <dir> --json\` and restored into a new
daemon with \`ntsoekhe restore <dir> --json\`; rates are the ${fmtInt(BACKUP_ROWS)} rows over the seconds each
command reports (from its start to its last byte written, process start-up excluded).
The backup holds ${fmtInt(made.records)} records (the rows, their unique-value claims and the
audit entries of the import) with ${fmtInt(made.versions)} versions.

| run | rows/s | seconds | ratio to raw | ratio to the skeleton |
| --- | ---: | ---: | --- | --- |
| raw LevelDB read of the same rows (iterator, JSON values) | ${fmt(rawRead.rate, 0)} | ${fmt(rawRead.seconds, 2)} | 1 | — |
| ceiling: the backup's path as a skeleton (\`test/bench/backup-skeleton.js backup\`) | ${fmt(skBackup.rate, 0)} | ${fmt(skBackup.seconds, 2)} | ${fmt(skBackup.rate / rawRead.rate, 2)} | 1 |
| \`ntsoekhe backup\` | ${fmt(backupRate, 0)} | ${fmt(made.seconds, 2)} | ${verdict(backupRate / rawRead.rate)} | ${fmt(backupRate / skBackup.rate, 2)} |
| raw LevelDB write of the same rows (batches of ${fmtInt(RAW_BATCH)}, sync) | ${fmt(rawWrite.rate, 0)} | ${fmt(rawWrite.seconds, 2)} | 1 | — |
| ceiling: the restore's path as a skeleton (\`test/bench/backup-skeleton.js restore\`) | ${fmt(skRestore.rate, 0)} | ${fmt(skRestore.seconds, 2)} | ${fmt(skRestore.rate / rawWrite.rate, 2)} | 1 |
| \`ntsoekhe restore\` (checks every chunk first) | ${fmt(restoreRate, 0)} | ${fmt(restored.seconds, 2)} | ${verdict(restoreRate / rawWrite.rate)} | ${fmt(restoreRate / skRestore.rate, 2)} |
| \`ntsoekhe restore\` again (changes nothing) | ${fmt(BACKUP_ROWS / again.seconds, 0)} | ${fmt(again.seconds, 2)} | ${fmt((BACKUP_ROWS / again.seconds) / rawWrite.rate, 2)} | — |

| size | bytes | ratio |
| --- | ---: | --- |
| the source daemon's store (LevelDB files, after a clean stop) | ${fmtInt(storeBytes)} | 1 |
| the backup (${made.chunks} gzip chunks and manifest.json, in the clear) | ${fmtInt(backupBytes)} | ${fmt(backupBytes / storeBytes, 2)} |

The raw baselines run in this process on the same rows: the read walks a LevelDB
holding them (written first, not timed) with one iterator; the write puts them in
batches of ${fmtInt(RAW_BATCH)} with \`sync\`, as the daemon's commits are synced. Each is
the median of ${ROUNDS} runs. The backup and restore do more per record: every version
and the record's state, rows decrypted (backup) or validated and encrypted (restore),
NDJSON, gzip, SHA-256.

The ceilings (\`test/bench/backup-skeleton.js\`) are the two paths with nothing of the
database in them, on the same components, in one process each, median of ${ROUNDS} runs.
*Restore*: reads the chunk files of the backup above one after the other, checks each
file's SHA-256 against the manifest, gunzips it (the product's \`openChunk\`), parses
each line and writes, through the store's group commit (fsync), one LevelDB batch per
2,000 records of the keys the store writes for a record it receives (the record, its
other versions, the table list entry, its equality and ordered index entries), one
batch made durable while the next is parsed. *Backup*: walks the LevelDB the last
restore skeleton wrote with one iterator, turns each record into the line the backup
writes (checked by hand once: the same lines as the product's backup of that store, byte
for byte) and writes chunks of
the product's size through its \`sealChunk\` (gzip at its level), SHA-256 and a synced
write, one chunk sealed while the next fills, then a manifest. Left out, on purpose:
the CLI and the daemon as two processes and the socket between them, pages from
LevelDB snapshots, the rows' decryption (backup) and encryption (restore), the check of
every record before a restore writes anything (the CLI reads and checks every chunk
first) and again on the daemon, the owners' placement, locks, reads of what the store
holds, the range summary, keyed hashes in index entries. Load average (1 / 5 / 15 min)
${loadStart} at the start of this section, ${loadAvg()} at its end.
`
}

/** `bin/ntsoekhe <args>` with a token, its --json output parsed */
async function runCli (args, token) {
  const proc = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(token === undefined ? {} : { NTSOEKHE_TOKEN: token }) } })
  let out = ''
  let err = ''
  proc.stdout.setEncoding('utf8').on('data', s => { out += s })
  proc.stderr.setEncoding('utf8').on('data', s => { err = (err + s).slice(-5000) })
  const exit = await deadline(new Promise(resolve => proc.once('exit', code => resolve(code))), 30 * 60_000, `ntsoekhe ${args[0]}`, () => err)
  if (exit !== 0) throw new Error(`ntsoekhe ${args.join(' ')} exited with ${exit}\n${err}`)
  return JSON.parse(out)
}

/** `node test/bench/backup-skeleton.js <args>`, its one JSON line parsed */
async function runSkeleton (args) {
  const proc = spawn(process.execPath, [join(ROOT, 'test', 'bench', 'backup-skeleton.js'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  proc.stdout.setEncoding('utf8').on('data', s => { out += s })
  proc.stderr.setEncoding('utf8').on('data', s => { err = (err + s).slice(-5000) })
  const exit = await deadline(new Promise(resolve => proc.once('exit', code => resolve(code))), 10 * 60_000, `the backup skeleton (${args[0]})`, () => err)
  if (exit !== 0) throw new Error(`backup-skeleton.js ${args.join(' ')} exited with ${exit}\n${err}`)
  return JSON.parse(out)
}

/** Bytes of every file under a directory */
async function treeBytes (path) {
  const { readdir, stat } = await import('node:fs/promises')
  let total = 0
  for (const e of await readdir(path, { withFileTypes: true })) {
    const p = join(path, e.name)
    total += e.isDirectory() ? await treeBytes(p) : (await stat(p)).size
  }
  return total
}

/** The same rows read back from a LevelDB that holds them under their ids, with one iterator */
async function rawLevelRead (dir, rows) {
  await rawLevel(dir, rows, false)
  const { Level } = await import('level')
  const db = new Level(join(dir, 'raw'), { valueEncoding: 'json' })
  await db.open()
  const started = performance.now()
  let n = 0
  try {
    for await (const [, value] of db.iterator()) if (value !== null) n++
  } finally {
    await db.close()
  }
  if (n !== rows.length) throw new Error(`read ${n} of ${rows.length} rows back`)
  const seconds = (performance.now() - started) / 1000
  return { seconds, rate: rows.length / seconds }
}

/** Length in bytes of the stored JSON of each row's record, read from a stopped daemon's store */
async function recordSizes (path, ids) {
  const { Level } = await import('level')
  const db = new Level(path, { valueEncoding: 'utf8' })
  await db.open()
  const out = {}
  try {
    for await (const [key, value] of db.sublevel('r', { valueEncoding: 'utf8' }).iterator()) {
      const id = ids.find(i => key.endsWith(`!patient_records!${i}`))
      if (id !== undefined) out[id] = Buffer.byteLength(value)
    }
  } finally {
    await db.close()
  }
  for (const id of ids) if (out[id] === undefined) throw new Error(`no record for ${id} in ${path}`)
  return out
}

/** A network of CLUSTER_SIZE daemons with the default config: the first makes it, the others join by its invite; every member seen alive */
async function startNetwork (ctx) {
  const first = await ctx.spawnDaemon()
  const { invite } = await getJson(first.socket, '/v1/invite')
  const nodes = [first]
  for (let i = 1; i < CLUSTER_SIZE; i++) nodes.push(await ctx.spawnDaemon(['--join', invite]))
  await waitAlive(nodes, CLUSTER_SIZE)
  return nodes
}

async function waitAlive (nodes, size) {
  await waitFor(async () => (await Promise.all(nodes.map(async n => await getJson(n.socket, '/v1/status'))))
    .every(st => st.members.filter(m => m.state === 'alive').length === size), START_TIMEOUT, `the ${size} daemons to see each other`)
}

async function waitFor (check, ms, what) {
  const until = Date.now() + ms
  let last
  // A restarted member may answer 401 for a moment (its users table not yet read back): retried too.
  while (!(await check().catch(err => { last = err; return false }))) {
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}${last === undefined ? '' : `: ${last.message}`}`)
    await sleep(100)
  }
}

/** A loopback TCP port free right now */
async function freePort () {
  const { createServer } = await import('node:net')
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)) })
  })
}

/** Runs test/bench/orbitdb/run.js (installing its dependencies first if needed); undefined when it cannot */
async function runOrbitDb () {
  const dir = join(ROOT, 'test', 'bench', 'orbitdb')
  try {
    if (!existsSync(join(dir, 'node_modules', '@orbitdb', 'core'))) {
      log('cluster: installing test/bench/orbitdb dependencies (npm ci)')
      const install = spawn('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] })
      const { code } = await deadline(new Promise(resolve => install.once('exit', c => resolve({ code: c }))), 300_000, 'npm ci in test/bench/orbitdb', () => '')
      if (code !== 0) throw new Error(`npm ci in test/bench/orbitdb exited ${code}`)
    }
    const child = spawn(process.execPath, [join(dir, 'run.js'), '--rows', String(ORBITDB_ROWS)], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', c => { out += c })
    child.stderr.setEncoding('utf8').on('data', c => { err = (err + c).slice(-5000) })
    const { code } = await deadline(new Promise(resolve => child.once('exit', c => resolve({ code: c }))), 400_000, 'the OrbitDB benchmark', () => err)
    const line = out.trim().split('\n').pop() ?? ''
    const result = JSON.parse(line)
    if (code !== 0 || result.complete !== true) throw new Error(`OrbitDB run incomplete (exit ${code}): ${line}\n${err}`)
    return result
  } catch (e) {
    log(`cluster: OrbitDB baseline failed: ${e?.message ?? e}`)
    return undefined
  }
}

/** Open-loop load: requests start on a fixed schedule, latency counted from the scheduled time */
async function drivePaced ({ rate, seconds, make }) {
  const agent = new Agent({ keepAlive: true, maxSockets: 256 })
  const total = Math.max(1, Math.floor(rate * seconds))
  const latencies = []
  const started = performance.now()
  let inFlight = 0
  const pending = []
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate
    const wait = due - performance.now()
    if (wait > 1) await sleep(wait)
    if (inFlight >= 256) throw new Error('paced run: 256 requests in flight; the offered rate is above capacity')
    const { method, path, body, socket } = make(i)
    inFlight++
    pending.push(send(agent, socket, method, path, body).then(res => {
      inFlight--
      if (res.status >= 400) throw new Error(`${method} ${path} answered ${res.status}: ${res.body}`)
      latencies.push(performance.now() - due)
    }))
  }
  await Promise.all(pending)
  agent.destroy()
  const elapsed = (performance.now() - started) / 1000
  latencies.sort((a, b) => a - b)
  return { sent: total, rps: total / elapsed, p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99) }
}

/** Three skeleton processes (see skeleton.js), each told the member list */
async function startSkeletons (ctx, mode) {
  const procs = []
  for (let i = 0; i < CLUSTER_SIZE; i++) procs.push(await ctx.spawnSkeleton(mode))
  const members = await Promise.all(procs.map(async p => await getJson(p.socket, '/status')))
  for (const p of procs) {
    const res = await send(new Agent({ keepAlive: false }), p.socket, 'POST', '/members', members)
    if (res.status !== 200) throw new Error(`the skeleton on ${p.socket} did not take the member list: ${res.status} ${res.body}`)
  }
  return { procs, sockets: procs.map(p => p.socket) }
}

/** Three skeleton processes (see skeleton.js), warmed up, then the median of ROUNDS closed-loop write rounds */
async function skeletonRuns (ctx, mode, makeRow) {
  const { procs, sockets } = await startSkeletons(ctx, mode)
  let n = 9_000_000
  const make = i => ({ socket: sockets[i % sockets.length], method: 'POST', path: '/w', body: makeRow(n++) })
  await drive({ socket: sockets[0], total: CLUSTER_WARMUP, make })
  const runs = []
  for (let round = 1; round <= ROUNDS; round++) runs.push(await drive({ socket: sockets[0], total: CLUSTER_REQUESTS, make }))
  for (const p of procs) await p.stop()
  return medianRun(runs)
}

/** The skeleton's reads by id (test/bench/skeleton.js), without and with an audit record each */
async function skeletonReads (ctx) {
  const { procs, sockets } = await startSkeletons(ctx, 'local')
  const keys = []
  let n = 9_000_000
  await drive({ socket: sockets[0], total: CLUSTER_WARMUP, make: i => ({ socket: sockets[i % sockets.length], method: 'POST', path: '/w', body: samplePatient(n++) }), onBody: body => { keys.push(JSON.parse(body).id) } })
  const result = {}
  for (const [name, route] of [['plain', 'r'], ['audited', 'ra']]) {
    const make = i => ({ socket: sockets[i % sockets.length], method: 'GET', path: `/${route}/${encodeURIComponent(keys[(i * 7919) % keys.length])}` })
    await drive({ socket: sockets[0], total: WARMUP, make })
    const runs = []
    for (let round = 1; round <= ROUNDS; round++) runs.push(await drive({ socket: sockets[0], total: CLUSTER_REQUESTS, make }))
    result[name] = medianRun(runs)
  }
  for (const p of procs) await p.stop()
  return result
}

async function getJson (socket, path) {
  const agent = new Agent({ keepAlive: false })
  const res = await send(agent, socket, 'GET', path)
  if (res.status !== 200) throw new Error(`GET ${path} on ${socket} answered ${res.status}: ${res.body}`)
  return JSON.parse(res.body)
}

// ---------------------------------------------------------------------------
// Shared context: spawned processes and temp dirs, stopped and removed at the end

function context () {
  const procs = new Set()
  const dirs = new Set()
  const killAll = () => { for (const p of procs) p.kill('SIGKILL') }
  process.once('exit', killAll)
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, () => { killAll(); for (const d of dirs) rmSyncQuiet(d); process.exit(130) })
  }

  const tempDir = async () => {
    const d = await mkdtemp(join(tmpdir(), 'ntk-b-'))
    dirs.add(d)
    return d
  }

  const launch = (args, what) => {
    const proc = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
    procs.add(proc)
    let output = ''
    proc.stdout.setEncoding('utf8').on('data', s => { output = (output + s).slice(-20_000) })
    proc.stderr.setEncoding('utf8').on('data', s => { output = (output + s).slice(-20_000) })
    const exited = new Promise(resolve => proc.once('exit', (code, signal) => { procs.delete(proc); resolve({ code, signal }) }))
    const stop = async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM')
      const exit = await deadline(exited, STOP_TIMEOUT, `${what} to exit after SIGTERM`, () => output)
      if (exit.code !== 0) throw new Error(`${what} exited with ${exit.code ?? exit.signal} after SIGTERM\n${output}`)
    }
    return { proc, exited, stop, output: () => output }
  }

  const waitReady = async (p, socket, what, timeoutMs = START_TIMEOUT) => {
    const until = Date.now() + timeoutMs
    for (;;) {
      if (p.proc.exitCode !== null || p.proc.signalCode !== null) throw new Error(`${what} exited before answering on ${socket}\n${p.output()}`)
      if (await answers(socket, p.path)) return
      if (Date.now() > until) throw new Error(`${what} did not answer GET ${p.path} on ${socket} within ${timeoutMs} ms\n${p.output()}`)
      await sleep(25)
    }
  }

  return {
    tempDir,
    /** A bare fastify server on a Unix socket, in a child process (this script with --baseline-server) */
    async spawnBaseline () {
      const socket = join(await tempDir(), 'hello.sock')
      const p = { ...launch([SELF, '--baseline-server', socket], 'the baseline server'), path: '/hello' }
      await waitReady(p, socket, 'the baseline server')
      return { ...p, socket }
    },
    /**
     * `ntsoekhe daemon` on a fresh temp home, with its default config plus `args`;
     * `home` starts it again on a home of an earlier one, `port` listens on that
     * fixed loopback port (a restarted network finds its members again), `config`
     * is written as the home's config.json first (merged over the defaults)
     */
    async spawnDaemon (args = [], { home: reuse, port, config } = {}) {
      const home = reuse ?? await tempDir()
      if (config !== undefined) await writeFile(join(home, 'config.json'), JSON.stringify(config))
      const socket = join(home, 'api.sock')
      const flags = port === undefined ? DAEMON_FLAGS : ['--listen', `/ip4/127.0.0.1/tcp/${port}`, '--log-level', 'warn']
      const p = { ...launch([BIN, 'daemon', '--home', home, ...flags, ...args], `the daemon on ${home}`), path: '/v1/status' }
      await waitReady(p, socket, `the daemon on ${home}`)
      // A daemon that joined a network has no admin.token: it takes the token of the network's first node.
      const token = existsSync(join(home, 'admin.token')) ? (await readFile(join(home, 'admin.token'), 'utf8')).trim() : [...TOKENS.values()].at(-1)
      if (token !== undefined) TOKENS.set(socket, token)
      return { ...p, home, socket }
    },
    /** One process of the skeleton write path (test/bench/skeleton.js), coordinating at the primary or where writes arrive */
    async spawnSkeleton (mode) {
      const dir = await tempDir()
      const socket = join(dir, 'skeleton.sock')
      const p = { ...launch([join(ROOT, 'test', 'bench', 'skeleton.js'), join(dir, 'db'), socket, mode], `the skeleton on ${dir}`), path: '/status' }
      await waitReady(p, socket, `the skeleton on ${dir}`)
      return { ...p, socket }
    },
    /** test/bench/audit-skeleton.js: plain reads, or reads that each append an audit record */
    async spawnAuditSkeleton (mode, rows) {
      const dir = await tempDir()
      const socket = join(dir, 'audit-skeleton.sock')
      const p = { ...launch([join(ROOT, 'test', 'bench', 'audit-skeleton.js'), join(dir, 'db'), socket, mode, String(rows)], `the ${mode} audit skeleton on ${dir}`), path: '/status' }
      await waitReady(p, socket, `the ${mode} audit skeleton on ${dir}`)
      return { ...p, socket }
    },
    /** test/bench/query-skeleton.js: the one-node query path's ceiling, holding the rows of the NDJSON files in `rowsDir` */
    async spawnQuerySkeleton (rowsDir) {
      const dir = await tempDir()
      const socket = join(dir, 'query-skeleton.sock')
      const p = { ...launch([join(ROOT, 'test', 'bench', 'query-skeleton.js'), join(dir, 'db'), socket, rowsDir], `the query skeleton on ${dir}`), path: '/status' }
      // It answers once it has loaded the rows: longer than a daemon's start.
      await waitReady(p, socket, `the query skeleton on ${dir}`, QUERY_SKELETON_LOAD_MS)
      return { ...p, socket }
    },
    /** test/bench/stream.js receive: a libp2p node that takes one-way byte streams */
    async spawnStreamReceiver () {
      const p = launch([join(ROOT, 'test', 'bench', 'stream.js'), 'receive'], 'the stream receiver')
      const until = Date.now() + START_TIMEOUT
      for (;;) {
        const line = p.output().split('\n').find(l => l.startsWith('{'))
        if (line !== undefined) return { ...p, ...JSON.parse(line) }
        if (p.proc.exitCode !== null || Date.now() > until) throw new Error(`the stream receiver did not start\n${p.output()}`)
        await sleep(25)
      }
    },
    /** test/bench/stream.js send: one stream of `bytes` to the receiver; {bytes, seconds} */
    async streamTo (receiver, bytes) {
      const p = launch([join(ROOT, 'test', 'bench', 'stream.js'), 'send', receiver.addr, receiver.key, String(bytes)], 'the stream sender')
      const exit = await deadline(p.exited, 120_000, 'the stream sender', p.output)
      const line = p.output().split('\n').find(l => l.startsWith('{'))
      if (exit.code !== 0 || line === undefined) throw new Error(`the stream sender failed\n${p.output()}`)
      return JSON.parse(line)
    },
    /** test/bench/join-skeleton.js receive on a fresh LevelDB: the receiving end of the join's skeleton */
    async spawnJoinSkeleton () {
      const dir = await tempDir()
      const p = launch([join(ROOT, 'test', 'bench', 'join-skeleton.js'), 'receive', join(dir, 'db')], 'the join skeleton receiver')
      const until = Date.now() + START_TIMEOUT
      for (;;) {
        const line = p.output().split('\n').find(l => l.startsWith('{'))
        if (line !== undefined) return { ...p, ...JSON.parse(line) }
        if (p.proc.exitCode !== null || Date.now() > until) throw new Error(`the join skeleton receiver did not start\n${p.output()}`)
        await sleep(25)
      }
    },
    /** test/bench/join-skeleton.js send: the first `count` rows of `file` as records to the receiver; {records, bytes, seconds} */
    async joinSkeletonTo (receiver, file, count) {
      const p = launch([join(ROOT, 'test', 'bench', 'join-skeleton.js'), 'send', receiver.addr, receiver.key, file, String(count)], 'the join skeleton sender')
      const exit = await deadline(p.exited, 180_000, 'the join skeleton sender', p.output)
      const line = p.output().split('\n').find(l => l.startsWith('{'))
      if (exit.code !== 0 || line === undefined) throw new Error(`the join skeleton sender failed\n${p.output()}`)
      return JSON.parse(line)
    },
    async cleanup () {
      for (const p of procs) p.kill('SIGTERM')
      const until = Date.now() + STOP_TIMEOUT
      while (procs.size > 0 && Date.now() < until) await sleep(50)
      killAll()
      await Promise.all([...dirs].map(async d => { await rm(d, { recursive: true, force: true }) }))
      dirs.clear()
    }
  }
}

/**
 * The questions a clinic asks, on one node and on a 3-node network, against
 * PostgreSQL 15 holding the same rows with the same indexes: a patient's
 * chart (patient, history, lab results), a doctor's day in time order, and
 * visits per doctor.
 */
async function queries (ctx) {
  const loadStart = loadAvg()
  const ratio = (a, b) => a / b
  const verdict = (r, goal) => `${fmt(r, 2)} ${r >= goal ? '✓' : '✗'} (goal ≥ ${goal})`
  const data = clinicData(QUERY_ROWS)
  const total = Object.values(data).reduce((n, rows) => n + rows.length, 0)
  const dir = await ctx.tempDir()
  log(`queries: PostgreSQL 15 on a Unix socket, loading ${fmtInt(total)} rows`)
  const pg = await startPostgres({ standbys: 0, log })
  const pgRuns = {}
  try {
    await pg.psql(PG_SCHEMA)
    for (const table of CLINIC_TABLES) await pg.copy(table, Object.keys(data[table][0]), data[table])
    await pg.psql(PG_INDEXES)
    await pg.psql('ANALYZE')
    for (const [name, script] of Object.entries(PG_SCRIPTS(data))) {
      log(`queries: PostgreSQL, ${name}, ${QUERY_SECONDS} s at ${CONCURRENCY} clients (pgbench)`)
      pgRuns[name] = { tps: await pg.pgbench(script, { clients: CONCURRENCY, seconds: QUERY_SECONDS }) }
    }
  } finally {
    await pg.stop()
  }

  for (const table of CLINIC_TABLES) await writeFile(join(dir, `${table}.ndjson`), data[table].map(r => JSON.stringify(r)).join('\n') + '\n')
  const requests = NTK_REQUESTS(data)
  const run = async (label, name, sockets) => {
    log(`queries: ${label}, ${name}, ${QUERY_SECONDS} s at ${CONCURRENCY} concurrent`)
    const make = requests[name]
    await driveFor({ seconds: 2, make: i => make(i, sockets[i % sockets.length]) })
    return await driveFor({ seconds: QUERY_SECONDS, make: i => make(i, sockets[i % sockets.length]) })
  }
  const measure = async (label, sockets) => {
    for (const table of CLINIC_TABLES) {
      const file = join(dir, `${table}.ndjson`)
      log(`queries: ${label}: importing ${fmtInt(data[table].length)} ${table}`)
      const imported = await importFile(sockets[0], table, file)
      if (imported.report.accepted !== data[table].length) throw new Error(`${table}: import accepted ${imported.report.accepted} of ${data[table].length}: ${JSON.stringify(imported.report.rejected.slice(0, 3))}`)
    }
    const out = {}
    for (const name of Object.keys(requests)) out[name] = await run(label, name, sockets)
    return out
  }
  log('queries: one daemon')
  const single = await ctx.spawnDaemon()
  const oneRuns = await measure('one node', [single.socket])
  await single.stop()
  log('queries: the query skeleton (the one-node path on the same components), loading the same rows')
  const skeleton = await ctx.spawnQuerySkeleton(dir)
  const skeletonRuns = {}
  for (const name of SKELETON_QUERIES) skeletonRuns[name] = await run('query skeleton', name, [skeleton.socket])
  await skeleton.stop()
  log(`queries: ${CLUSTER_SIZE} daemons (N=3, W=2, R=2)`)
  const nodes = await startNetwork(ctx)
  const netRuns = await measure('3 nodes', nodes.map(n => n.socket))
  for (const n of nodes) await n.stop()

  const row = (name, what, goal) => {
    const p = pgRuns[name]
    const o = oneRuns[name]
    const n = netRuns[name]
    const s = skeletonRuns[name]
    const toSkeleton = s === undefined ? '—' : fmt(ratio(o.rps, s.rps), 2)
    return `| ${what} | ${fmt(p.tps, 0)} | ${s === undefined ? '—' : fmt(s.rps, 0)} | ${fmt(o.rps, 0)} | ${goal === undefined ? fmt(ratio(o.rps, p.tps), 2) : verdict(ratio(o.rps, p.tps), goal)} | ${toSkeleton} | ${fmt(n.rps, 0)} | ${fmt(ratio(n.rps, p.tps), 2)} |`
  }
  return `## Queries against PostgreSQL

${fmtInt(total)} rows (${CLINIC_TABLES.map(t => `${fmtInt(data[t].length)} ${t}`).join(', ')}) in PostgreSQL 15 and in Ntsoekhe, with the same indexes; queries per second at ${CONCURRENCY} clients for ${QUERY_SECONDS} s after 2 s of warm-up.

| query | PostgreSQL 15 | ceiling: query skeleton, one node | Ntsoekhe, one node | ratio to PostgreSQL | ratio to the skeleton | Ntsoekhe, 3 nodes | ratio to PostgreSQL |
| --- | ---: | ---: | ---: | --- | --- | ---: | --- |
${row('chart', 'a patient\'s chart: patient + history + lab results', GOAL_QUERY)}
${row('day', 'a doctor\'s appointments for one day, by time', GOAL_QUERY)}
${row('perDoctor', 'visits per doctor (COUNT ... GROUP BY doctor_id)')}
${row('byId', 'for reference, in the same run: one patient by id')}

Method. PostgreSQL 15 (Debian's package, test/bench/postgres.js) runs from a fresh \`initdb\` in a temp dir, on a
Unix socket only, without standbys (fsync on, shared_buffers 256 MB); the rows are loaded with
\`COPY\` and the tables \`ANALYZE\`d; pgbench (\`-c ${CONCURRENCY} -j 2 -T ${QUERY_SECONDS}\`,
prepared statements) runs one script per query, a chart being one script of three
SELECTs; its figure is tps without the initial connection time. Ntsoekhe runs
\`bin/ntsoekhe daemon\` with its default config (security on: its sensitive columns
encrypted, every read audited); the rows are imported through the import route;
${CONCURRENCY} workers send requests over the Unix socket (a chart being three requests
sent together and counted once: \`GET\` the patient, list \`medical_history\` and
\`lab_results\` by \`patient_id\`; a day a list of \`appointments\` by \`doctor_id\`, a range
on \`appointment_date\` and \`order_by\`; visits per doctor one \`POST /v1/sql\`; by id one \`GET\`), spread over
the nodes of the network. The read by id is measured alongside, as a yardstick of how loaded the
machine was (PostgreSQL here is a single server, not the primary with two synchronous standbys of
the reads-by-id goal). Same indexes: every primary key; appointments on (doctor_id,
appointment_date), (appointment_date), (patient_id, appointment_date); medical_history on
(patient_id, date_of_visit), (date_of_visit); lab_results on (patient_id, test_date),
(test_date), (record_id); patient_records on (patient_name).

The ceiling runs \`test/bench/query-skeleton.js\`: one process doing only what the one-node path
needs on the same components, with the same rows (loaded from the same NDJSON files) and the
daemon's index entries as LevelDB keys: fastify on a Unix socket answering the same routes with
the same JSON, per request the index range read with one LevelDB iterator, each row read by
key, and one audit record per patient the answer holds (hash-chained with SHA-256, buffered and
written every 50 ms in one synced batch, as the trail's are); no tokens, rights, encryption,
versions or replication. The same ${CONCURRENCY} workers drive it, after the daemon has stopped.
The ratio to it says how much of the one-node path's cost is the database's own; its ratio to
PostgreSQL bounds what any design on these components reaches. The machine may be shared: load
average ${loadStart} at the start of this section, ${loadAvg()} at its end.
`
}

const CLINIC_TABLES = ['doctors_info', 'patient_records', 'appointments', 'medical_history', 'lab_results']
/** The queries the query skeleton serves (not visits per doctor: an aggregate over the table is no ceiling of one path) */
const SKELETON_QUERIES = ['chart', 'day', 'byId']
/** The day doctor's-day queries ask for is one of the first DAYS of March 2026 */
const DAYS = 60

/** Rows of five tables, about `n` in all: 1% doctors, 20% patients, 40% appointments, 25% history, 14% lab results */
function clinicData (n) {
  const doctors = Math.max(10, Math.round(n * 0.002))
  const patients = Math.round(n * 0.2)
  const appointments = Math.round(n * 0.4)
  const history = Math.round(n * 0.25)
  const labs = Math.max(0, n - doctors - patients - appointments - history)
  const day = i => new Date(Date.UTC(2026, 2, 1 + (i % DAYS))).toISOString().slice(0, 10)
  const data = {
    doctors_info: Array.from({ length: doctors }, (_, i) => ({ doctor_id: i + 1, name: `Dr ${LAST[i % LAST.length]} ${i + 1}`, specialization: ['GP', 'Paediatrics', 'Surgery'][i % 3], contact_number: String(2_622_100_000 + i), email: `dr${i + 1}@example.org`, availability: 'weekdays' })),
    patient_records: Array.from({ length: patients }, (_, i) => ({ patient_id: i + 1, ...samplePatient(i) })),
    appointments: Array.from({ length: appointments }, (_, i) => ({ appointment_id: i + 1, patient_id: 1 + ((i * 7919) % patients), doctor_id: 1 + (i % doctors), appointment_date: `${day(Math.floor(i / doctors))}T${String(8 + (i % 9)).padStart(2, '0')}:${String((i * 13) % 60).padStart(2, '0')}:00.000Z`, purpose: ['Check-up', 'Follow-up', 'Vaccination'][i % 3] })),
    medical_history: Array.from({ length: history }, (_, i) => ({ history_id: i + 1, patient_id: 1 + ((i * 104_729) % patients), diagnosis: ['Flu', 'Asthma', 'Diabetes'][i % 3], treatment: 'Rest and fluids', date_of_visit: `${day(i)}T10:00:00.000Z`, role_id: null }))
  }
  data.lab_results = Array.from({ length: labs }, (_, i) => {
    const h = data.medical_history[(i * 31) % history]
    return { result_id: i + 1, record_id: h.history_id, patient_id: h.patient_id, test_name: ['CBC', 'HbA1c', 'Lipids'][i % 3], test_date: day(i), test_result: 'normal' }
  })
  return data
}

/** pgbench scripts: a chart (three SELECTs), a doctor's day, visits per doctor */
function PG_SCRIPTS (data) {
  const patients = data.patient_records.length
  const doctors = data.doctors_info.length
  return {
    chart: `\\set p random(1, ${patients})
SELECT * FROM patient_records WHERE patient_id = :p;
SELECT * FROM medical_history WHERE patient_id = :p;
SELECT * FROM lab_results WHERE patient_id = :p;
`,
    day: `\\set d random(1, ${doctors})
\\set k random(0, ${DAYS - 1})
SELECT * FROM appointments WHERE doctor_id = :d AND appointment_date >= DATE '2026-03-01' + CAST(:k AS int) AND appointment_date < DATE '2026-03-01' + CAST(:k AS int) + 1 ORDER BY appointment_date;
`,
    perDoctor: 'SELECT doctor_id, COUNT(*) FROM appointments GROUP BY doctor_id;\n',
    byId: `\\set p random(1, ${patients})
SELECT * FROM patient_records WHERE patient_id = :p;
`
  }
}

/** The same questions as requests to a daemon: each make(i, socket) gives the requests of one query */
function NTK_REQUESTS (data) {
  const patients = data.patient_records.length
  const doctors = data.doctors_info.length
  const day = k => new Date(Date.UTC(2026, 2, 1 + k)).toISOString().slice(0, 10)
  return {
    chart: (i, socket) => {
      const p = 1 + ((i * 7919) % patients)
      return [
        { socket, method: 'GET', path: `/v1/tables/patient_records/rows/${p}` },
        { socket, method: 'GET', path: `/v1/tables/medical_history/rows?patient_id=${p}` },
        { socket, method: 'GET', path: `/v1/tables/lab_results/rows?patient_id=${p}` }
      ]
    },
    day: (i, socket) => {
      const d = 1 + ((i * 37) % doctors)
      const k = (i * 11) % DAYS
      return [{ socket, method: 'GET', path: `/v1/tables/appointments/rows?doctor_id=${d}&where=${encodeURIComponent(`appointment_date>=${day(k)}`)}&where=${encodeURIComponent(`appointment_date<${day(k + 1)}`)}&order_by=appointment_date` }]
    },
    perDoctor: (_i, socket) => [{ socket, method: 'POST', path: '/v1/sql', body: { sql: 'SELECT doctor_id, COUNT(*) FROM appointments GROUP BY doctor_id' } }],
    byId: (i, socket) => [{ socket, method: 'GET', path: `/v1/tables/patient_records/rows/${1 + ((i * 7919) % patients)}` }]
  }
}

/**
 * Runs queries for `seconds` with CONCURRENCY workers; a query is the
 * requests make(i) gives, sent together, and counts once when all answered
 */
async function driveFor ({ seconds, make }) {
  const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY * 3 })
  let next = 0
  let done = 0
  const started = performance.now()
  const until = started + seconds * 1000
  const worker = async () => {
    while (performance.now() < until) {
      const requests = make(next++)
      // A whole-table aggregate queues behind 31 others: its wait is bounded far above a point read's.
      const answers = await Promise.all(requests.map(async r => await send(agent, r.socket, r.method, r.path, r.body, 300_000)))
      for (const [j, res] of answers.entries()) if (res.status >= 400) throw new Error(`${requests[j].method} ${requests[j].path} answered ${res.status}: ${res.body}`)
      done++
    }
  }
  try {
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  } finally {
    agent.destroy()
  }
  return { rps: done / ((performance.now() - started) / 1000) }
}

const PG_SCHEMA = `
CREATE TABLE doctors_info (doctor_id INT PRIMARY KEY, name VARCHAR(150) NOT NULL, specialization VARCHAR(150) NOT NULL, contact_number VARCHAR(10) NOT NULL, email VARCHAR(50) NOT NULL, availability VARCHAR(150) NOT NULL);
CREATE TABLE patient_records (patient_id INT PRIMARY KEY, patient_name VARCHAR(150) NOT NULL, date_of_birth DATE NOT NULL, gender VARCHAR(10) NOT NULL, address VARCHAR(100) NOT NULL, contact_number VARCHAR(10) NOT NULL, email VARCHAR(50) NOT NULL, allergies VARCHAR(50));
CREATE TABLE appointments (appointment_id INT PRIMARY KEY, patient_id INT NOT NULL REFERENCES patient_records, doctor_id INT NOT NULL REFERENCES doctors_info, appointment_date TIMESTAMP NOT NULL, purpose VARCHAR(100) NOT NULL);
CREATE TABLE medical_history (history_id INT PRIMARY KEY, patient_id INT NOT NULL REFERENCES patient_records, diagnosis VARCHAR(200) NOT NULL, treatment VARCHAR(200) NOT NULL, date_of_visit TIMESTAMP NOT NULL, role_id INT);
CREATE TABLE lab_results (result_id INT PRIMARY KEY, record_id INT NOT NULL REFERENCES medical_history, patient_id INT NOT NULL REFERENCES patient_records, test_name VARCHAR(100) NOT NULL, test_date DATE NOT NULL, test_result VARCHAR(200) NOT NULL);
`
/** Ntsoekhe's ordered and equality indexes on these tables, as PostgreSQL indexes */
const PG_INDEXES = `
CREATE INDEX ON appointments (doctor_id, appointment_date); CREATE INDEX ON appointments (appointment_date); CREATE INDEX ON appointments (patient_id, appointment_date);
CREATE INDEX ON medical_history (patient_id, date_of_visit); CREATE INDEX ON medical_history (date_of_visit); CREATE INDEX ON medical_history (role_id);
CREATE INDEX ON lab_results (patient_id, test_date); CREATE INDEX ON lab_results (test_date); CREATE INDEX ON lab_results (record_id);
CREATE INDEX ON patient_records (patient_name);
`

// ---------------------------------------------------------------------------
// Load driver and measurements

/**
 * Sends `total` requests over the Unix socket with CONCURRENCY workers, each
 * sending its next request when its last one answered. Any error status fails
 * the run: a benchmark of errors measures nothing.
 */
async function drive ({ socket, total, make, onBody }) {
  const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY })
  const latencies = new Float64Array(total)
  let next = 0
  const started = performance.now()
  const worker = async () => {
    while (next < total) {
      const i = next++
      const { method, path, body, socket: target } = make(i)
      const t0 = performance.now()
      const res = await send(agent, target ?? socket, method, path, body)
      latencies[i] = performance.now() - t0
      if (res.status >= 400) throw new Error(`${method} ${path} answered ${res.status}: ${res.body}`)
      onBody?.(res.body)
    }
  }
  try {
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, total) }, worker))
  } finally {
    agent.destroy()
  }
  const seconds = (performance.now() - started) / 1000
  latencies.sort()
  return { rps: total / seconds, seconds, p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99) }
}

/** Bearer token per daemon socket: a network's first admin (admin.token of the home that created it) */
const TOKENS = new Map()

function auth (socket) {
  const token = TOKENS.get(socket)
  return token === undefined ? {} : { authorization: `Bearer ${token}` }
}

function send (agent, socket, method, path, body, timeoutMs = 60_000) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const headers = { ...auth(socket), ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }) }
    const req = request({ socketPath: socket, agent, method, path, headers }, res => {
      const chunks = []
      res.on('data', c => chunks.push(c))
      res.on('error', reject)
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }))
    })
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs / 1000} s`)))
    req.on('error', reject)
    req.end(payload)
  })
}

/** Streams a file to the import endpoint; timed from the first byte sent to the report */
async function importFile (socket, table, file) {
  const started = performance.now()
  const res = await new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, method: 'POST', path: `/v1/tables/${table}/import`, headers: { ...auth(socket), 'content-type': 'application/x-ndjson' } }, r => {
      const chunks = []
      r.on('data', c => chunks.push(c))
      r.on('error', reject)
      r.on('end', () => resolve({ status: r.statusCode, body: Buffer.concat(chunks).toString('utf8') }))
    })
    req.on('error', reject)
    createReadStream(file).on('error', reject).pipe(req)
  })
  const seconds = (performance.now() - started) / 1000
  if (res.status >= 400) throw new Error(`import answered ${res.status}: ${res.body}`)
  return { seconds, report: JSON.parse(res.body) }
}

/** The same rows put straight into LevelDB under their ids, in batches */
async function rawLevel (dir, rows, sync) {
  const { Level } = await import('level')
  const db = new Level(join(dir, 'raw'), { valueEncoding: 'json' })
  await db.open()
  const started = performance.now()
  try {
    for (let i = 0; i < rows.length; i += RAW_BATCH) {
      const ops = rows.slice(i, i + RAW_BATCH).map((value, j) => ({ type: 'put', key: String(i + j).padStart(12, '0'), value }))
      await db.batch(ops, { sync })
    }
  } finally {
    await db.close()
  }
  const seconds = (performance.now() - started) / 1000
  return { seconds, rate: rows.length / seconds }
}

async function peakRssKb (pid) {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const m = /^VmHWM:\s+(\d+) kB/m.exec(status)
  if (m === null) throw new Error(`no VmHWM in /proc/${pid}/status`)
  return Number(m[1])
}

function answers (socket, path) {
  return new Promise(resolve => {
    const req = request({ socketPath: socket, path, method: 'GET', timeout: 2000 }, res => {
      res.resume()
      // A daemon answers 401 to a request without a token: it is up all the same.
      res.on('end', () => resolve(res.statusCode === 200 || res.statusCode === 401))
      res.on('error', () => resolve(false))
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(false))
    req.end()
  })
}

// ---------------------------------------------------------------------------
// The baseline server (this file run with --baseline-server <socket>)

async function baselineServer (socket) {
  const { default: Fastify } = await import('fastify')
  const app = Fastify({ logger: false })
  app.get('/hello', async () => ({ hello: 'world' }))
  app.post('/echo', async req => req.body)
  await app.listen({ path: socket })
  const close = async () => { await app.close(); process.exit(0) }
  process.once('SIGTERM', close)
  process.once('SIGINT', close)
}

// ---------------------------------------------------------------------------
// Data and formatting

const FIRST = ['Thabo', 'Palesa', 'Lerato', 'Mpho', 'Neo', 'Kamohelo', 'Refiloe', 'Teboho']
const LAST = ['Mokoena', 'Nthabiseng', 'Molapo', 'Letsie', 'Mofokeng', 'Sekhonyana']

/** A valid patient_records row, distinct per `i`, without an id (the daemon draws it) */
function samplePatient (i) {
  return {
    patient_name: `${FIRST[i % FIRST.length]} ${LAST[i % LAST.length]} ${i}`,
    date_of_birth: `19${String(40 + (i % 60)).padStart(2, '0')}-${String(1 + (i % 12)).padStart(2, '0')}-${String(1 + (i % 28)).padStart(2, '0')}`,
    gender: ['Female', 'Male', 'Other'][i % 3],
    address: `${1 + (i % 500)} Kingsway, Maseru`,
    contact_number: String(2_622_000_000 + (i % 1_000_000)),
    email: `patient${i}@example.org`,
    allergies: ['None', 'Penicillin', 'Peanuts', 'Latex'][i % 4]
  }
}

function machineLine () {
  const info = readFileSync('/proc/cpuinfo', 'utf8')
  const model = /^model name\s*:\s*(.+)$/m.exec(info)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown CPU'
  const ram = totalmem() / 2 ** 30
  return `Machine: ${model}, ${cpus().length} cores, ${fmt(ram, 1)} GiB RAM, Node ${process.version}, ${process.platform}; run ${new Date().toISOString().replace('T', ' ').slice(0, 16)} UTC.`
}

/** The run with the median figure (`rps` or `rate`): one real run, not a mix of several */
function medianRun (runs, key = 'rps') {
  const sorted = [...runs].sort((a, b) => a[key] - b[key])
  return sorted[Math.floor((sorted.length - 1) / 2)]
}

async function repeat (times, fn) {
  const out = []
  for (let i = 0; i < times; i++) out.push(await fn())
  return out
}

function loadAvg () {
  return loadavg().map(l => fmt(l, 2)).join(' / ')
}

function quantile (sorted, q) {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

function fmt (n, digits) {
  return Number.isFinite(n) ? n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) : '—'
}

function fmtInt (n) {
  return fmt(n, 0)
}

function positiveInt (raw, fallback) {
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`expected a positive integer, got ${JSON.stringify(raw)}`)
  return n
}

function log (line) {
  process.stderr.write(`bench: ${line}\n`)
}

function sleep (ms) {
  return new Promise(resolve => setTimeout(resolve, ms))
}

async function deadline (promise, ms, what, context) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}\n${context()}`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

function rmSyncQuiet (dir) {
  // A signal handler cannot await: remove synchronously, best effort.
  try {
    rmSync(dir, { recursive: true, force: true })
  } catch {}
}

// Last, so that every module-level constant above is initialised first.
if (process.argv[2] === '--baseline-server') {
  await baselineServer(process.argv[3])
} else {
  await main()
}
