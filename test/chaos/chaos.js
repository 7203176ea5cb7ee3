/**
 * The chaos suite: real daemons (bin/ntsoekhe, which runs dist/: build
 * first) on this machine, workloads writing to them while a nemesis injects
 * faults, then a heal and a check that nothing acknowledged was lost and every
 * replica converged.
 *
 * Workloads (each a few concurrent clients, writes spread over every node,
 * a share at consistency `one` and at `all`):
 * - sets: unique inserts; every acknowledged row is readable at the end;
 * - register: concurrent updates of a few patients without If-Match; every
 *   acknowledged version is in the row's history (as the winner, a conflict
 *   or an ancestor of them);
 * - batch: per-patient batches (a patient, a history entry, a bill); each is
 *   on every owner entirely or not at all, and acknowledged ones everywhere.
 *
 * Nemeses, one at a time in a seeded order (the last one left in place until
 * the heal, so that there is something to converge from): kill -9 and restart, SIGSTOP /
 * SIGCONT, network partitions (each daemon in its own network namespace, see
 * net.js; only with root), clock skew (one node runs with `--clock-offset-ms
 * --test` for the whole run), churn (two joins, one `leave`, one `remove`;
 * full run only) and a full disk (one node's home on a small tmpfs, filled up
 * for a while; only with root): that node must refuse writes with a clear
 * error, keep serving reads and lose nothing.
 *
 * After the heal, the checker waits until: every live member sees every other
 * alive, no hints are left, no rebalance is pending, every record is held by
 * exactly the owners the ring names (N, or every member for global tables),
 * every owner holds the same heads, and every node's range summary is the XOR
 * of its records' digests (so the owners' Merkle summaries of each range they
 * share are equal). It reads through `GET /v1/inspect/records` and
 * `/v1/inspect/summary` (admin only). The last line per workload is
 * `chaos <workload>: acked <n>, lost <n>, unknown <n>, converged in <s> s`.
 */
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, open, readFile, rm, unlink, writeFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { NtsoekheClient } from '../../dist/client/index.js'
import { canUseNetns, LoopbackNet, NetnsNet } from './net.js'

const exec = promisify(execFile)
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const BIN = join(ROOT, 'bin', 'ntsoekhe')

/**
 * Daemon settings for the run: failures detected in seconds; anti-entropy and
 * the periodic rebalance (which drops copies left on nodes that no longer own
 * them when the rebalance after a ring change could not) every few seconds,
 * where a clinic's defaults wait minutes.
 */
const DAEMON_CONFIG = {
  storage: { writeBufferMb: 1 },
  replication: { timeoutMs: 2000, rebalanceDelayMs: 1000, rebalanceIntervalMs: 10_000, antiEntropyIntervalMs: 5000 },
  membership: { heartbeatMs: 500, suspectAfterMs: 2000, downAfterMs: 5000 },
  log: { level: 'warn' }
}
/** The workload tables' row ids start here, apart per run part so they never collide */
const SETS_BASE = 1_000_000
const REGISTER_BASE = 2_000_000
const BATCH_BASE = 3_000_000
const DISK_FULL_BASE = 4_000_000
/** How long a daemon may take to answer on its socket after it was started */
const START_MS = 60_000
/** A full disk's tmpfs, MiB: room for the store of a run, filled up on purpose by the nemesis */
const TMPFS_MB = 64

/**
 * The two shapes of a run: `short` for `npm test` (under 2 minutes), `full`
 * for `npm run chaos` (under 15).
 */
export const PROFILES = {
  short: { nodes: 4, workloadMs: 25_000, convergeMs: 60_000, steps: ['kill9', 'partition', 'pause', 'diskfull'], churn: false, stepMs: [3000, 5000] },
  full: { nodes: 5, workloadMs: 240_000, convergeMs: 300_000, steps: ['kill9', 'partition', 'join', 'pause', 'diskfull', 'kill9', 'join', 'partition', 'leave', 'pause', 'remove', 'kill9', 'partition'], churn: true, stepMs: [6000, 12_000] }
}

/** A seeded PRNG (mulberry32): the same seed gives the same choices */
export function prng (seed) {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (list) => list[Math.floor(next() * list.length)]
  }
}

const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))

/** Polls `fn` until it gives a truthy value; fails after `ms` naming what it waited for and the last reason */
async function waitFor (what, fn, ms) {
  const deadline = Date.now() + ms
  let last
  for (;;) {
    try {
      const v = await fn()
      if (v) return v
    } catch (err) {
      // A daemon that exited will not answer: no use waiting for it.
      if (err.fatal === true) throw err
      last = err
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}${last === undefined ? '' : ` (last error: ${last.message})`}`)
    await sleep(250)
  }
}

/**
 * One daemon of the run: its home, namespace, process and client. `up` is
 * false while it is killed, and for good once it left or was removed.
 */
class ChaosNode {
  constructor (run, i) {
    this.run = run
    this.i = i
    this.home = join(run.dir, `n${i}`)
    this.socket = join(this.home, 'api.sock')
    this.proc = undefined
    this.peerId = ''
    this.up = false
    this.gone = false
    this.stopped = false
    this.tmpfs = false
    this.clockOffsetMs = 0
    this.client = undefined
  }

  /** Makes the home (on a small tmpfs when asked) with the run's daemon config */
  async prepare ({ tmpfs = false } = {}) {
    await mkdir(this.home, { recursive: true, mode: 0o700 })
    if (tmpfs) {
      await exec('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_MB}m,mode=0700`, 'tmpfs', this.home])
      this.tmpfs = true
      this.run.mounts.add(this.home)
    }
    await writeFile(join(this.home, 'config.json'), JSON.stringify(DAEMON_CONFIG, null, 2) + '\n', { mode: 0o600 })
  }

  /** Spawns the daemon (joining with `invite` on its first start) and waits until its socket answers */
  async start (invite) {
    const args = [process.execPath, BIN, 'daemon', '--home', this.home, '--listen', this.run.net.listen(this.i), '--test']
    if (invite !== undefined) args.push('--join', invite)
    if (this.clockOffsetMs !== 0) args.push('--clock-offset-ms', String(this.clockOffsetMs))
    const [cmd, ...rest] = [...this.run.net.prefix(this.i), ...args]
    const log = createWriteStream(join(this.run.dir, `n${this.i}.log`), { flags: 'a' })
    const { NTSOEKHE_HOME: _h, NTSOEKHE_TOKEN: _t, ...env } = process.env
    const proc = spawn(cmd, rest, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, CI: 'true' } })
    proc.stdout.pipe(log)
    proc.stderr.pipe(log)
    this.proc = proc
    this.run.procs.add(proc)
    proc.once('exit', () => { this.run.procs.delete(proc) })
    this.stopped = false
    await waitFor(`node ${this.i}'s daemon to answer on ${this.socket}`, async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) throw Object.assign(new Error(`node ${this.i}'s daemon exited (${proc.exitCode ?? proc.signalCode}) before it answered; see ${join(this.run.dir, `n${this.i}.log`)}`), { fatal: true })
      if (this.run.token === undefined) this.run.token = await readToken(this.home)
      this.client?.close()
      this.client = new NtsoekheClient({ socket: this.socket, token: this.run.token, timeout: 8000, writeRetries: 2 })
      const s = await this.client.status()
      this.peerId = s.peerId
      return true
    }, START_MS)
    this.up = true
  }

  /** kill -9: the store is not closed */
  async kill9 () {
    this.up = false
    await signalAndWait(this.proc, 'SIGKILL')
  }

  /** SIGTERM and a clean stop */
  async stop () {
    this.up = false
    await signalAndWait(this.proc, 'SIGTERM')
  }

  pause () { this.stopped = true; this.proc.kill('SIGSTOP') }
  resume () { if (this.stopped) { this.stopped = false; this.proc.kill('SIGCONT') } }
}

async function readToken (home) {
  return (await readFile(join(home, 'admin.token'), 'utf8')).trim()
}

async function signalAndWait (proc, signal) {
  if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return
  const exited = new Promise(resolve => proc.once('exit', resolve))
  if (signal !== 'SIGCONT') proc.kill('SIGCONT')
  proc.kill(signal)
  const timer = setTimeout(() => { proc.kill('SIGKILL') }, 15_000)
  await exited
  clearTimeout(timer)
}

/** How an attempted write ended: acknowledged, refused for sure, or unknown */
function outcomeOf (err) {
  if (err === undefined) return 'acked'
  const code = err.code
  // Refused before anything was written: a 4xx, or no daemon on the socket at all.
  if (['INVALID', 'UNAUTHORIZED', 'FORBIDDEN', 'NOT_FOUND', 'CONFLICT', 'REFERENCE', 'PRECONDITION_FAILED', 'TOO_LARGE', 'UNKNOWN_TABLE'].includes(code)) return 'failed'
  if (err.name === 'NoDaemonError') return 'failed'
  return 'unknown'
}

/** What a workload tried: per operation, its outcome */
class Ledger {
  constructor (name) {
    this.name = name
    this.ops = []
    this.errors = new Map()
  }

  note (op, err) {
    const outcome = outcomeOf(err)
    this.ops.push({ ...op, outcome })
    if (err !== undefined) {
      const key = `${err.code ?? err.name} at ${op.consistency ?? 'quorum'}: ${String(err.message).slice(0, 120)}`
      this.errors.set(key, (this.errors.get(key) ?? 0) + 1)
    }
    return outcome
  }

  count (outcome) { return this.ops.filter(o => o.outcome === outcome).length }
}

/**
 * Runs the chaos suite once.
 * @param {{ profile?: 'short' | 'full', seed?: number, log?: (line: string) => void, keep?: boolean, signal?: AbortSignal }} options
 * @returns {Promise<{ ok: boolean, seed: number, convergedSeconds: number | null, results: Array<{ workload: string, acked: number, lost: number, unknown: number }>, lines: string[], problems: string[] }>}
 */
export async function runChaos (options = {}) {
  const profile = PROFILES[options.profile ?? 'short']
  const seed = options.seed ?? (randomBytes(4).readUInt32LE(0) >>> 1)
  const log = options.log ?? (line => { process.stderr.write(line + '\n') })
  const rnd = prng(seed)
  const runId = randomBytes(3).toString('hex')
  // NTSOEKHE_CHAOS_NET=loopback runs as without root, even as root (to check that mode).
  const netns = process.env.NTSOEKHE_CHAOS_NET !== 'loopback' && await canUseNetns()
  const run = {
    dir: await mkdtemp(join(tmpdir(), `ntkc-${runId}-`)),
    net: netns ? new NetnsNet(runId) : new LoopbackNet(),
    procs: new Set(),
    mounts: new Set(),
    token: undefined
  }
  const problems = []
  const lines = []
  // Interrupted: kill everything now, so whatever the run waits on fails at once and it unwinds to its cleanup.
  let stopWriting = () => {}
  const onAbort = () => { problems.push('interrupted'); stopWriting(); void teardown(run, true).catch(() => {}) }
  options.signal?.addEventListener('abort', onAbort, { once: true })
  log(`chaos: seed ${seed}, ${options.profile ?? 'short'} run ${runId} in ${run.dir}, ${netns ? 'a network namespace per daemon' : 'loopback (without root and ip netns: no partitions, no full disk)'}`)
  try {
    await run.net.setup()
    const nodes = []
    const makeNode = async (tmpfs = false) => {
      const n = new ChaosNode(run, nodes.length)
      nodes.push(n)
      await run.net.addNode(n.i)
      await n.prepare({ tmpfs })
      return n
    }
    // Node 1 runs with its clock ahead for the whole run; the last original node's home is a small tmpfs.
    for (let i = 0; i < profile.nodes; i++) await makeNode(netns && i === profile.nodes - 1)
    nodes[1].clockOffsetMs = rnd.pick([4000, 6000, 8000, -5000])
    await nodes[0].start()
    const { invite } = await nodes[0].client.invite()
    await Promise.all(nodes.slice(1).map(async n => await n.start(invite)))
    await waitAllAlive(nodes.filter(n => n.up), 60_000)
    log(`chaos: ${nodes.length} daemons up; node 1's clock is ${nodes[1].clockOffsetMs} ms off`)

    const ledgers = { sets: new Ledger('sets'), register: new Ledger('register'), batch: new Ledger('batch') }
    const registerIds = [0, 1, 2, 3, 4].map(k => REGISTER_BASE + k)
    for (const id of registerIds) await nodes[0].client.insert('patient_records', patient(id))

    const live = () => nodes.filter(n => n.up && !n.gone)
    const consistency = () => { const r = rnd.next(); return r < 0.15 ? 'one' : r < 0.3 ? 'all' : undefined }
    let writing = true
    // Cleared when the workload ends, and in the finally below when the run stops early (the workers then stop too).
    stopWriting = () => { writing = false }
    let nextSet = SETS_BASE
    let nextBatch = BATCH_BASE
    const worker = async (fn) => {
      while (writing) {
        const choices = live()
        if (choices.length === 0) { await sleep(100); continue }
        const started = Date.now()
        await fn(rnd.pick(choices))
        // A refusal in no time (a daemon between a kill and the nemesis marking it) is not retried in a tight loop.
        if (Date.now() - started < 2) await sleep(10)
      }
    }
    const workers = [
      ...[0, 1, 2].map(() => worker(async n => {
        const id = nextSet++
        const c = consistency()
        try {
          await n.client.insert('patient_records', patient(id), c === undefined ? {} : { consistency: c })
          ledgers.sets.note({ id, node: n.i, consistency: c })
        } catch (err) { ledgers.sets.note({ id, node: n.i, consistency: c }, err) }
      })),
      ...[0, 1].map(w => worker(async n => {
        const id = rnd.pick(registerIds)
        const c = consistency()
        const address = `w${w} ${ledgers.register.ops.length}`
        try {
          const r = await n.client.update('patient_records', id, { address }, c === undefined ? {} : { consistency: c })
          ledgers.register.note({ id, node: n.i, consistency: c, version: r.version })
        } catch (err) { ledgers.register.note({ id, node: n.i, consistency: c }, err) }
      })),
      worker(async n => {
        const id = nextBatch++
        const c = consistency()
        // The patient first (a batch's rows must find the row they reference), then its batch.
        try {
          await n.client.insert('patient_records', patient(id))
        } catch { return }
        try {
          await n.client.batch(batchOps(id), c === undefined ? {} : { consistency: c })
          ledgers.batch.note({ id, node: n.i, consistency: c })
        } catch (err) { ledgers.batch.note({ id, node: n.i, consistency: c }, err) }
      })
    ]

    const started = Date.now()
    const nemesis = new Nemesis({ run, nodes, rnd, log, problems, makeNode, invite: async () => (await live()[0].client.invite()).invite, profile })
    let step = 0
    while (Date.now() - started < profile.workloadMs && options.signal?.aborted !== true) {
      const kind = profile.steps[step % profile.steps.length]
      step++
      await nemesis.step(kind)
      await sleep(rnd.int(1000, 2500))
    }
    // The last fault stays until the heal, so that the heal has something to converge from.
    if (options.signal?.aborted !== true) await nemesis.lastFault()
    writing = false
    await Promise.all(workers)
    log(`chaos: workload done after ${((Date.now() - started) / 1000).toFixed(1)} s, ${step} nemesis steps; healing`)

    // Heal: every link back, every paused node resumed, every killed node restarted.
    const healedAt = Date.now()
    await nemesis.healAll()
    const members = nodes.filter(n => !n.gone)
    let convergedSeconds = null
    try {
      await waitAllAlive(members, profile.convergeMs)
      await converge(members, profile.convergeMs - (Date.now() - healedAt), log)
      convergedSeconds = (Date.now() - healedAt) / 1000
    } catch (err) {
      problems.push(`not converged: ${err.message}`)
    }

    const results = await check(members, ledgers, registerIds, problems)
    for (const l of Object.values(ledgers)) {
      if (l.errors.size > 0) log(`chaos ${l.name}: errors seen: ${[...l.errors].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([m, n]) => `${n}x ${m}`).join('; ')}`)
    }
    for (const p of problems) log(`chaos: PROBLEM ${p}`)
    const shown = convergedSeconds === null ? `>${(profile.convergeMs / 1000).toFixed(1)}` : convergedSeconds.toFixed(1)
    for (const r of results) {
      const line = `chaos ${r.workload}: acked ${r.acked}, lost ${r.lost}, unknown ${r.unknown}, converged in ${shown} s`
      lines.push(line)
      log(line)
    }
    const ok = problems.length === 0 && results.every(r => r.lost === 0) && convergedSeconds !== null
    if (!ok) log(`chaos: FAILED; replay with: npm run chaos -- --seed ${seed}${options.profile === 'short' ? ' --short' : ''} (daemon logs in ${run.dir})`)
    return { ok, seed, convergedSeconds, results, lines, problems }
  } finally {
    stopWriting()
    options.signal?.removeEventListener('abort', onAbort)
    await teardown(run, options.keep === true)
  }
}

/** Kills every daemon of the run, unmounts its tmpfs, deletes its namespaces and (unless kept) its directory */
async function teardown (run, keep) {
  for (const p of run.procs) { p.kill('SIGCONT'); p.kill('SIGKILL') }
  await Promise.all([...run.procs].map(p => new Promise(resolve => { if (p.exitCode !== null || p.signalCode !== null) resolve(); else p.once('exit', resolve) })))
  for (const m of run.mounts) await exec('umount', ['-l', m]).catch(() => {})
  run.mounts.clear()
  await run.net.teardown()
  if (!keep) await rm(run.dir, { recursive: true, force: true })
}

/** Injects one fault at a time and undoes it */
class Nemesis {
  constructor ({ run, nodes, rnd, log, problems, makeNode, invite, profile }) {
    Object.assign(this, { run, nodes, rnd, log, problems, makeNode, invite, profile })
    this.joins = 0
    /** Churn is two joins, one leave and one remove, however long the run */
    this.left = 0
    this.removed = 0
    /** Rows the full-disk step tried to write, each a new id */
    this.probes = 0
  }

  duration () { return this.rnd.int(this.profile.stepMs[0], this.profile.stepMs[1]) }
  members () { return this.nodes.filter(n => !n.gone) }

  async step (kind) {
    const members = this.members()
    // Node 0 keeps the invite going and never leaves; faults hit the others (and node 0 for pauses and kills).
    const victim = this.rnd.pick(members)
    switch (kind) {
      case 'kill9': {
        const ms = this.duration()
        this.log(`nemesis: kill -9 node ${victim.i} for ${ms} ms`)
        await victim.kill9()
        await sleep(ms)
        await victim.start()
        return
      }
      case 'pause': {
        const ms = this.duration()
        this.log(`nemesis: SIGSTOP node ${victim.i} for ${ms} ms`)
        victim.pause()
        await sleep(ms)
        victim.resume()
        return
      }
      case 'partition': {
        if (!this.run.net.canPartition) { this.log('nemesis: partition skipped (needs root and ip netns)'); return }
        const shuffled = [...members].sort(() => this.rnd.next() - 0.5)
        const cut = this.rnd.int(1, Math.floor(shuffled.length / 2))
        const minority = shuffled.slice(0, cut)
        const majority = shuffled.slice(cut)
        const ms = this.duration()
        this.log(`nemesis: partition {${minority.map(n => n.i).join(',')}} | {${majority.map(n => n.i).join(',')}} for ${ms} ms`)
        await this.run.net.partition(minority.map(n => n.i), majority.map(n => n.i))
        await sleep(ms)
        await this.run.net.heal()
        return
      }
      case 'diskfull': return await this.diskFull()
      case 'join': {
        if (this.joins >= 2) return
        this.joins++
        const n = await this.makeNode()
        this.log(`nemesis: node ${n.i} joins`)
        await n.start(await this.invite())
        return
      }
      case 'leave': {
        const candidates = members.filter(n => n.i !== 0 && n.up && !n.tmpfs && n.clockOffsetMs === 0)
        if (this.left >= 1 || candidates.length === 0 || members.length <= 3) return
        this.left++
        const n = this.rnd.pick(candidates)
        this.log(`nemesis: node ${n.i} leaves (ntsoekhe leave)`)
        // Leave is refused while a member is down: after a kill it may take a moment to see it back.
        await waitFor(`node ${n.i} to leave`, async () => { await n.client.leave(); return true }, 60_000)
        n.gone = true
        n.up = false
        await waitFor(`node ${n.i}'s daemon to stop after leaving`, () => n.proc.exitCode !== null || n.proc.signalCode !== null, 30_000)
        return
      }
      case 'remove': {
        const candidates = members.filter(n => n.i !== 0 && n.up && !n.tmpfs && n.clockOffsetMs === 0)
        if (this.removed >= 1 || candidates.length === 0 || members.length <= 3) return
        this.removed++
        const n = this.rnd.pick(candidates)
        this.log(`nemesis: node ${n.i} killed for good and removed (ntsoekhe remove)`)
        await n.kill9()
        n.gone = true
        const by = this.members().filter(m => m.up)[0]
        await waitFor(`node ${n.i} to be marked down`, async () => (await by.client.status()).members.some(m => m.peerId === n.peerId && m.state === 'down'), 60_000)
        await by.client.removeMember(n.peerId)
        return
      }
      default: throw new Error(`unknown nemesis step ${kind}`)
    }
  }

  /**
   * Fills the tmpfs under one node's home, checks that the node refuses a
   * write with a clear error and still serves a read, then frees the space.
   */
  async diskFull () {
    const n = this.nodes.find(m => m.tmpfs && m.up && !m.gone)
    if (n === undefined) { this.log('nemesis: full disk skipped (needs root for a tmpfs)'); return }
    const ms = this.duration()
    this.log(`nemesis: node ${n.i}'s disk full for ${ms} ms`)
    const filler = join(n.home, 'filler')
    await fill(filler)
    try {
      // A write through the full node: refused, saying why. The first may still fit in what LevelDB had buffered.
      let refusal
      for (let k = 0; k < 20 && refusal === undefined; k++) {
        try {
          await n.client.insert('patient_records', patient(DISK_FULL_BASE + this.probes++), { consistency: 'all' })
        } catch (err) { refusal = err }
      }
      if (refusal === undefined) this.problems.push(`node ${n.i} with a full disk took 20 writes at consistency all`)
      else if (!/disk is full/i.test(refusal.message)) this.problems.push(`node ${n.i} with a full disk refused a write without saying why: ${refusal.code}: ${refusal.message}`)
      else this.log(`nemesis: node ${n.i} refused a write: ${refusal.code}: ${refusal.message}`)
      try {
        await n.client.get('patient_records', REGISTER_BASE)
      } catch (err) {
        this.problems.push(`node ${n.i} with a full disk did not serve a read: ${err.code}: ${err.message}`)
      }
      await sleep(ms)
    } finally {
      await unlink(filler).catch(() => {})
    }
  }

  /**
   * A fault left in place while writes go on, for the heal to undo: one node
   * cut off from the others (killed, without namespaces).
   */
  async lastFault () {
    const members = this.members()
    const victim = this.rnd.pick(members.filter(n => n.i !== 0))
    const ms = this.duration()
    if (this.run.net.canPartition) {
      this.log(`nemesis: partition {${victim.i}} | {${members.filter(n => n !== victim).map(n => n.i).join(',')}} until the heal, writing for ${ms} ms`)
      await this.run.net.partition([victim.i], members.filter(n => n !== victim).map(n => n.i))
    } else {
      this.log(`nemesis: kill -9 node ${victim.i} until the heal, writing for ${ms} ms`)
      await victim.kill9()
    }
    await sleep(ms)
  }

  async healAll () {
    await this.run.net.heal()
    for (const n of this.members()) n.resume()
    for (const n of this.members()) if (!n.up) await n.start()
  }
}

/** Writes zeros to `path` until the file system is full */
async function fill (path) {
  const fh = await open(path, 'w')
  const chunk = Buffer.alloc(1024 * 1024)
  try {
    for (;;) {
      try {
        await fh.write(chunk)
      } catch (err) {
        if (err.code === 'ENOSPC') break
        throw err
      }
    }
    // What is left in a partial page.
    for (let size = 64 * 1024; size >= 512; size /= 2) {
      try { await fh.write(chunk.subarray(0, size)) } catch { }
    }
  } finally {
    await fh.close()
  }
}

/** Waits until every node sees every other one alive */
async function waitAllAlive (nodes, ms) {
  const ids = () => new Set(nodes.map(n => n.peerId))
  await waitFor(`${nodes.length} daemons to see each other alive`, async () => {
    const all = await Promise.all(nodes.map(async n => await n.client.status()))
    return all.every(s => {
      const alive = new Set(s.members.filter(m => m.state === 'alive').map(m => m.peerId))
      return [...ids()].every(p => alive.has(p))
    })
  }, ms)
}

/** Every record of a node (`GET /v1/inspect/records`, paged) */
async function listRecords (node) {
  const out = []
  let after
  for (;;) {
    const page = await node.client.request('GET', `/v1/inspect/records?limit=5000${after === undefined ? '' : `&after=${encodeURIComponent(after)}`}`)
    out.push(...page.records)
    if (page.next === null) return out
    after = page.next
  }
}

/**
 * What keeps the replicas from agreeing now: hints, rebalances, records on the
 * wrong nodes or with differing heads, a summary that is not its records'.
 * Empty when converged.
 */
export async function divergence (nodes) {
  const reasons = []
  const views = await Promise.all(nodes.map(async n => ({ n, status: await n.client.status(), summary: await n.client.request('GET', '/v1/inspect/summary'), records: await listRecords(n) })))
  for (const v of views) {
    if (v.status.replication.pendingHints > 0) reasons.push(`node ${v.n.i} keeps ${v.status.replication.pendingHints} hints`)
    if (v.status.replication.rebalance.pending === true) reasons.push(`node ${v.n.i} has a rebalance pending`)
  }
  const byKey = new Map()
  for (const v of views) {
    for (const r of v.records) {
      let e = byKey.get(r.key)
      if (e === undefined) { e = { record: r, holders: new Map() }; byKey.set(r.key, e) }
      e.holders.set(v.n.peerId, r)
    }
  }
  let misplaced = 0
  let differing = 0
  let sample
  for (const [key, e] of byKey) {
    const owners = e.record.owners
    const holders = [...e.holders.keys()]
    const ownersAgree = [...e.holders.values()].every(r => r.owners.join() === owners.join())
    const placed = ownersAgree && holders.length === owners.length && owners.every(o => e.holders.has(o))
    if (!placed) { misplaced++; sample ??= `${e.record.table} ${e.record.id} (${key.slice(0, 16)}) held by ${holders.length}, owners ${owners.length}${ownersAgree ? '' : ' (nodes disagree on its owners)'}` }
    const digests = new Set([...e.holders.values()].map(r => r.digest))
    if (digests.size > 1) differing++
  }
  if (misplaced > 0) reasons.push(`${misplaced} records not on exactly their owners, e.g. ${sample}`)
  if (differing > 0) reasons.push(`${differing} records with differing heads across their holders`)
  for (const v of views) {
    const xor = Array.from({ length: 256 }, () => Buffer.alloc(32))
    for (const r of v.records) {
      const b = parseInt(r.token.slice(0, 2), 16)
      const d = Buffer.from(r.digest, 'hex')
      for (let k = 0; k < 32; k++) xor[b][k] ^= d[k]
    }
    const bad = xor.filter((x, b) => x.toString('hex') !== v.summary.ranges[b]).length
    if (bad > 0) reasons.push(`node ${v.n.i}'s range summary differs from its records in ${bad} ranges`)
  }
  return reasons
}

/** Runs anti-entropy on every node until nothing differs */
async function converge (nodes, ms, log) {
  let last
  const deadline = Date.now() + Math.max(ms, 5000)
  for (let round = 0; ; round++) {
    last = await divergence(nodes)
    if (last.length === 0) return
    if (Date.now() > deadline) throw new Error(last.join('; '))
    if (round % 4 === 0) log(`chaos: converging: ${last.join('; ')}`)
    // One repair round from every node: the background rounds would get there too, more slowly.
    await Promise.all(nodes.map(async n => await n.client.repair({ timeout: 60_000 }).catch(() => {})))
    await sleep(500)
  }
}

/** Checks every workload against what the network holds now */
async function check (nodes, ledgers, registerIds, problems) {
  const reader = nodes[0].client
  const results = []
  const records = new Map()
  for (const n of nodes) {
    for (const r of await listRecords(n)) {
      const k = `${r.table}/${r.id}`
      if (!records.has(k)) records.set(k, new Map())
      records.get(k).set(n.peerId, r)
    }
  }

  // sets: every acknowledged row readable
  {
    const l = ledgers.sets
    let lost = 0
    for (const op of l.ops.filter(o => o.outcome === 'acked')) {
      try {
        const r = await reader.get('patient_records', op.id)
        if (r.row.patient_id !== op.id) throw new Error(`read ${r.row.patient_id}`)
      } catch (err) {
        lost++
        if (lost <= 5) problems.push(`sets: acknowledged patient ${op.id} (through node ${op.node}, consistency ${op.consistency ?? 'quorum'}) is lost: ${err.message}`)
      }
    }
    results.push({ workload: 'sets', acked: l.count('acked'), lost, unknown: l.count('unknown') })
  }

  // register: every acknowledged version in the history
  {
    const l = ledgers.register
    let lost = 0
    const histories = new Map()
    for (const id of registerIds) {
      histories.set(id, new Set((await reader.history('patient_records', id, { consistency: 'all' })).versions.map(v => v.version)))
    }
    for (const op of l.ops.filter(o => o.outcome === 'acked')) {
      if (!histories.get(op.id).has(op.version)) {
        lost++
        if (lost <= 5) problems.push(`register: acknowledged version ${op.version} of patient ${op.id} (through node ${op.node}, consistency ${op.consistency ?? 'quorum'}) is not in its history`)
      }
    }
    results.push({ workload: 'register', acked: l.count('acked'), lost, unknown: l.count('unknown') })
  }

  // batch: all or nothing on every owner, acknowledged ones everywhere
  {
    const l = ledgers.batch
    let lost = 0
    let partial = 0
    for (const op of l.ops) {
      const parts = [`medical_history/${op.id}`, `medical_history/${op.id + 500_000}`, `billing_insurance/${op.id}`].map(k => records.get(k) ?? new Map())
      const owners = [...((records.get(`patient_records/${op.id}`) ?? new Map()).values().next().value?.owners ?? [])]
      const holders = new Set(parts.flatMap(p => [...p.keys()]))
      for (const h of holders) {
        const count = parts.filter(p => p.has(h)).length
        if (count !== 3) { partial++; if (partial <= 5) problems.push(`batch ${op.id} (${op.outcome}) is partly on a node: ${count} of 3 rows`) }
      }
      if (op.outcome === 'acked' && (owners.length === 0 || owners.some(o => parts.some(p => !p.has(o))))) {
        lost++
        if (lost <= 5) problems.push(`batch: acknowledged batch ${op.id} (through node ${op.node}, consistency ${op.consistency ?? 'quorum'}) is missing on some owner`)
      }
    }
    if (partial > 0) problems.push(`batch: ${partial} node copies hold part of a batch`)
    results.push({ workload: 'batch', acked: l.count('acked'), lost, unknown: l.count('unknown') })
  }
  return results
}

function patient (id) {
  return { patient_id: id, patient_name: `Chaos ${id}`, date_of_birth: '1980-01-02', gender: 'F', address: `${id} Main St`, contact_number: '0123456789', email: `c${id}@example.org` }
}

/** One patient's batch: two history entries and a bill, all on the patient's owners */
function batchOps (id) {
  return [
    { op: 'insert', table: 'medical_history', row: { history_id: id, patient_id: id, diagnosis: 'Flu', treatment: 'Rest', date_of_visit: '2026-01-02T10:00:00Z' } },
    { op: 'insert', table: 'medical_history', row: { history_id: id + 500_000, patient_id: id, diagnosis: 'Cough', treatment: 'Tea', date_of_visit: '2026-01-03T10:00:00Z' } },
    { op: 'insert', table: 'billing_insurance', row: { billing_id: id, patient_id: id, amount: '12.50', date: '2026-01-02', insurance_provider: 'X', insurance_policy_number: 'P1' } }
  ]
}
