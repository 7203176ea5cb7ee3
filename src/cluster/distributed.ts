import { drive } from './drive.js'
import { ForbiddenError, InvalidMessageError, NtsoekheError, TimeoutError, UnavailableError } from '../errors/index.js'
import { findTable } from '../schema/index.js'
import type { PurgeMarker, RecordState, Store, VersionEntry } from '../storage/store.js'
import { winner } from '../storage/store.js'
import type { HybridClock } from '../storage/version.js'
import { compareVersions, isVersion } from '../storage/version.js'
import { AntiEntropy } from './anti-entropy.js'
import { ApplyBatcher } from './apply-batcher.js'
import type { ClusterStatus, Consistency, Coordinator, FragmentAnswer, GroupOutcome, InsertOutcome, Mutation, QueryPage, RequestOptions, ScanPage, ScanRequest, WriteResult } from './coordinator.js'
import { orderByLiveness, requiredAcks } from './decisions.js'
import { HandoffRound, type HandoffEffect } from './core/handoff.js'
import { RebalanceRun, type RebalanceEffect } from './core/rebalance.js'
import { QuorumAsk, type AskEffect } from './core/ask.js'
import { readPlan, repairsFor, needsRepair, sameVersions, type CatchUpKey } from './core/read.js'
import { errorBody, PrimaryBatch, PrimaryWrite, type BatchEffect, type PrimaryEffect } from './core/primary.js'
import { batchAnswerStands, batchFailure, failureKind, groupsByPrimary, isNoAnswer, isUnreachable, WriteRoute } from './core/route.js'
import { RowCount, type CountEffect, type NetworkRowCounts } from './core/count.js'
import { InsertBatch, type InsertEffect } from './core/insert.js'
import { PurgeFanOut, type PurgeEffect } from './core/purge.js'
import { SloppyWrite, type SloppyEffect } from './core/sloppy.js'
import type { RowPage, RowQuery } from '../storage/ordered.js'
import { mergeQuery, singleShardOf, type OwnedRange } from './query-merge.js'
import { checkFragmentResults, mergeResults, runFragment, storeSource, type Fragment, type FragmentResult, type FragmentSource } from '../query/fragment.js'
import type { Condition } from '../schema/condition.js'
import type { TableDef } from '../schema/index.js'
import { mergeStates } from './merge.js'
import type { Membership } from './membership.js'
import { AUDIT_TABLE, checkEntry, checkQueryPage, checkScanPage, checkState, parseReplicaMessage, type ReplicaMessage } from './messages.js'
import { recallWrites } from './idempotency.js'
import { mutationKey } from './mutations.js'
import { HashRing } from './ring.js'
import { tokenOf } from './token.js'
import type { PeerTransport } from './transport.js'
import { REAL_ENV, sleep, type Environment, type TimerHandle } from '../util/env.js'

export interface DistributedCoordinatorComponents {
  store: Store
  clock: HybridClock
  peerId: string
  transport: PeerTransport
  membership: Membership
  log?: (msg: string, ...args: unknown[]) => void
  /** The clock, timers and random draws. @default REAL_ENV (the simulation gives fake time and a seeded generator) */
  env?: Environment
}

export interface DistributedCoordinatorInit {
  /** Copies of every record (N). @default 3 */
  replicas?: number
  /** Replicas that must have a write on disk (W). @default 2 */
  writeQuorum?: number
  /** Replicas asked on a read (R). @default 2 */
  readQuorum?: number
  /** How long to wait for one replica, ms. @default 5000 */
  timeoutMs?: number
  /** How often hints for returned replicas are handed off, ms. @default 1000 */
  handoffIntervalMs?: number
  /** Virtual nodes per member on the ring. @default 256 */
  vnodes?: number
  /** Quiet time after the ring last changed before records move to their new owners, ms. @default 2000 */
  rebalanceDelayMs?: number
  /** How often a node looks for copies it no longer owns, ms. @default 600000 */
  rebalanceIntervalMs?: number
  /** How often a background anti-entropy round compares this node's ranges with their co-owners, ms. @default 600000 */
  antiEntropyIntervalMs?: number
  /** Bytes anti-entropy sends per second, in megabits. @default 10 */
  syncBandwidthMbps?: number
}

/** Rows per table across the network (see DistributedCoordinator.networkRowCounts) */
export type { NetworkRowCounts }

/** What the last rebalance (hand-off of records to their owners after the ring changed) did */
export interface RebalanceStatus {
  /** A rebalance is scheduled or running */
  pending: boolean
  last?: {
    finishedAt: number
    /** Local records looked at */
    records: number
    /** Records sent to owners that gained them */
    sent: number
    /** Copies this node no longer owns, removed once every owner had them */
    dropped: number
    /** Records that could not be handed off this time */
    failed: number
  }
  /** The rebalance running now, so far (the same counts as `last`): absent when none runs */
  running?: { startedAt: number, records: number, sent: number, dropped: number, failed: number }
}

/** How long a member may take over its part of a query fragment (a scan of its share): far longer than a read */
const FRAGMENT_TIMEOUT_MS = 60_000

/** Where the ring of the last finished rebalance is kept in the store */
const PLACED_FOR_KEY = 'placedFor'

function sameMembers (a: string[], b: string[]): boolean {
  return a.length === b.length && [...a].sort().join(',') === [...b].sort().join(',')
}

/**
 * The networked coordinator. Each key's first live owner on the ring is its
 * primary: it orders writes, takes parents from its own copy, makes the new
 * version durable locally and sends it to the other owners, answering after
 * W have it on disk. Reads ask R owners, merge their heads and repair stale
 * copies. A write a down owner missed is kept as a hint and handed off when
 * it returns.
 */
export class DistributedCoordinator implements Coordinator {
  private readonly c: DistributedCoordinatorComponents
  private readonly env: Environment
  /** Random write ids, drawn 512 at a time (see newWriteId) */
  private writeIds: Buffer = Buffer.alloc(0)
  private writeIdAt = 0
  readonly replicas: number
  readonly writeQuorum: number
  readonly readQuorum: number
  private readonly timeoutMs: number
  /** A forwarded write's wait: the primary's own wait for replicas plus a round trip */
  private readonly forwardTimeout: number
  private readonly handoffIntervalMs: number
  readonly ring: HashRing
  /** Compares and repairs what this node and its co-owners hold (see anti-entropy.ts) */
  readonly antiEntropy: AntiEntropy
  private readonly batcher: ApplyBatcher
  private handoffTimer?: TimerHandle
  private handingOff = false
  private unsubscribe?: () => void
  private readonly vnodes: number | undefined
  private readonly rebalanceDelayMs: number
  private readonly rebalanceIntervalMs: number
  /** Ring members when records last finished moving to their owners */
  private placedFor: string[] = []
  private rebalanceTimer?: TimerHandle
  private rebalanceInterval?: TimerHandle
  private rebalancing?: Promise<void>
  private rebalanceAgain = false
  private lastRebalance?: RebalanceStatus['last']
  /** The rebalance running now, for its progress */
  private rebalanceRun?: { run: RebalanceRun, startedAt: number }
  /** Copies dropped by every rebalance since start */
  private droppedTotal = 0
  /** Rebalances in a row that could not hand everything off (the retry waits longer each time) */
  private rebalanceFailures = 0
  private stopped = false
  /** Copies of records this node does not own were written here at `one` (sloppyWrite): a rebalance after the next handoff moves them */
  private sloppyHeld = false
  /** Read repairs sent since start (copies found stale by a read and brought up to date) */
  readRepairs = 0
  /** Records whose local commit failed after their write was ordered (`table/id`): caught up before the next write */
  private readonly missed = new Set<string>()

  constructor (components: DistributedCoordinatorComponents, init: DistributedCoordinatorInit = {}) {
    this.c = components
    this.env = components.env ?? REAL_ENV
    this.replicas = init.replicas ?? 3
    this.writeQuorum = init.writeQuorum ?? 2
    this.readQuorum = init.readQuorum ?? 2
    this.timeoutMs = init.timeoutMs ?? 5000
    this.forwardTimeout = this.timeoutMs * 2 + 1000
    this.handoffIntervalMs = init.handoffIntervalMs ?? 1000
    this.vnodes = init.vnodes
    this.ring = new HashRing(init.vnodes === undefined ? {} : { vnodes: init.vnodes })
    this.rebalanceDelayMs = init.rebalanceDelayMs ?? 2000
    this.rebalanceIntervalMs = init.rebalanceIntervalMs ?? 600_000
    this.batcher = new ApplyBatcher(components.transport, this.timeoutMs, this.env.defer)
    components.transport.handle('replica', async (msg, from) => await this.onMessage(msg, from), {
      accept: peer => {
        if (components.membership.mayReplicate(peer)) return true
        components.membership.report(peer, `refused a replica stream from ${peer}: not a member of this network`)
        return false
      }
    })
    this.antiEntropy = new AntiEntropy({
      store: components.store,
      transport: components.transport,
      peerId: components.peerId,
      // Suspect members too: a slow member is still worth asking, and one that does not answer only fails its part.
      peers: () => this.ring.list().map(m => m.peerId).filter(p => p !== components.peerId && ['alive', 'suspect'].includes(components.membership.stateOf(p) ?? 'down')),
      owners: (table, token) => this.owners(table, token),
      mayServe: peer => {
        if (components.membership.mayReplicate(peer)) return true
        components.membership.report(peer, `refused a sync request from ${peer}: not a member of this network`)
        return false
      },
      mayRead: peer => components.membership.stateOf(peer) !== 'left',
      active: () => !components.membership.leaving,
      observe: version => { components.clock.observe(version) },
      env: this.env,
      ...(components.log === undefined ? {} : { log: components.log })
    }, {
      timeoutMs: this.timeoutMs,
      ...(init.antiEntropyIntervalMs === undefined ? {} : { intervalMs: init.antiEntropyIntervalMs }),
      ...(init.syncBandwidthMbps === undefined ? {} : { bandwidthMbps: init.syncBandwidthMbps })
    })
  }

  async start (): Promise<void> {
    this.updateRing()
    // Records on disk were placed for the ring of the last finished rebalance (kept with the data, so a
    // crash in the middle of one is redone), else for the members known at start (members.json).
    const saved = await this.c.store.getMeta<unknown>(PLACED_FOR_KEY).catch((err: unknown) => {
      this.c.log?.('reading the ring the records were placed for failed (%s); assuming the members known at start', (err as Error).message)
      return undefined
    })
    const valid = Array.isArray(saved) && saved.every(p => typeof p === 'string')
    if (saved !== undefined && !valid) this.c.log?.('the saved placement ring is malformed; assuming the members known at start')
    this.placedFor = valid ? saved as string[] : this.ring.list().map(m => m.peerId)
    if (!sameMembers(this.placedFor, this.ring.list().map(m => m.peerId))) this.scheduleRebalance(this.rebalanceDelayMs)
    this.unsubscribe = this.c.membership.onChange(() => { this.updateRing() })
    this.handoffTimer = this.env.setInterval(() => { void this.handoff() }, this.handoffIntervalMs)
    this.handoffTimer.unref?.()
    this.rebalanceInterval = this.env.setInterval(() => { this.scheduleRebalance(0) }, this.rebalanceIntervalMs)
    this.rebalanceInterval.unref?.()
    this.antiEntropy.start()
  }

  async stop (): Promise<void> {
    this.stopped = true
    this.unsubscribe?.()
    if (this.handoffTimer !== undefined) this.env.clearInterval(this.handoffTimer)
    if (this.rebalanceInterval !== undefined) this.env.clearInterval(this.rebalanceInterval)
    if (this.rebalanceTimer !== undefined) this.env.clearTimeout(this.rebalanceTimer)
    await this.antiEntropy.stop()
    await this.rebalancing?.catch(() => {})
  }

  private updateRing (): void {
    const members = this.c.membership.ringMembers()
    if (this.ring.setMembers(members.map(peerId => ({ peerId })))) {
      this.c.log?.('ring now has %d members', members.length)
      this.scheduleRebalance(this.rebalanceDelayMs)
    }
  }

  /** Runs a rebalance once the ring has been quiet for `delay` ms (each change restarts the wait) */
  private scheduleRebalance (delay: number): void {
    if (this.stopped) return
    if (this.rebalanceTimer !== undefined) this.env.clearTimeout(this.rebalanceTimer)
    this.rebalanceTimer = this.env.setTimeout(() => {
      this.rebalanceTimer = undefined
      if (this.rebalancing !== undefined) { this.rebalanceAgain = true; return }
      this.rebalancing = this.rebalance().catch(err => {
        // A run that ended on an error (see rebalance): the periodic run tries again.
        this.c.log?.('rebalance failed: %s', (err as Error).message)
      }).finally(() => {
        this.rebalancing = undefined
        this.rebalanceRun = undefined
        if (this.rebalanceAgain) { this.rebalanceAgain = false; this.scheduleRebalance(0) }
      })
    }, delay)
    this.rebalanceTimer.unref?.()
  }

  /**
   * Moves records to their owners after the ring changed: drives a
   * RebalanceRun (core/rebalance.ts), which decides what goes where and
   * what is dropped; this reads the store page by page, sends the
   * requests, drops the copies and keeps the retry timer. A run that could
   * not hand everything off is retried later.
   */
  private async rebalance (): Promise<void> {
    const members = this.ring.list().map(m => m.peerId)
    const run = new RebalanceRun({
      self: this.c.peerId,
      replicas: this.replicas,
      ...(this.vnodes === undefined ? {} : { vnodes: this.vnodes }),
      members,
      placedFor: this.placedFor,
      stateOf: p => this.c.membership.stateOf(p),
      failures: this.rebalanceFailures,
      delayMs: this.rebalanceDelayMs,
      intervalMs: this.rebalanceIntervalMs
    })
    this.rebalanceRun = { run, startedAt: this.env.now() }
    // Placed by key alone: only the records that move are decoded (their rows decrypted).
    const pages = this.c.store.scanPages()[Symbol.asyncIterator]()
    const done = await drive<RebalanceEffect, Extract<RebalanceEffect, { type: 'done' }>>(() => { run.start(); return run.ready() }, (e, d) => {
      switch (e.type) {
        case 'read':
          d.after((async () => {
            if (this.stopped) { await pages.return?.(undefined); return { stopped: true } as const }
            const page = await pages.next()
            if (page.done === true) return { stopped: this.stopped }
            if (this.stopped) { await pages.return?.(undefined); return { stopped: true } as const }
            return { page: page.value }
          })(), read => {
            if (read.page !== undefined) run.page(read.page)
            else run.scanEnded(read.stopped)
            return run.ready()
          }, err => {
            run.scanFailed(err)
            pages.return?.(undefined).catch(() => {})
            return run.ready()
          })
          break
        case 'history':
          d.after(Promise.all(e.states.map(async state => await this.c.store.historyOf(state))),
            history => { run.history(e.batch, history); return run.ready() },
            err => { run.historyFailed(e.batch, err); return run.ready() })
          break
        case 'send':
          d.after(this.c.transport.request(e.peer, 'replica', e.message, { timeout: this.timeoutMs * 2 }),
            reply => { run.answer(e.id, reply); return run.ready() },
            err => { run.failure(e.id, err); return run.ready() })
          break
        case 'drop':
          d.after(this.c.store.dropMany(e.states), results => {
            const n = results.filter(Boolean).length
            this.droppedTotal += n
            run.dropped(e.batch, n)
            return run.ready()
          }, err => { run.dropFailed(e.batch, err); return run.ready() })
          break
        case 'done':
          d.resolve(e)
          break
      }
    }, this.logLine)
    const stats = { finishedAt: this.env.now(), ...done.counts }
    this.lastRebalance = stats
    this.rebalanceRun = undefined
    if (stats.sent > 0 || stats.failed > 0) {
      this.c.log?.('rebalance over %d members: %d records looked at, %d handed off, %d copies dropped, %d failed', members.length, stats.records, stats.sent, stats.dropped, stats.failed)
    }
    if (this.stopped) return
    if (done.placedFor !== undefined) {
      this.sloppyHeld = false
      this.placedFor = done.placedFor
      this.rebalanceFailures = 0
      await this.c.store.putMeta(PLACED_FOR_KEY, this.placedFor).catch(err => { this.c.log?.('saving the placed ring failed: %s', (err as Error).message) })
    } else if (done.retry !== undefined) {
      this.rebalanceFailures = done.retry.failures
      this.env.setTimeout(() => { this.scheduleRebalance(0) }, done.retry.ms).unref?.()
    }
  }

  /**
   * Hands every local record to its owners and drops it (after this node
   * left the ring): runs rebalances until a scan finds nothing here, or
   * fails at the deadline with what is left.
   */
  async drain (timeoutMs: number): Promise<{ handedOff: number, rounds: number }> {
    const deadline = this.env.now() + timeoutMs
    const droppedBefore = this.droppedTotal
    for (let rounds = 1; ; rounds++) {
      this.scheduleRebalance(0)
      while (this.rebalanceStatus().pending) {
        if (this.env.now() > deadline) throw new UnavailableError(`Leaving: records are still being handed off after ${timeoutMs} ms`)
        await sleep(this.env, 50)
      }
      const handedOff = this.droppedTotal - droppedBefore
      let anyLeft = false
      for await (const _ of this.c.store.scanRecords()) { anyLeft = true; break }
      if (!anyLeft) return { handedOff, rounds }
      if (this.env.now() > deadline) {
        throw new UnavailableError(`Leaving: records are still held here after ${timeoutMs} ms (${this.lastRebalance?.failed ?? 0} could not be handed off in the last round); try again`)
      }
      await sleep(this.env, Math.min(1000, this.rebalanceDelayMs))
    }
  }

  /** What the rebalance after the last ring change did */
  rebalanceStatus (): RebalanceStatus {
    const pending = this.rebalanceTimer !== undefined || this.rebalancing !== undefined
    const now = this.rebalanceRun
    return {
      pending,
      ...(this.lastRebalance === undefined ? {} : { last: this.lastRebalance }),
      ...(now === undefined ? {} : { running: { startedAt: now.startedAt, ...now.run.progress() } })
    }
  }

  /**
   * Live rows per table across the network, each record counted once: the
   * token space is cut into ranges (this node's ring), and each range is
   * counted on one of its owners, the first that is not down. A member that
   * does not answer has its ranges counted on their next owners, from the
   * copies those hold; a range none of its owners counted leaves the result
   * incomplete (`complete: false`). The core decides it (RowCount,
   * core/count.ts); this asks the members and counts this node's share.
   */
  async networkRowCounts (): Promise<NetworkRowCounts> {
    const count = new RowCount({ ranges: this.ring.ranges(this.replicas), down: p => this.c.membership.stateOf(p) === 'down' })
    return await drive<CountEffect, NetworkRowCounts>(() => count.start(), (e, d) => {
      switch (e.type) {
        case 'count': {
          const reply = e.peer === this.c.peerId
            ? this.c.store.countRowsIn(e.ranges).then(tables => ({ tables }))
            : this.c.transport.request(e.peer, 'replica', { type: 'count', ranges: e.ranges }, { timeout: this.timeoutMs })
          d.after(reply, r => count.counted(e.peer, r), err => count.failed(e.peer, err))
          break
        }
        case 'done':
          d.resolve(e.counts)
          break
      }
    }, this.logLine)
  }

  /** The key's owners, in preference order: N of them, or every member for global tables */
  owners (table: string, token: string): string[] {
    const global = findTable(table)?.shardKey === 'global'
    return this.ring.preferenceList(token, global ? this.ring.size : this.replicas)
  }

  private needed (level: Consistency | undefined, quorum: number, owners: number): number {
    return requiredAcks(level, quorum, owners)
  }

  /** Owners ordered for a request: alive first (self first among them), then suspect ones */
  private byLiveness (owners: string[], spread: boolean): string[] {
    return orderByLiveness(owners, this.c.peerId, p => this.c.membership.isAlive(p), spread, this.env.random)
  }

  /**
   * A client write, routed by the core (core/route.ts): this node performs
   * each step it gives (coordinate here, forward to an owner, keep it here
   * at `one`) and feeds back how a forwarded write failed.
   */
  async write (mutations: Mutation[], options: RequestOptions = {}): Promise<WriteResult[]> {
    if (mutations.length === 0) return []
    // One id for this client write, kept on its versions: a retry on another owner recognises it exactly.
    const writeId = this.newWriteId()
    mutations = mutations.map(m => m.writeId === undefined ? { ...m, writeId } : m)
    const first = mutations[0] as Mutation
    const owners = this.owners(first.table, tokenOf(first.shard))
    const route = new WriteRoute({
      order: this.byLiveness(owners, false),
      self: this.c.peerId,
      one: options.consistency === 'one',
      required: this.needed(options.consistency, this.writeQuorum, owners.length),
      shard: first.shard,
      timeoutMs: this.timeoutMs,
      forwardTimeoutMs: this.forwardTimeout,
      now: this.env.now()
    })
    for (let step = route.start(this.env.now()); ;) {
      switch (step.type) {
        case 'fail':
          throw step.error
        case 'local':
          try {
            return await this.coordinateWrite(mutations, options.consistency, step.retry)
          } catch (err) {
            throw route.own(err)
          }
        case 'sloppy':
          try {
            return await this.sloppyWrite(mutations, owners, step.retry)
          } catch (err) {
            throw route.own(err)
          }
        case 'forward': {
          const msg = { type: 'write', mutations, ...(options.consistency === undefined ? {} : { consistency: options.consistency }), ...(step.retry ? { retry: true } : {}) }
          try {
            const request = this.c.transport.request(step.peer, 'replica', msg, { timeout: step.timeoutMs })
            return (step.bounded ? await withTimeout(this.env, request, step.timeoutMs, step.peer) : await request) as WriteResult[]
          } catch (err) {
            const kind = failureKind(err)
            if (kind === 'timeout' && options.consistency === 'one') this.c.log?.('primary %s did not answer in time for %s at consistency one', step.peer, first.shard)
            if (kind === 'unreachable') this.c.log?.('primary %s unreachable for %s: %s', step.peer, first.shard, (err as Error).message)
            step = route.failed(err, this.env.now())
          }
        }
      }
    }
  }

  /**
   * Sloppy quorum, for `one` when no owner of the key could take the write:
   * this node (not an owner) orders it against its own copy, keeps the
   * version in its store, and keeps it as a hint for every owner. Handoff
   * gives the owners the version once they are back; the rebalance that
   * follows sends them the whole record and drops this node's copy once
   * every owner has it (as for any copy of a record this node does not own).
   * Until then reads at `one` through this node see it (read, history).
   * A concurrent write on the owners' side becomes a conflict on merge.
   */
  private async sloppyWrite (mutations: Mutation[], owners: string[], retry: boolean): Promise<WriteResult[]> {
    const write = new SloppyWrite({ mutations, owners, retry })
    return await drive<SloppyEffect, WriteResult[]>(() => write.start(), (e, d) => {
      switch (e.type) {
        case 'checkWritable':
          d.after(this.c.store.assertWritable(), () => write.writable(), err => write.failed(err))
          break
        case 'recall':
          d.after(recallWrites(this.c.store, mutations), recalled => write.recalled(recalled), err => write.failed(err))
          break
        case 'order':
          d.after(this.c.store.transact(mutations.map(mutationKey), states => write.order(states, this.c.clock)), () => write.committed(), err => write.failed(err))
          break
        case 'held':
          this.sloppyHeld = true
          break
        case 'hint':
          // If a hint is lost, the copy kept here still reaches the owner by rebalance.
          d.after(this.hint(e.peer, write.entries), () => write.hinted(e.peer), () => write.hinted(e.peer))
          break
        case 'answer':
          d.resolve(e.results)
          break
      }
    }, this.logLine)
  }

  /**
   * The primary's side of a write, as the core decides it (core/primary.ts):
   * this performs its steps (the disk check, the catch-up, the recall of
   * keyed writes, the ordering under the records' lock and the commit) and
   * the sends and hints of its replication, and feeds each result back. This
   * node's own commit is one of the W acknowledgements, not a step before
   * them: the write is answered once any W owners have it on disk, so one
   * owner's slow fsync does not hold it up. The record stays locked here
   * until this node's commit ends, so the next write to it is ordered after.
   */
  private async coordinateWrite (mutations: Mutation[], level: Consistency | undefined, retry = false): Promise<WriteResult[]> {
    const first = mutations[0] as Mutation
    const owners = this.owners(first.table, tokenOf(first.shard))
    const write = new PrimaryWrite({
      self: this.c.peerId,
      owners,
      down: p => this.c.membership.stateOf(p) === 'down',
      mutations,
      level,
      writeQuorum: this.writeQuorum,
      readQuorum: this.readQuorum,
      retry,
      missed: key => this.missed.has(key)
    })
    return await drive<PrimaryEffect, WriteResult[]>(() => write.start(), (e, d) => {
      switch (e.type) {
        case 'checkWritable':
          // A full disk refuses here, before anything is ordered or sent: the refusal is then the whole truth.
          d.after(this.c.store.assertWritable(), () => write.writable(), err => write.failed(err))
          break
        case 'catchUp':
          d.after(this.catchUpKeys(e.keys, e.need, owners), () => write.caughtUp(), err => write.failed(err))
          break
        case 'recall':
          d.after(recallWrites(this.c.store, mutations), recalled => write.recalled(recalled), err => write.failed(err))
          break
        case 'order':
          d.after(this.c.store.transact(mutations.map(mutationKey), states => {
            const { entries, effects } = write.order(states, this.c.clock)
            d.run(() => effects)
            return entries
          }), () => write.committed(), err => write.commitFailed(err))
          break
        case 'send':
          d.after(this.batcher.send(e.peer, write.entries), () => write.ack(e.peer), err => write.failure(e.peer, err, err instanceof TimeoutError))
          break
        case 'hint':
          this.c.log?.('replica %s missed %s: %s; keeping a hint', e.peer, first.shard, e.reason)
          d.after(this.hint(e.peer, write.entries), () => write.hinted(e.peer), () => write.hinted(e.peer))
          break
        case 'missed':
          for (const key of e.keys) this.missed.add(key)
          this.c.log?.('local commit of %s failed: %s', first.shard, (e.error as Error).message)
          break
        case 'answer':
          d.resolve(e.results)
          break
      }
    }, this.logLine)
  }

  /**
   * Batched writes: the core splits the groups by primary (groupsByPrimary),
   * says what a primary's failure means for its groups (batchFailure) and
   * which answers stand (batchAnswerStands); a group whose primary could not
   * take it goes the one-group route of write().
   */
  async writeGroups (groups: Mutation[][], options: RequestOptions = {}): Promise<GroupOutcome[]> {
    const outcomes = new Array<GroupOutcome>(groups.length)
    const { byPrimary, answered } = groupsByPrimary(groups, first => this.byLiveness(this.owners(first.table, tokenOf(first.shard)), false)[0])
    for (const [i, answer] of answered) outcomes[i] = answer as GroupOutcome
    await Promise.all([...byPrimary].map(async ([primary, indexes]) => {
      const part = indexes.map(i => groups[i] as Mutation[])
      let answers: GroupOutcome[]
      try {
        answers = primary === this.c.peerId
          ? await this.coordinateGroups(part, options.consistency)
          : await this.c.transport.request(primary, 'replica', { type: 'writeGroups', groups: part, ...(options.consistency === undefined ? {} : { consistency: options.consistency }) }, { timeout: this.forwardTimeout }) as GroupOutcome[]
      } catch (err) {
        const each = batchFailure(err)
        if (each === undefined) throw err
        answers = part.map(() => each as GroupOutcome)
      }
      await Promise.all(indexes.map(async (gi, j) => {
        const answer = answers[j]
        if (batchAnswerStands(answer)) {
          outcomes[gi] = answer as GroupOutcome
          return
        }
        // The primary could not take it: the one-group path tries the next owners.
        try {
          outcomes[gi] = { ok: true, results: await this.write(groups[gi] as Mutation[], options) }
        } catch (err) {
          outcomes[gi] = { ok: false, error: errorBody(err) }
        }
      }))
    }))
    return outcomes
  }

  /**
   * First versions of new records, as the core decides it (InsertBatch,
   * core/insert.ts): this commits this node's share in one batch and
   * performs each group's sends and hints.
   */
  async insertOnce (groups: VersionEntry[][], options: RequestOptions = {}): Promise<InsertOutcome[]> {
    const batch = new InsertBatch({
      self: this.c.peerId,
      groups,
      ownersOf: groups.map(g => g[0] === undefined ? [] : this.owners(g[0].table, g[0].token)),
      down: p => this.c.membership.stateOf(p) === 'down',
      level: options.consistency,
      writeQuorum: this.writeQuorum
    })
    return await drive<InsertEffect, InsertOutcome[]>(() => batch.start(), (e, d) => {
      switch (e.type) {
        case 'commit':
          d.after(this.c.store.insertOnce(e.entries, { own: true }), () => batch.committed(), err => batch.commitFailed(err))
          break
        case 'send':
          d.after(this.batcher.send(e.peer, batch.entriesOf(e.group)), () => batch.ack(e.group, e.peer), err => batch.failure(e.group, e.peer, err, err instanceof TimeoutError))
          break
        case 'hint': {
          const first = batch.entriesOf(e.group)[0] as VersionEntry
          this.c.log?.('replica %s missed %s: %s; keeping a hint', e.peer, `${first.table} ${first.id}`, e.reason)
          d.after(this.hint(e.peer, batch.entriesOf(e.group)), () => batch.hinted(e.group, e.peer), () => batch.hinted(e.group, e.peer))
          break
        }
        case 'answer':
          d.resolve(e.outcomes)
          break
      }
    }, this.logLine)
  }

  /**
   * The primary's side of `writeGroups`, as the core decides it
   * (PrimaryBatch, core/primary.ts): one durable batch for every group it
   * owns, then replication group by group; this performs the disk check,
   * the catch-ups, the ordering and commit, and the sends and hints.
   */
  private async coordinateGroups (groups: Mutation[][], level: Consistency | undefined): Promise<GroupOutcome[]> {
    const ownersOf = groups.map(g => {
      const first = g[0] as Mutation
      return this.owners(first.table, tokenOf(first.shard))
    })
    const batch = new PrimaryBatch({
      self: this.c.peerId,
      groups,
      ownersOf,
      down: p => this.c.membership.stateOf(p) === 'down',
      level,
      writeQuorum: this.writeQuorum,
      readQuorum: this.readQuorum,
      missed: key => this.missed.has(key)
    })
    return await drive<BatchEffect, GroupOutcome[]>(() => batch.start(), (e, d) => {
      switch (e.type) {
        case 'checkWritable':
          d.after(this.c.store.assertWritable(), () => batch.writable(), err => batch.notWritable(err))
          break
        case 'catchUp':
          // As in coordinateWrite: updates and deletes are ordered against an up-to-date copy.
          d.after(this.catchUpKeys(e.keys, e.need, ownersOf[e.group] as string[]), () => batch.caughtUp(e.group), err => batch.catchUpFailed(e.group, err))
          break
        case 'order':
          d.after(this.c.store.transact(e.groups.flatMap(gi => groups[gi] as Mutation[]).map(mutationKey), states => {
            const { entries, effects } = batch.order(states, this.c.clock)
            d.run(() => effects)
            return entries
          }), () => batch.committed(), err => batch.commitFailed(err))
          break
        case 'send':
          d.after(this.batcher.send(e.peer, batch.entriesOf(e.group)), () => batch.ack(e.group, e.peer), err => batch.failure(e.group, e.peer, err, err instanceof TimeoutError))
          break
        case 'hint':
          this.c.log?.('replica %s missed %s: %s; keeping a hint', e.peer, (groups[e.group]?.[0] as Mutation).shard, e.reason)
          d.after(this.hint(e.peer, batch.entriesOf(e.group)), () => batch.hinted(e.group, e.peer), () => batch.hinted(e.group, e.peer))
          break
        case 'answer':
          d.resolve(e.outcomes)
          break
      }
    }, this.logLine)
  }

  async read (table: string, id: string, shard: string, options: RequestOptions = {}): Promise<RecordState | undefined> {
    return await this.readToken(table, id, tokenOf(shard), options)
  }

  /**
   * A read by ring token (what a query knows of a row it lists). The core
   * says whom to ask and how many answers make the quorum (core/read.ts),
   * runs the asking (core/ask.ts) and names the copies to repair; this
   * reads the disk and the peers and sends the repairs.
   */
  private async readToken (table: string, id: string, token: string, options: RequestOptions = {}): Promise<RecordState | undefined> {
    const plan = readPlan({ owners: this.owners(table, token), self: this.c.peerId, level: options.consistency, quorum: this.readQuorum, isAlive: p => this.c.membership.isAlive(p), random: this.env.random })
    const held = plan.held ? await this.c.store.get(table, token, id) : undefined
    // An owner reads its own copy, and asks the others only for their heads: a copy whose heads are the
    // same is the same answer, so no rows travel (and none are decrypted there). A copy that differs is
    // read whole, merged and repaired as before.
    const mine = plan.mine ? this.c.store.get(table, token, id) : undefined
    mine?.catch(() => {})
    let merged: RecordState | undefined
    let answers: Map<string, RecordState | undefined>
    try {
      const asked = runAsk(this.env, new QuorumAsk<RecordState | undefined>(plan.peers, plan.need, table), async peer =>
        peer === this.c.peerId
          ? await (mine as Promise<RecordState | undefined>)
          : await this.readCopy(peer, { table, id, token }, mine),
      // An owner that answers after the quorum was made only feeds repair.
      (peer, late) => { if (merged !== undefined && needsRepair(merged, late)) this.repair(peer, merged) })
      // With a copy here, owners that do not answer (one after another) hold the read up for one timeout at most.
      answers = held === undefined ? await asked : await withTimeout(this.env, asked, this.timeoutMs, table)
    } catch (err) {
      if (held === undefined || !isNoAnswer(err)) throw err
      return held
    }
    merged = mergeStates([...answers.values(), held])
    if (merged !== undefined) for (const peer of repairsFor(answers, merged)) this.repair(peer, merged)
    return merged
  }

  /**
   * A peer's copy of a record. When this node holds its own (`mine`), the
   * peer is first asked for its heads only: the same heads answer with this
   * node's copy. A peer that cannot say (an older version) is read whole.
   */
  private async readCopy (peer: string, k: { table: string, id: string, token: string }, mine?: Promise<RecordState | undefined>): Promise<RecordState | undefined> {
    const whole = async (): Promise<RecordState | undefined> => readReply(await this.c.transport.request(peer, 'replica', { type: 'read', ...k }, { timeout: this.timeoutMs }), k)
    if (mine === undefined) return await whole()
    let theirs: string[] | null
    try {
      const [, reply] = await Promise.all([mine, this.c.transport.request(peer, 'replica', { type: 'heads', ...k }, { timeout: this.timeoutMs })])
      theirs = headsReply(reply)
    } catch (err) {
      if (isUnreachable(err)) throw err
      return await whole()
    }
    const local = await mine
    const ours = local?.heads.map(h => h.version) ?? null
    return sameVersions(ours, theirs) ? local : await whole()
  }

  async readLocal (table: string, id: string, shard: string): Promise<RecordState | undefined> {
    return await this.c.store.get(table, tokenOf(shard), id)
  }

  async history (table: string, id: string, shard: string, options: RequestOptions = {}): Promise<VersionEntry[]> {
    const token = tokenOf(shard)
    const plan = readPlan({ owners: this.owners(table, token), self: this.c.peerId, level: options.consistency, quorum: this.readQuorum, isAlive: p => this.c.membership.isAlive(p), random: this.env.random })
    // As in read(): at `one`, versions this node keeps without owning the record are included.
    const held = plan.held ? await this.c.store.versions(table, token, id) : []
    let answers: Map<string, VersionEntry[]>
    try {
      const asked = runAsk(this.env, new QuorumAsk<VersionEntry[]>(plan.peers, plan.need, table), async peer =>
        peer === this.c.peerId
          ? await this.c.store.versions(table, token, id)
          : historyReply(await this.c.transport.request(peer, 'replica', { type: 'history', table, id, token }, { timeout: this.timeoutMs }), table, id))
      answers = held.length === 0 ? await asked : await withTimeout(this.env, asked, this.timeoutMs, table)
    } catch (err) {
      if (held.length === 0 || !isNoAnswer(err)) throw err
      answers = new Map()
    }
    const all = new Map<string, VersionEntry>()
    for (const versions of [...answers.values(), held]) for (const v of versions) all.set(v.version, v)
    return [...all.values()].sort((a, b) => compareVersions(a.version, b.version))
  }

  /** Read repair: sends a replica that lacks part of the merged state the whole of it, in the background */
  private repair (peer: string, merged: RecordState): void {
    const job = peer === this.c.peerId
      ? this.c.store.merge([merged])
      : this.c.transport.request(peer, 'replica', { type: 'merge', states: [merged] }, { timeout: this.timeoutMs })
    this.readRepairs++
    void job.catch(err => { this.c.log?.('read repair of %s on %s failed: %s', merged.id, peer, (err as Error).message) })
  }

  /**
   * A primary's catch-up (see catchUpPlan): before it orders an update or
   * delete it brings its copy up to date from the other owners, as a quorum
   * read would. Reads these records from `need` other owners and merges what
   * they hold here; a record whose look is not `required` may go without.
   */
  private async catchUpKeys (keys: CatchUpKey[], need: number, owners: string[]): Promise<void> {
    const others = this.byLiveness(owners.filter(p => p !== this.c.peerId), true)
    const states = await Promise.all(keys.map(async ({ required, ...k }) => {
      try {
        const answers = await runAsk(this.env, new QuorumAsk<RecordState | undefined>(others, need, k.table), async peer =>
          readReply(await this.c.transport.request(peer, 'replica', { type: 'read', ...k }, { timeout: this.timeoutMs }), k))
        return mergeStates([...answers.values()])
      } catch (err) {
        if (required || !isUnreachable(err)) throw err
        return undefined
      }
    }))
    const found = states.filter((s): s is RecordState => s !== undefined)
    if (found.length > 0) await this.c.store.merge(found)
    for (const k of keys) this.missed.delete(`${k.table}/${k.id}`)
  }


  async scan (table: string, request: ScanRequest, options: RequestOptions = {}): Promise<ScanPage> {
    const members = this.ring.list().map(m => m.peerId).filter(p => this.c.membership.stateOf(p) !== 'down')
    let skipped = 0
    const pages = await Promise.all(members.map(async (peer): Promise<ScanPage> => {
      try {
        return peer === this.c.peerId
          ? await this.c.store.scan(table, request)
          : checkScanPage(await this.c.transport.request(peer, 'replica', { type: 'scan', table, ...request }, { timeout: this.timeoutMs }), table)
      } catch (err) {
        // Every row lives on N members, so one that does not answer (or refuses) is covered by the others.
        if (!isNoAnswer(err)) throw err
        this.c.log?.('scan of %s skipped %s: %s', table, peer, (err as Error).message)
        skipped++
        return { rows: [] }
      }
    }))
    if (options.consistency === 'all' && skipped > 0) throw new UnavailableError(`${table}: ${skipped} members did not answer`)
    const byPosition = new Map<string, RecordState[]>()
    let more = false
    for (const page of pages) {
      if (page.next !== undefined) more = true
      for (const r of page.rows) {
        const list = byPosition.get(r.position)
        if (list === undefined) byPosition.set(r.position, [r.state])
        else list.push(r.state)
      }
    }
    const positions = [...byPosition.keys()].sort()
    const rows: ScanPage['rows'] = []
    for (const position of positions) {
      const state = mergeStates(byPosition.get(position) ?? [])
      const row = winner(state)?.row ?? null
      if (state === undefined || row === null) continue
      if (!Object.entries(request.where ?? {}).every(([k, v]) => row[k] === v)) continue
      if (rows.length >= request.limit) { more = true; break }
      rows.push({ state, position })
    }
    const last = rows[rows.length - 1]
    return more && last !== undefined ? { rows, next: last.position } : { rows }
  }

  /** The token ranges a filter over a table covers, with their owners: one shard value's, a global table's whole ring, or every range */
  private rangesFor (def: TableDef, filter: Condition | undefined): { ranges: OwnedRange[], shard: string | undefined } {
    const shard = singleShardOf(def.name, filter)
    let ranges: OwnedRange[]
    if (def.shardKey === 'global') {
      ranges = [{ from: '', to: '', owners: this.ring.list().map(m => m.peerId) }]
    } else if (shard !== undefined) {
      const token = tokenOf(shard)
      ranges = [{ from: token, to: token + '\u0000', owners: this.owners(def.name, token) }]
    } else {
      ranges = this.ring.ranges(this.replicas)
    }
    if (ranges.length === 0) throw new UnavailableError('No members on the ring yet')
    return { ranges, shard }
  }

  /** Copies of a range a read at `level` asks */
  private copiesNeeded (def: TableDef, level: Consistency | undefined): number {
    return this.needed(level, this.readQuorum, def.shardKey === 'global' ? this.ring.size : this.replicas)
  }

  async query (table: string, request: RowQuery, options: RequestOptions = {}): Promise<QueryPage> {
    const def = findTable(table)
    if (def === undefined) throw new NtsoekheError('UNKNOWN_TABLE', `Unknown table: ${table}`)
    const { ranges, shard } = this.rangesFor(def, request.filter)
    const { tokenRanges: _, ...base } = request
    if (this.holdsAlone(ranges)) {
      // This node is every range's only owner: its copy is the answer, read in order by its store, with no merge.
      const whole = ranges.length === 1 && ranges[0]?.from === '' && ranges[0]?.to === ''
      const page = stripPlan(await this.c.store.query(table, whole ? base : { ...base, tokenRanges: ranges.map(r => [r.from, r.to] as [string, string]) }))
      return { ...page, asked: [{ peer: this.c.peerId, ranges: ranges.length }], singleShard: shard !== undefined }
    }
    const page = await this.queryRanges(def, base, ranges, options)
    return { ...page, singleShard: shard !== undefined }
  }

  /**
   * Whether this node is the only owner of every range (a network of one):
   * a read at any consistency level is then its own copy, and merging one
   * stream with itself would only repeat the store's work.
   */
  private holdsAlone (ranges: OwnedRange[]): boolean {
    if (this.c.membership.stateOf(this.c.peerId) === 'down') return false
    for (const r of ranges) if (r.owners.length !== 1 || r.owners[0] !== this.c.peerId) return false
    return true
  }

  private async queryRanges (def: TableDef, request: RowQuery, ranges: OwnedRange[], options: RequestOptions): Promise<RowPage & { asked: Array<{ peer: string, ranges: number }> }> {
    const table = def.name
    return await mergeQuery({
      table: def,
      request,
      ranges,
      need: this.copiesNeeded(def, options.consistency),
      strict: options.consistency === 'all',
      self: this.c.peerId,
      usable: peer => this.c.membership.stateOf(peer) !== 'down',
      alive: peer => this.c.membership.isAlive(peer),
      fetch: async (peer, q) => peer === this.c.peerId
        ? stripPlan(await this.c.store.query(table, q))
        : checkQueryPage(await this.c.transport.request(peer, 'replica', { type: 'query', table, ...q }, { timeout: this.timeoutMs }), table),
      resolve: async (token, id) => await this.readToken(table, id, token, options),
      ...(this.c.log === undefined ? {} : { log: this.c.log })
    })
  }

  async fragment (f: Fragment, options: RequestOptions = {}): Promise<FragmentAnswer> {
    const def = findTable(f.table)
    if (def === undefined) throw new NtsoekheError('UNKNOWN_TABLE', `Unknown table: ${f.table}`)
    const { ranges, shard } = this.rangesFor(def, f.filter)
    const need = this.copiesNeeded(def, options.consistency)
    // Each range from `need` of its live owners: this node first, then the least loaded.
    const load = new Map<string, number>()
    const byPeer = new Map<string, number[]>()
    const chosen = ranges.map((r, i) => {
      // A silent (suspect) owner last: a frozen machine would hold the fragment for a whole timeout.
      const silent = (p: string): number => this.c.membership.isAlive(p) ? 0 : 1
      const peers = r.owners.filter(p => this.c.membership.stateOf(p) !== 'down')
        .sort((a, b) => a === this.c.peerId ? -1 : b === this.c.peerId ? 1 : (silent(a) - silent(b)) || (load.get(a) ?? 0) - (load.get(b) ?? 0))
        .slice(0, need)
      for (const p of peers) {
        load.set(p, (load.get(p) ?? 0) + 1)
        byPeer.set(p, [...byPeer.get(p) ?? [], i])
      }
      return peers
    })
    const answers = ranges.map(() => new Map<string, FragmentResult>())
    const failed = new Set<string>()
    const askAll = async (plan: Map<string, number[]>): Promise<void> => {
      await Promise.all([...plan].map(async ([peer, indices]) => {
        const tokenRanges = indices.map(i => [(ranges[i] as OwnedRange).from, (ranges[i] as OwnedRange).to] as [string, string])
        try {
          const results = peer === this.c.peerId
            ? await this.runFragmentHere(f, tokenRanges)
            : checkFragmentResults(await this.c.transport.request(peer, 'replica', { type: 'fragment', fragment: f, tokenRanges }, { timeout: Math.max(this.timeoutMs * 4, FRAGMENT_TIMEOUT_MS) }), indices.length)
          indices.forEach((i, j) => { (answers[i] as Map<string, FragmentResult>).set(peer, results[j] as FragmentResult) })
        } catch (err) {
          if (!(err instanceof NtsoekheError) || err.code === 'INVALID') throw err
          failed.add(peer)
          this.c.log?.('fragment of %s: %s did not answer (%s)', f.table, peer, err.message)
        }
      }))
    }
    await askAll(byPeer)
    // A range a member did not answer for is asked of another of its owners, once.
    const retry = new Map<string, number[]>()
    for (const [i, range] of ranges.entries()) {
      const missing = (chosen[i] as string[]).length - (answers[i] as Map<string, FragmentResult>).size
      const spares = range.owners.filter(p => !(chosen[i] as string[]).includes(p) && !failed.has(p) && this.c.membership.stateOf(p) !== 'down').slice(0, Math.max(missing, 0))
      for (const p of spares) {
        retry.set(p, [...retry.get(p) ?? [], i])
        chosen[i] = [...(chosen[i] as string[]).filter(x => !failed.has(x)), p]
      }
    }
    if (retry.size > 0) await askAll(retry)
    for (const [peer, indices] of retry) byPeer.set(peer, [...byPeer.get(peer) ?? [], ...indices])
    let rechecked = 0
    const results: FragmentResult[] = []
    for (const [i, range] of ranges.entries()) {
      const got = [...(answers[i] as Map<string, FragmentResult>).values()]
      const first = got[0]
      // Copies that agree on every row version they read gave the same answer: one is taken.
      if (first !== undefined && got.length >= (chosen[i] as string[]).length && got.length >= Math.min(need, range.owners.length) && got.every(r => r.digest === first.digest)) {
        results.push(first)
        continue
      }
      rechecked++
      results.push(await runFragment(f, this.quorumSource(def, range, options)))
    }
    return { result: mergeResults(f, results), asked: [...byPeer].map(([peer, indices]) => ({ peer, ranges: indices.length })), singleShard: shard !== undefined, rechecked }
  }

  /** A fragment run on this node's copy, one result per range */
  private async runFragmentHere (f: Fragment, tokenRanges: Array<[string, string]>): Promise<FragmentResult[]> {
    const out: FragmentResult[] = []
    for (const r of tokenRanges) out.push(await runFragment(f, storeSource(this.c.store, [r])))
    return out
  }

  /** A fragment's rows read at the request's consistency (quorum-merged), for a range whose copies disagreed */
  private quorumSource (def: TableDef, range: OwnedRange, options: RequestOptions): FragmentSource {
    return {
      rows: async function * (this: DistributedCoordinator, table: string, filter: Condition | undefined, shard?: string) {
        const t = findTable(table) as TableDef
        const ranges = shard !== undefined || t.shardKey === 'global' ? this.rangesFor(t, filter).ranges : [range]
        let after: string | undefined
        for (;;) {
          const page = await this.queryRanges(t, { ...(filter === undefined ? {} : { filter }), limit: 1000, ...(after === undefined ? {} : { after }) }, ranges, options)
          for (const r of page.rows) {
            const head = winner(r.state)
            if (head?.row != null) yield { row: head.row, id: r.state.id, version: head.version }
          }
          if (page.next === undefined) return
          after = page.next
        }
      }.bind(this)
    }
  }

  async status (): Promise<ClusterStatus> {
    const members = this.c.membership.members()
    const live = this.c.membership.liveMembers().length
    return {
      peerId: this.c.peerId,
      replicas: this.replicas,
      writeQuorum: this.writeQuorum,
      readQuorum: this.readQuorum,
      members,
      underReplicated: live < this.replicas
    }
  }

  /** Serves the replica protocol */
  private async onMessage (raw: unknown, from: string): Promise<unknown> {
    // Only members read or write replicas: a peer that is not in the view (never joined, or removed) gets nothing.
    if (!this.c.membership.mayReplicate(from)) {
      this.c.membership.report(from, `refused a replica request from ${from}: not a member of this network`)
      throw new ForbiddenError(`${from} is not a member of this network`)
    }
    const msg: ReplicaMessage = parseReplicaMessage(raw)
    // A member that left may still hand over what it holds (its records, its hints), but reads nothing more.
    if (from !== this.c.peerId && this.c.membership.stateOf(from) === 'left' && msg.type !== 'apply' && msg.type !== 'merge' && msg.type !== 'records' && msg.type !== 'holds' && msg.type !== 'purge') {
      throw new ForbiddenError(`${from} has left the network: it may only hand over what it holds`)
    }
    switch (msg.type) {
      case 'count':
        return { tables: await this.c.store.countRowsIn(msg.ranges) }
      case 'write':
        return await this.coordinateWrite(msg.mutations, msg.consistency, msg.retry === true)
      case 'writeGroups':
        return await this.coordinateGroups(msg.groups, msg.consistency)
      case 'apply': {
        // A node that is leaving takes nothing new: the writer keeps a hint, and the record reaches its new
        // owners by their rebalance once they learn of the leave.
        if (this.c.membership.leaving) return this.refuseWhileLeaving(msg.groups.length)
        const results = await Promise.all(msg.groups.map(async group => {
          for (const e of group) this.c.clock.observe(e.version)
          try {
            // Audit entries are first versions only (checkEntry): the lean path, which still keeps a differing second version.
            if (group.every(e => e.table === AUDIT_TABLE)) await this.c.store.insertOnce(group)
            else await this.c.store.apply(group)
            return { ok: true }
          } catch (err) {
            this.c.log?.('apply from %s failed: %s', from, (err as Error).message)
            return { ok: false, error: { code: 'INTERNAL', message: (err as Error).message } }
          }
        }))
        return { results }
      }
      case 'records': {
        if (this.c.membership.leaving) return this.refuseWhileLeaving(msg.records.length)
        for (const r of msg.records) {
          for (const h of r.state.heads) this.c.clock.observe(h.version)
          for (const e of r.versions) this.c.clock.observe(e.version)
        }
        try {
          await this.c.store.receive(msg.records)
          return { results: msg.records.map(() => ({ ok: true })) }
        } catch (err) {
          this.c.log?.('taking %d records from %s failed: %s', msg.records.length, from, (err as Error).message)
          return { results: msg.records.map(() => ({ ok: false, error: { code: 'INTERNAL', message: (err as Error).message } })) }
        }
      }
      case 'holds':
        // A node that is leaving will hold nothing for long: a sender must not drop its copy on its word.
        if (this.c.membership.leaving) return this.refuseWhileLeaving(msg.records.length)
        return { results: msg.records.map(r => ({ ok: true, holds: this.c.store.holds(r) })) }
      case 'merge': {
        if (this.c.membership.leaving) return this.refuseWhileLeaving(msg.states.length)
        for (const st of msg.states) for (const h of st.heads) this.c.clock.observe(h.version)
        try {
          await this.c.store.merge(msg.states)
          return { results: msg.states.map(() => ({ ok: true })) }
        } catch (err) {
          this.c.log?.('merge from %s failed: %s', from, (err as Error).message)
          return { results: msg.states.map(() => ({ ok: false, error: { code: 'INTERNAL', message: (err as Error).message } })) }
        }
      }
      case 'read':
        return { state: await this.c.store.get(msg.table, msg.token, msg.id) ?? null }
      case 'heads':
        return { heads: this.c.store.headsOf(msg.table, msg.token, msg.id) ?? null }
      case 'history':
        return { versions: await this.c.store.versions(msg.table, msg.token, msg.id) }
      case 'scan':
        return await this.c.store.scan(msg.table, { where: msg.where, limit: msg.limit, ...(msg.after === undefined ? {} : { after: msg.after }), ...(msg.token === undefined ? {} : { token: msg.token }) })
      case 'fragment':
        return { results: await this.runFragmentHere(msg.fragment, msg.tokenRanges) }
      case 'query': {
        const { type: _, table, ...q } = msg
        return stripPlan(await this.c.store.query(table, q))
      }
      case 'purge': {
        this.c.clock.observe(msg.version)
        const held = await this.c.store.purge({ table: msg.table, id: msg.id, token: msg.token, version: msg.version, time: this.env.now() })
        this.c.log?.('purged %s %s at the request of %s', msg.table, msg.id, from)
        return { ok: true, held }
      }
    }
  }

  private refuseWhileLeaving (count: number): { results: Array<{ ok: false, error: { code: string, message: string } }> } {
    const error = { code: 'NOT_OWNER', message: `${this.c.peerId} is leaving the network` }
    return { results: Array.from({ length: count }, () => ({ ok: false, error })) }
  }

  /** The node's log, for drive(): the log lines core machines ask for */
  private readonly logLine = (msg: string, ...args: unknown[]): void => { this.c.log?.(msg, ...args) }

  /** Keeps a hint of `entries` for `peer`; one that cannot be written is logged and let go (see each caller for what still brings the copy there) */
  private async hint (peer: string, entries: VersionEntry[]): Promise<void> {
    await this.c.store.addHint(peer, entries).catch(err => { this.c.log?.('hint for %s lost: %s', peer, (err as Error).message) })
  }

  /**
   * Erases a record on every member, not only its owners: a former owner may
   * still hold a copy, and any node may hold hints with its versions. A member
   * that does not answer gets the purge as a hint; every node keeps a marker,
   * so a late copy (a hint, a hand-off, a read repair) does not bring it back.
   */
  async purge (table: string, id: string, shard: string): Promise<number> {
    const marker: PurgeMarker = { table, id, token: tokenOf(shard), version: this.c.clock.tick(), time: this.env.now() }
    await this.c.store.purge(marker)
    const { time: _, ...msg } = marker
    const fanOut = new PurgeFanOut({
      table,
      id,
      members: this.c.membership.members().filter(m => m.peerId !== this.c.peerId && m.state !== 'left').map(m => ({ peer: m.peerId, down: this.c.membership.stateOf(m.peerId) === 'down' }))
    })
    return await drive<PurgeEffect, number>(() => fanOut.start(), (e, d) => {
      switch (e.type) {
        case 'send':
          d.after(this.c.transport.request(e.peer, 'replica', { type: 'purge', ...msg }, { timeout: this.timeoutMs }), reply => fanOut.answered(e.peer, reply), err => fanOut.failed(e.peer, err))
          break
        case 'hint':
          d.after(this.c.store.addPurgeHint(e.peer, marker), () => fanOut.hinted(e.peer), err => fanOut.hintFailed(e.peer, err))
          break
        case 'answer':
          d.resolve(e.reached)
          break
      }
    }, this.logLine)
  }

  /** A random 64-bit write id in hex, cut from a pool drawn 512 at a time (one `randomBytes` call per write cost 1.5% of a daemon's CPU) */
  private newWriteId (): string {
    if (this.writeIdAt + 8 > this.writeIds.length) {
      this.writeIds = this.env.randomBytes(4096)
      this.writeIdAt = 0
    }
    const id = this.writeIds.toString('hex', this.writeIdAt, this.writeIdAt + 8)
    this.writeIdAt += 8
    return id
  }

  /**
   * Hinted handoff: hands the versions a replica missed to it once it is
   * back. A HandoffRound (core/handoff.ts) decides each step; this reads and
   * deletes the hints and sends the requests, one at a time.
   */
  private async handoff (): Promise<void> {
    if (this.handingOff) return
    this.handingOff = true
    try {
      const round = new HandoffRound({ peers: await this.c.store.hintedPeers(), stateOf: p => this.c.membership.stateOf(p), sloppyHeld: this.sloppyHeld })
      round.start()
      for (let effects = round.ready(); effects.length > 0; effects = round.ready()) {
        for (const e of effects) await this.performHandoff(round, e)
      }
    } catch (err) {
      this.c.log?.('handoff round failed: %s', (err as Error).message)
    } finally {
      this.handingOff = false
    }
  }

  /** Carries out one step of a handoff round and gives it what came of it */
  private async performHandoff (round: HandoffRound, e: HandoffEffect): Promise<void> {
    switch (e.type) {
      case 'readHints':
        await this.c.store.hintsFor(e.peer, e.limit).then(batch => { round.hints(batch) }, err => { round.readFailed(err) })
        break
      case 'dropHints':
        await this.c.store.deleteHintsFor(e.peer).then(n => { round.hintsDropped(n) }, err => { round.readFailed(err) })
        break
      case 'send':
        await this.c.transport.request(e.peer, 'replica', e.message, { timeout: this.timeoutMs }).then(reply => { round.answer(reply) }, err => { round.failure(err) })
        break
      case 'deleteHints':
        await this.c.store.deleteHints(e.keys).then(() => { round.deleted() }, err => { round.failure(err) })
        break
      case 'rebalance':
        this.scheduleRebalance(this.rebalanceDelayMs)
        break
      case 'log':
        this.c.log?.(e.msg, ...e.args)
        break
      case 'done':
        break
    }
  }
}

/** A peer's answer to `read`, checked before it is merged or repaired into this node's store */
/** A store's query page without its plan (which stays on the node that made it) */
function stripPlan (page: RowPage & { plan: unknown }): RowPage {
  const { plan: _, ...rest } = page
  return rest
}

function readReply (reply: unknown, expect: { table: string, id: string, token: string }): RecordState | undefined {
  const state = (reply as { state?: unknown } | null)?.state
  if (state === null) return undefined
  return checkState(state, expect)
}

/** A `heads` reply: the versions, or null when the peer does not hold the record */
function headsReply (reply: unknown): string[] | null {
  const heads = (reply as { heads?: unknown } | null)?.heads
  if (heads === null) return null
  if (!Array.isArray(heads) || heads.length > 1000 || !heads.every(isVersion)) throw new InvalidMessageError('replica: malformed heads reply')
  return heads as string[]
}

function historyReply (reply: unknown, table: string, id: string): VersionEntry[] {
  const versions = (reply as { versions?: unknown } | null)?.versions
  if (!Array.isArray(versions)) throw new InvalidMessageError('replica: malformed history reply')
  return versions.map(v => {
    const e = checkEntry(v)
    if (e.table !== table || e.id !== id) throw new InvalidMessageError('replica: history of another record')
    return e
  })
}

// The core's error classes and hedge, as this module exported them before the core existed.
export { HEDGE_MS } from './core/ask.js'
export { isNoAnswer, isUnreachable } from './core/route.js'

/**
 * Performs a quorum question's effects (core/ask.ts): asks each peer it
 * names with `fn`, keeps its hedge timers on the environment, and feeds
 * back every answer, failure and timer. Resolves with the answers once the
 * round is decided; an answer after that goes to `onLate`.
 */
async function runAsk<T> (env: Environment, round: QuorumAsk<T>, fn: (peer: string) => Promise<T>, onLate?: (peer: string, answer: T) => void): Promise<Map<string, T>> {
  const timers = new Map<number, TimerHandle>()
  return await drive<AskEffect<T>, Map<string, T>>(() => round.start(), (e, d) => {
    switch (e.type) {
      case 'ask':
        d.after(fn(e.peer), answer => round.answer(e.peer, answer), err => round.failure(e.peer, err, !isNoAnswer(err)))
        break
      case 'setTimer':
        timers.set(e.id, env.setTimeout(() => { timers.delete(e.id); d.run(() => round.hedge(e.id)) }, e.ms))
        break
      case 'clearTimer':
        env.clearTimeout(timers.get(e.id))
        timers.delete(e.id)
        break
      case 'done':
        d.resolve(e.answers)
        break
      case 'failed':
        d.reject(e.error)
        break
      case 'late':
        onLate?.(e.peer, e.answer)
        break
    }
  })
}

/** `promise`, or a TimeoutError after `ms` (`what` names the peer or table) */
async function withTimeout<T> (env: Environment, promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: TimerHandle | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = env.setTimeout(() => { reject(new TimeoutError(`${what}: no answer within ${ms} ms`)) }, Math.max(ms, 0))
  })
  promise.catch(() => {})
  try {
    return await Promise.race([promise, timeout])
  } finally {
    env.clearTimeout(timer)
  }
}
