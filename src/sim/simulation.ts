import { createHash, createPrivateKey, sign as signBytes } from 'node:crypto'
import { format } from 'node:util'
import { privateKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { concat, fromString } from 'uint8arrays'
import type { Consistency, Mutation } from '../cluster/coordinator.js'
import { DistributedCoordinator } from '../cluster/distributed.js'
import type { Signer } from '../cluster/member-claims.js'
import { Membership, type SavedMember } from '../cluster/membership.js'
import { tokenOf } from '../cluster/token.js'
import { TABLES, type Row } from '../schema/index.js'
import { Store, type RecordState } from '../storage/store.js'
import { compareVersions, HybridClock, nodeTag } from '../storage/version.js'
import { SimDisk } from './disk.js'
import { SimNetwork, type NetworkFaults } from './network.js'
import { SeededRandom } from './random.js'
import { SIM_EPOCH, SimScheduler } from './scheduler.js'

export interface SimOptions {
  seed: number
  /** Steps of workload and faults before the final heal. @default 300 */
  steps?: number
  /** Nodes, 5 to 9. @default 5 */
  nodes?: number
  /** Each trace line as it happens (steps, faults, writes; messages too with `messages`) */
  log?: (line: string) => void
  messages?: boolean
  /**
   * For testing the checker itself: runs after each step's faults and time,
   * before the invariants are checked, with every running node's store
   */
  tamper?: (step: number, stores: Store[]) => Promise<void>
}

/** Where a run broke an invariant */
export interface SimFailure {
  /** 1-based step of the workload, or `steps + 1` for the final heal */
  step: number
  phase: 'run' | 'heal'
  message: string
}

export interface SimResult {
  seed: number
  steps: number
  nodes: number
  /** SHA-256 of everything the run did: the same seed gives the same hash */
  traceHash: string
  failure?: SimFailure
  stats: {
    acked: number
    unknown: number
    refused: number
    crashes: number
    restarts: number
    joins: number
    leaves: number
    removals: number
    pauses: number
    partitions: number
    skews: number
    lostUnsynced: number
    events: number
    messages: number
    /** Fake time of the whole run, and of the heal until everything converged, s */
    seconds: number
    convergedInSeconds: number
  }
}

export const MIN_NODES = 5
export const MAX_NODES = 9
export const DEFAULT_STEPS = 300

/** The exact command that replays a run */
export function replayCommand (seed: number, steps: number, nodes: number): string {
  return `npm run sim -- --seed ${seed} --steps ${steps} --nodes ${nodes}`
}

/** The cluster settings every simulated node runs with: the daemon's defaults, with the slow background rounds sped up */
const COORDINATOR = { replicas: 3, writeQuorum: 2, readQuorum: 2, timeoutMs: 5000, handoffIntervalMs: 1000, rebalanceDelayMs: 2000, rebalanceIntervalMs: 60_000, antiEntropyIntervalMs: 20_000, vnodes: 64 }
const MEMBERSHIP = { heartbeatMs: 1000, suspectAfterMs: 3000, downAfterMs: 10_000 }
/** The network once faults stop */
const CALM: NetworkFaults = { loss: 0, duplicate: 0.03, minDelayMs: 1, maxDelayMs: 40 }
/** Fake time the heal may take before the run counts as not converging, ms */
const HEAL_LIMIT_MS = 600_000
/** Quiet fake time before the workload starts (the nodes find each other), ms */
const WARMUP_MS = 5000

/** Error codes that say a write was refused and took no effect */
const DEFINITE = new Set(['CONFLICT', 'NOT_FOUND', 'PRECONDITION_FAILED', 'INVALID'])

const INDEXES = Object.fromEntries(TABLES.map(t => [t.name, t.indexed]))

function patient (i: number, address = `${i} Main St`): Row {
  return { patient_id: i, patient_name: `Patient ${i}`, date_of_birth: '1980-01-02', gender: 'F', address, contact_number: '0123456789', email: `p${i}@example.org` }
}

/** An Ed25519 identity derived from the seed: the same run gives the same peer ids, so the same ring */
function identity (seed: number, index: number): { peerId: string, sign: Signer } {
  const secret = createHash('sha256').update(`ntsoekhe-sim/${seed}/${index}`).digest()
  // createPrivateKey takes its DER as a Buffer (Node 20's types), so these bytes stay one.
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), secret])
  const keyObject = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })
  const jwk = keyObject.export({ format: 'jwk' })
  const key = privateKeyFromRaw(concat([fromString(jwk.d as string, 'base64url'), fromString(jwk.x as string, 'base64url')]))
  // Ed25519 signatures are deterministic: signing with the key object directly gives the same bytes, without a key import per call.
  return { peerId: peerIdFromPrivateKey(key).toString(), sign: data => signBytes(null, data, keyObject) }
}

/** One acknowledged write: what the model says must never be lost */
interface Acked {
  table: string
  id: string
  token: string
  version: string
  step: number
  /** A node last seen holding it (a cache for the check) */
  at?: number
}

class InvariantError extends Error {}

/** One simulated machine: its disk outlives its runs */
class SimNode {
  readonly index: number
  readonly peerId: string
  readonly sign: Signer
  readonly disk = new SimDisk()
  saved: SavedMember[] = []
  skew = 0
  runs = 0
  up = false
  /** Started at least once: a node that has not is yet to join the network */
  joined = false
  /** Announced that it leaves (`ntsoekhe leave`), and handing its records off */
  leaving = false
  /** Left the network for good: its records handed off, the process stopped, its disk no longer counts */
  gone = false
  store?: Store
  membership?: Membership
  coordinator?: DistributedCoordinator
  /** Client writes this run has under way */
  inflight = 0

  constructor (index: number, seed: number) {
    this.index = index
    const id = identity(seed, index)
    this.peerId = id.peerId
    this.sign = id.sign
  }

  get owner (): string {
    return `n${this.index}:${this.runs}`
  }
}

/**
 * A whole network of real cluster nodes (DistributedCoordinator,
 * Membership, AntiEntropy, Store: the daemon's code) in one process, on
 * fake time and one seeded generator, with a nemesis: message loss, delay,
 * reordering, duplication, partitions, crashes that lose unsynced writes,
 * restarts and clock skew. Every step checks that no acknowledged write is
 * lost; the final heal checks that every record converges on exactly its
 * N owners with nothing left in hints.
 */
export class Simulation {
  readonly seed: number
  readonly steps: number
  readonly size: number
  private readonly random: SeededRandom
  private readonly sched = new SimScheduler()
  private readonly net: SimNetwork
  private readonly nodes: SimNode[] = []
  private readonly hash = createHash('sha256')
  private readonly acked: Acked[] = []
  private readonly log?: (line: string) => void
  private readonly tamper?: (step: number, stores: Store[]) => Promise<void>
  private nextPatient = 1
  /** Most patients one bulk write sends */
  private readonly bulk: number
  /** Write ids of writes refused for good (409, 404, 412, 400): none may be stored anywhere */
  private readonly refusedWrites = new Map<string, string>()
  private nextVisit = 1
  /** Every batch sent (acknowledged or not): after the heal each is on the network entirely or not at all */
  private readonly batches: Array<{ records: Array<{ table: string, id: string }>, what: string }> = []
  private step = 0
  private readonly stats: SimResult['stats'] = { acked: 0, unknown: 0, refused: 0, crashes: 0, restarts: 0, joins: 0, leaves: 0, removals: 0, pauses: 0, partitions: 0, skews: 0, lostUnsynced: 0, events: 0, messages: 0, seconds: 0, convergedInSeconds: 0 }

  constructor (options: SimOptions) {
    this.seed = options.seed
    this.steps = options.steps ?? DEFAULT_STEPS
    this.size = options.nodes ?? MIN_NODES
    if (!Number.isSafeInteger(this.seed) || this.seed < 0) throw new RangeError('the seed is a non-negative integer')
    if (!Number.isSafeInteger(this.steps) || this.steps < 0) throw new RangeError('steps is a non-negative integer')
    if (!Number.isInteger(this.size) || this.size < MIN_NODES || this.size > MAX_NODES) throw new RangeError(`nodes is ${MIN_NODES} to ${MAX_NODES}`)
    if (options.log !== undefined) this.log = options.log
    if (options.tamper !== undefined) this.tamper = options.tamper
    this.random = new SeededRandom(this.seed)
    // Each seed its own weather: from a few lost packets to a lossy, slow, stuttering network.
    const stormy: NetworkFaults = {
      loss: this.random.pick([0.01, 0.03, 0.1]),
      duplicate: this.random.pick([0, 0.03, 0.1]),
      minDelayMs: 1,
      maxDelayMs: this.random.pick([20, 120, 1000])
    }
    this.net = new SimNetwork(this.sched, this.random.fork(), stormy)
    // And its own workload: most seeds write a few patients per batch, some many (hand-offs of several batches).
    this.bulk = this.random.pick([3, 3, 3, 60])
    this.net.onDeliver = line => {
      this.hash.update(line)
      if (options.messages === true) this.log?.(`  ${this.time()} ${line}`)
    }
    for (let i = 0; i < this.size; i++) this.nodes.push(new SimNode(i, this.seed))
  }

  private time (): string {
    return `${((this.sched.now - SIM_EPOCH) / 1000).toFixed(3)}s`
  }

  private trace (line: string): void {
    this.hash.update(`${this.sched.now} ${line}\n`)
    this.log?.(`${this.time()} step ${this.step}: ${line}`)
  }

  /** Runs the whole simulation: start, the steps, the heal; stops at the first broken invariant */
  async run (): Promise<SimResult> {
    let failure: SimFailure | undefined
    try {
      const f = this.net.faults
      this.trace(`${this.size} nodes; network: ${f.loss * 100}% loss, ${f.duplicate * 100}% duplicates, delays ${f.minDelayMs}-${f.maxDelayMs} ms; bulk writes of up to ${this.bulk} patients`)
      // Up to two nodes join later, while the others write: their ring shares move to them.
      const late = this.random.int(0, 2)
      for (const node of this.nodes.slice(0, this.size - late)) await this.start(node)
      await this.advance(WARMUP_MS)
      for (this.step = 1; this.step <= this.steps; this.step++) {
        const span = this.random.int(1, 800)
        await this.act(span)
        await this.advance(span)
        if (this.tamper !== undefined) await this.drive(this.tamper(this.step, this.live().map(n => n.store as Store)))
        await this.checkNothingLost()
      }
      this.step = this.steps + 1
      await this.heal()
    } catch (err) {
      const phase = this.step > this.steps ? 'heal' : 'run'
      failure = { step: this.step, phase, message: err instanceof InvariantError ? err.message : `${(err as Error).stack ?? String(err)}` }
      this.trace(`FAILED: ${failure.message}`)
    }
    this.stats.events = this.sched.ran
    this.stats.messages = this.net.delivered
    this.stats.seconds = Math.round((this.sched.now - SIM_EPOCH) / 1000)
    const result: SimResult = { seed: this.seed, steps: this.steps, nodes: this.size, traceHash: this.hash.digest('hex'), stats: this.stats }
    if (failure !== undefined) result.failure = failure
    return result
  }

  /** Waits for work done from outside the nodes (its commits and fsyncs are events too), fake time running meanwhile */
  private async drive (work: Promise<void>): Promise<void> {
    let done = false
    const finished = work.finally(() => { done = true })
    for (let waited = 0; !done && waited < 60_000; waited += 10) await this.advance(10)
    await finished
  }

  private async advance (ms: number): Promise<void> {
    await this.sched.runUntil(this.sched.now + ms)
  }

  private async start (node: SimNode): Promise<void> {
    node.runs++
    node.joined = true
    const owner = node.owner
    const env = this.sched.env(owner, () => node.skew, this.random.fork())
    // A synced write takes 1 to 10 ms of fake time (once the node runs: opening the store is instant).
    let running = false
    const fsync = async (): Promise<void> => {
      if (!running) return
      await new Promise<void>(resolve => { env.setTimeout(resolve, this.random.int(1, 10)) })
    }
    const store = new Store({ path: `sim/n${node.index}`, db: node.disk.open(fsync), env, plaintext: true, sync: true, indexes: INDEXES })
    await store.open()
    const transport = this.net.transport(node.peerId, owner)
    const membership = new Membership({
      transport,
      peerId: node.peerId,
      sign: node.sign,
      addresses: () => [`/sim/${node.index}`],
      persist: async members => { node.saved = members },
      ...(this.log === undefined ? {} : { warn: (line: string) => { this.log?.(`${this.time()}   n${node.index}: ${line}`) } }),
      env
    }, MEMBERSHIP)
    // As a daemon does: its configured bootstrap peers (the first node at the start; later up to three
    // running members, as an operator lists them: one alone may leave before the newcomer reaches it),
    // then the members it saved.
    const bootstraps = this.nodes.filter(n => n !== node && n.up && !n.leaving).slice(0, 3)
    for (const peer of bootstraps.length > 0 ? bootstraps : [this.nodes[node.index === 0 ? 1 : 0] as SimNode]) membership.addCandidate(peer.peerId)
    membership.restore(node.saved)
    const clock = new HybridClock(nodeTag(node.peerId), env.now)
    // With --verbose, what each node logs (not part of the trace hash: logging changes nothing).
    const log = this.log === undefined ? undefined : (msg: string, ...args: unknown[]): void => { this.log?.(`${this.time()}   n${node.index}: ${format(msg, ...args)}`) }
    const coordinator = new DistributedCoordinator({ store, clock, peerId: node.peerId, transport, membership, env, ...(log === undefined ? {} : { log }) }, COORDINATOR)
    await coordinator.start()
    membership.start()
    running = true
    node.store = store
    node.membership = membership
    node.coordinator = coordinator
    node.up = true
  }

  /** Power cut: the process is gone mid-flight, its unsynced writes partly lost */
  private crash (node: SimNode): void {
    node.up = false
    this.sched.cancelOwner(node.owner)
    this.net.down(node.peerId)
    const { lost } = node.disk.crash(this.random)
    this.stats.lostUnsynced += lost
    this.stats.unknown += node.inflight
    node.inflight = 0
    this.trace(`crash n${node.index} (lost ${lost} unsynced writes)`)
  }

  /** Running nodes a client uses, or a fault strikes: not one that is leaving */
  private live (): SimNode[] {
    return this.nodes.filter(n => n.up && !n.leaving)
  }

  /** Nodes that belong to the network (joined, not gone): the final ring */
  private members (): SimNode[] {
    return this.nodes.filter(n => n.joined && !n.gone)
  }

  /**
   * `ntsoekhe leave` as the daemon runs it (src/daemon/node.ts): refused
   * while a member is down; else the node announces it and drains (rebalance
   * rounds until it holds nothing), then stops. A drain that times out is
   * run again, as an operator would.
   */
  private leave (node: SimNode): void {
    const membership = node.membership as Membership
    const coordinator = node.coordinator as DistributedCoordinator
    if (membership.members().some(m => m.state === 'down') || membership.liveMembers().length < 2) return
    node.leaving = true
    this.stats.leaves++
    this.trace(`leave n${node.index}`)
    const run = node.runs
    const drain = async (): Promise<void> => {
      await membership.leave()
      for (;;) {
        try {
          const { handedOff, rounds } = await coordinator.drain(120_000)
          return this.trace(`n${node.index} left: ${handedOff} records handed off in ${rounds} rounds`)
        } catch (err) {
          this.trace(`n${node.index} drain: ${(err as Error).message.slice(0, 120)}; again`)
        }
      }
    }
    drain().then(() => {
      if (node.runs !== run || !node.up) return
      // The daemon stops once it has left: gone for good, with its disk.
      node.up = false
      node.gone = true
      this.sched.cancelOwner(node.owner)
      this.net.down(node.peerId)
    }, (err: unknown) => { this.trace(`n${node.index} leave failed: ${(err as Error).message}`) })
  }

  /** One step of workload or fault, drawn from the seed; the step then lasts `span` ms of fake time */
  private async act (span: number): Promise<void> {
    const r = this.random.next()
    const live = this.live()
    const down = this.nodes.filter(n => n.joined && !n.up && !n.gone)
    const unjoined = this.nodes.filter(n => !n.joined)
    if (unjoined.length > 0 && this.random.chance(0.03)) {
      const node = unjoined[0] as SimNode
      this.stats.joins++
      this.trace(`join n${node.index}`)
      await this.start(node)
    } else if (r < 0.42) {
      this.write(this.random.pick(live))
    } else if (r < 0.5) {
      this.writeBatch(this.random.pick(live))
    } else if (r < 0.56) {
      this.read(this.random.pick(live))
    } else if (r < 0.62) {
      // At most a minority down at once: a majority must stay to make progress.
      if (down.length < Math.floor((this.size - 1) / 2)) {
        // At any moment of the step: in the middle of a write, a commit, a hand-off.
        const node = this.random.pick(live)
        const run = node.runs
        this.stats.crashes++
        this.sched.at(this.sched.now + this.random.int(0, span - 1), 'sim', () => { if (node.up && node.runs === run) this.crash(node) })
      }
    } else if (r < 0.7) {
      if (down.length > 0) {
        const node = this.random.pick(down)
        this.stats.restarts++
        this.trace(`restart n${node.index}`)
        await this.start(node)
      }
    } else if (r < 0.74) {
      this.stats.partitions++
      this.partition()
    } else if (r < 0.79) {
      this.net.healAll()
      this.trace('heal partitions')
    } else if (r < 0.815) {
      // A node frozen (SIGSTOP, a VM paused, a long GC), then continued: its timers and messages wait.
      const node = this.random.pick(live)
      const ms = this.random.int(500, 15_000)
      this.stats.pauses++
      this.trace(`pause n${node.index} for ${ms} ms`)
      this.sched.pause(node.owner, this.sched.now + ms)
    } else if (r < 0.84) {
      // An operator declares a down member gone (ntsoekhe remove) on a node that sees it down; if it
      // comes back after all, it refutes the removal and is a member again.
      const candidates = down.flatMap(d => live.filter(n => n.membership?.stateOf(d.peerId) === 'down').map(by => ({ d, by })))
      if (candidates.length > 0) {
        const { d, by } = this.random.pick(candidates)
        this.stats.removals++
        this.trace(`remove n${d.index} through n${by.index}`)
        ;(by.membership as Membership).remove(d.peerId)
      }
    } else if (r < 0.86) {
      // One node at most leaves for good, while at least four stay.
      if (this.nodes.every(n => !n.leaving) && this.members().length > 4) this.leave(this.random.pick(live))
    } else if (r < 0.88) {
      const node = this.random.pick(this.nodes)
      // Mostly within the tolerated skew (60 s), now and then beyond it.
      node.skew = this.random.chance(0.2) ? this.random.pick([-1, 1]) * this.random.int(60_000, 90_000) : this.random.int(-5000, 5000)
      this.stats.skews++
      this.trace(`skew n${node.index} ${node.skew} ms`)
    }
  }

  private partition (): void {
    this.net.healAll()
    const side = this.nodes.filter(() => this.random.chance(0.5))
    const other = this.nodes.filter(n => !side.includes(n))
    for (const a of side) for (const b of other) this.net.partition(a.peerId, b.peerId)
    this.trace(`partition {${side.map(n => n.index).join(',')}} | {${other.map(n => n.index).join(',')}}`)
  }

  /** A client write through `node`: an insert of a new patient, or an update without If-Match of one already acknowledged */
  private write (node: SimNode): void {
    const consistency: Consistency = this.random.pick(['one', 'quorum', 'quorum', 'all'])
    const update = this.acked.length > 0 && this.random.chance(0.5)
    let mutation: Mutation
    if (update) {
      const target = this.random.pick(this.acked)
      const i = Number(target.id)
      mutation = { op: 'put', table: 'patient_records', id: target.id, shard: `patient_id:${i}`, row: patient(i, `${i} Street ${this.step}`), changed: ['address'] }
    } else {
      const i = this.nextPatient++
      mutation = { op: 'insert', table: 'patient_records', id: String(i), shard: `patient_id:${i}`, row: patient(i) }
    }
    // The client write's id (the coordinator would draw one): a write refused for good must not be stored under it.
    mutation.writeId = this.random.bytes(8).toString('hex')
    const coordinator = node.coordinator as DistributedCoordinator
    const run = node.runs
    const step = this.step
    const what = `${mutation.op} patient ${mutation.id} at ${consistency} through n${node.index}`
    this.trace(what)
    node.inflight++
    coordinator.write([mutation], { consistency }).then(results => {
      if (node.runs !== run || !node.up) return
      node.inflight--
      for (const r of results) {
        this.acked.push({ table: r.table, id: r.id, token: tokenOf(mutation.shard), version: r.version, step, at: node.index })
        this.stats.acked++
        this.trace(`acked ${what}: ${r.version}`)
      }
    }, (err: unknown) => {
      if (node.runs !== run || !node.up) return
      node.inflight--
      const code = (err as { code?: string }).code ?? ''
      if (DEFINITE.has(code)) {
        this.stats.refused++
        this.refusedWrites.set(mutation.writeId as string, `${what} (step ${step}): ${code}`)
      } else {
        this.stats.unknown++
      }
      this.trace(`refused ${what}: ${(err as Error).message.slice(0, 120)}`)
    })
  }

  /**
   * A bulk write through `node` (writeGroups, as an import sends): one to
   * three new patients, each with a visit in medical_history, one group per
   * patient (both rows share the patient's shard key: all or nothing)
   */
  private writeBatch (node: SimNode): void {
    const consistency: Consistency = this.random.pick(['one', 'quorum', 'all'])
    const groups: Mutation[][] = []
    for (let n = this.random.int(1, this.bulk); n > 0; n--) {
      const i = this.nextPatient++
      const h = this.nextVisit++
      const shard = `patient_id:${i}`
      const writeId = this.random.bytes(8).toString('hex')
      groups.push([
        { op: 'insert', table: 'patient_records', id: String(i), shard, row: patient(i), writeId },
        { op: 'insert', table: 'medical_history', id: String(h), shard, row: { history_id: h, patient_id: i, diagnosis: 'Flu', treatment: 'Rest', date_of_visit: '2026-01-02T10:00:00Z' }, writeId }
      ])
    }
    const coordinator = node.coordinator as DistributedCoordinator
    const run = node.runs
    const step = this.step
    const what = `batch of patients ${groups.map(g => g[0]?.id).join(',')} at ${consistency} through n${node.index}`
    for (const g of groups) this.batches.push({ records: g.map(m => ({ table: m.table, id: m.id })), what })
    this.trace(what)
    node.inflight++
    coordinator.writeGroups(groups, { consistency }).then(outcomes => {
      if (node.runs !== run || !node.up) return
      node.inflight--
      outcomes.forEach((o, gi) => {
        const shard = (groups[gi]?.[0] as Mutation).shard
        if (!o.ok) {
          if (DEFINITE.has(o.error.code)) {
            this.stats.refused++
            this.refusedWrites.set((groups[gi]?.[0] as Mutation).writeId as string, `group ${shard} of ${what} (step ${step}): ${o.error.code}`)
          } else {
            this.stats.unknown++
          }
          this.trace(`refused group ${shard} of ${what}: ${o.error.message.slice(0, 120)}`)
          return
        }
        for (const r of o.results) {
          this.acked.push({ table: r.table, id: r.id, token: tokenOf(shard), version: r.version, step, at: node.index })
          this.stats.acked++
        }
        this.trace(`acked group ${shard} of ${what}: ${o.results.map(r => r.version).join(',')}`)
      })
    }, (err: unknown) => {
      if (node.runs !== run || !node.up) return
      node.inflight--
      this.stats.unknown += groups.length
      this.trace(`refused ${what}: ${(err as Error).message.slice(0, 120)}`)
    })
  }

  /** A quorum read through `node` (its read repair is part of the healing under test) */
  private read (node: SimNode): void {
    if (this.acked.length === 0) return
    const target = this.random.pick(this.acked)
    const coordinator = node.coordinator as DistributedCoordinator
    this.trace(`read patient ${target.id} through n${node.index}`)
    coordinator.read(target.table, target.id, `patient_id:${target.id}`).then(state => {
      this.trace(`read patient ${target.id}: ${state?.heads.map(h => h.version).join(',') ?? 'none'}`)
    }, (err: unknown) => {
      this.trace(`read patient ${target.id} failed: ${(err as Error).message.slice(0, 120)}`)
    })
  }

  /** Whether `node` holds the version: in its store when it runs, on its disk when it is down (not once it left) */
  private async holds (node: SimNode, a: Acked): Promise<boolean> {
    if (node.gone) return false
    if (!node.up) return node.disk.contains(`"version":"${a.version}"`)
    const store = node.store as Store
    if ((await store.versions(a.table, a.token, a.id)).some(v => v.version === a.version)) return true
    for (const peer of await store.hintedPeers()) {
      if ((await store.hintsFor(peer, 1_000_000)).some(h => h.entries.some(e => e.version === a.version))) return true
    }
    return false
  }

  /** Every acknowledged version is still somewhere: a live store, a hint, or the disk of a node that is down */
  private async checkNothingLost (): Promise<void> {
    for (const a of this.acked) {
      const cached = a.at === undefined ? undefined : this.nodes[a.at]
      if (cached !== undefined && await this.holds(cached, a)) continue
      const holder = await this.findHolder(a)
      if (holder === undefined) {
        throw new InvariantError(`acknowledged write lost: ${a.table} ${a.id} version ${a.version} (acknowledged at step ${a.step}) is on no node, live or down`)
      }
      a.at = holder.index
    }
  }

  private async findHolder (a: Acked): Promise<SimNode | undefined> {
    for (const node of this.nodes) if (await this.holds(node, a)) return node
    return undefined
  }

  /**
   * The final heal: every node back, every link restored, no more message
   * loss; then fake time runs until every record is on exactly its owners
   * with the same heads and no hints are left, or the limit passes.
   */
  private async heal (): Promise<void> {
    this.net.healAll()
    this.net.faults = CALM
    for (const node of this.nodes) {
      if (node.up || node.gone) continue
      if (node.joined) this.stats.restarts++
      else this.stats.joins++
      await this.start(node)
    }
    this.trace('final heal: every node up, every link restored, no loss')
    const started = this.sched.now
    let reason = ''
    while (this.sched.now - started < HEAL_LIMIT_MS) {
      await this.advance(5000)
      await this.checkNothingLost()
      reason = await this.divergence()
      if (reason === '') {
        const held = await this.heldRecords()
        this.checkBatches(held)
        await this.checkRefusals(held)
        this.stats.convergedInSeconds = Math.round((this.sched.now - started) / 1000)
        this.trace(`converged after ${this.stats.convergedInSeconds} s`)
        for (const node of this.members()) this.hash.update((node.store as Store).summary.bucketDigests().join(''))
        return
      }
    }
    throw new InvariantError(`replicas did not converge within ${HEAL_LIMIT_MS / 1000} s of fake time after the heal: ${reason}`)
  }

  /** Every record on any node (`table/id`), with the nodes that hold it and their states */
  private async heldRecords (): Promise<Map<string, Array<{ node: SimNode, state: RecordState }>>> {
    const holders = new Map<string, Array<{ node: SimNode, state: RecordState }>>()
    for (const node of this.nodes) {
      for await (const state of (node.store as Store).scanRecords()) {
        const key = `${state.table}/${state.id}`
        const list = holders.get(key) ?? []
        list.push({ node, state })
        holders.set(key, list)
      }
    }
    return holders
  }

  /** Each group of a batch (one patient's rows) is on the network entirely or not at all, acknowledged or not */
  private checkBatches (holders: Map<string, unknown>): void {
    for (const b of this.batches) {
      const present = b.records.filter(r => holders.has(`${r.table}/${r.id}`))
      if (present.length > 0 && present.length < b.records.length) {
        throw new InvariantError(`a group of a ${b.what} landed in part: ${present.map(r => `${r.table} ${r.id}`).join(', ')} without the rest`)
      }
    }
  }

  /** A write refused for good (409, 404, 412, 400) took no effect: no stored version carries its write id */
  private async checkRefusals (holders: Map<string, Array<{ node: SimNode, state: RecordState }>>): Promise<void> {
    if (this.refusedWrites.size === 0) return
    for (const list of holders.values()) {
      for (const { node, state } of list) {
        for (const v of await (node.store as Store).versions(state.table, state.token, state.id)) {
          const refused = v.writeId === undefined ? undefined : this.refusedWrites.get(v.writeId)
          if (refused !== undefined) throw new InvariantError(`a write refused for good took effect: ${refused}, yet ${state.table} ${state.id} version ${v.version} on n${node.index} carries its write id`)
        }
      }
    }
  }

  /** What still differs ('' once converged): ring views, hints, and each record's holders and heads */
  private async divergence (): Promise<string> {
    const members = this.members()
    if (members.some(n => n.leaving && !n.gone)) return 'a node is still handing its records off to leave'
    for (const node of members) {
      const c = node.coordinator as DistributedCoordinator
      if (c.ring.size !== members.length) return `n${node.index} sees ${c.ring.size} ring members of ${members.length}`
      const hints = (node.store as Store).hintCount()
      if (hints > 0) return `n${node.index} still keeps ${hints} hints`
    }
    const holders = await this.heldRecords()
    for (const a of this.acked) if (!holders.has(`${a.table}/${a.id}`)) return `${a.table} ${a.id} (acknowledged) is held by no node`
    const ring = (members[0] as SimNode).coordinator as DistributedCoordinator
    for (const [key, list] of holders) {
      const first = list[0] as { state: RecordState }
      const owners = ring.owners(first.state.table, first.state.token)
      const held = list.map(h => h.node.peerId)
      const name = (peerId: string): string => `n${this.nodes.findIndex(n => n.peerId === peerId)}`
      const missing = owners.filter(o => !held.includes(o))
      const extra = held.filter(p => !owners.includes(p))
      if (missing.length > 0 || extra.length > 0) {
        return `${key} is on ${held.map(name).join(',')}, its owners are ${owners.map(name).join(',')}`
      }
      // Whatever the clocks said when they were written, every version sorts above its parents.
      for (const { node, state } of list) {
        for (const v of await (node.store as Store).versions(state.table, state.token, state.id)) {
          const below = v.parents.find(p => compareVersions(p, v.version) >= 0)
          if (below !== undefined) throw new InvariantError(`${key} on ${name(node.peerId)}: version ${v.version} does not sort above its parent ${below}`)
        }
      }
      const heads = list.map(h => h.state.heads.map(v => v.version).sort().join(','))
      if (new Set(heads).size > 1) return `${key} has different heads on its owners: ${list.map((h, i) => `${name(h.node.peerId)} [${heads[i] ?? ''}]`).join(' ')}`
    }
    return ''
  }
}

/** Runs one seeded simulation (see Simulation) */
export async function runSimulation (options: SimOptions): Promise<SimResult> {
  return await new Simulation(options).run()
}
