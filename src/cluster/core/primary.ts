import { NtsoekheError } from '../../errors/index.js'
import type { VersionEntry } from '../../storage/store.js'
import type { HybridClock } from '../../storage/version.js'
import type { Consistency, GroupOutcome, Mutation, WriteResult } from '../coordinator.js'
import { requiredAcks } from '../decisions.js'
import { orderGroups, orderMutations } from '../mutations.js'
import { catchUpPlan, type CatchUpKey } from './read.js'
import { shortfallError, WriteQuorum, type WriteQuorumEffect } from './write-quorum.js'
import type { FailEffect } from './effects.js'

/**
 * The primary's side of one write, as a state machine with no I/O. In
 * order: a node that does not own the key refuses (NOT_OWNER); a full disk
 * refuses before anything is ordered or sent; updates and deletes are
 * first brought up to date from the other owners (catch-up); keyed writes
 * are recalled; the write is ordered against this node's copy, under its
 * lock; and the new versions go to the other owners while this node
 * commits them, its own commit one of the W acknowledgements (WriteQuorum).
 * A refusal while ordering (409, 412, 404) is the answer, with nothing sent.
 */
export type PrimaryEffect =
  /** Check that the store takes writes (the driver answers writable() or failed()) */
  | { type: 'checkWritable' }
  /** Read these records from `need` other owners and merge them here (caughtUp() or failed()) */
  | { type: 'catchUp', keys: CatchUpKey[], need: number }
  /** Look up the versions keyed writes already made (recalled() or failed()) */
  | { type: 'recall' }
  /** Take the records' lock and call order() with their states; then commit what it returns (committed() or commitFailed()) */
  | { type: 'order' }
  /** This node's commit failed after the write was ordered: these records (`table/id`) are caught up before the next write to them */
  | { type: 'missed', keys: string[], error: unknown }
  | { type: 'answer', results: WriteResult[] }
  | FailEffect
  | Extract<WriteQuorumEffect, { type: 'send' | 'hint' }>

export interface PrimaryWriteInit {
  self: string
  /** The key's owners */
  owners: string[]
  /** Owners known to be down now (they get a hint, not a send) */
  down: (peerId: string) => boolean
  mutations: Mutation[]
  level: Consistency | undefined
  writeQuorum: number
  readQuorum: number
  /** An owner before this one went silent: the write may have landed already */
  retry: boolean
  /** Records whose local commit failed before (`table/id`): an insert of one is caught up too */
  missed: (key: string) => boolean
}

export class PrimaryWrite {
  private readonly init: PrimaryWriteInit
  private recalledWrites?: ReadonlyMap<string, VersionEntry>
  private quorum?: WriteQuorum
  private results: WriteResult[] = []
  /** The versions ordered (what the driver sends and hints) */
  entries: VersionEntry[] = []
  private done = false

  constructor (init: PrimaryWriteInit) {
    this.init = init
  }

  private get shard (): string {
    return (this.init.mutations[0] as Mutation).shard
  }

  start (): PrimaryEffect[] {
    if (!this.init.owners.includes(this.init.self)) return this.finish({ type: 'fail', error: new NtsoekheError('NOT_OWNER', `${this.init.self} does not own ${this.shard}`) })
    return [{ type: 'checkWritable' }]
  }

  /** The store takes writes */
  writable (): PrimaryEffect[] {
    const { mutations, level, readQuorum, owners, retry, missed } = this.init
    const { need, keys } = catchUpPlan(mutations, level, readQuorum, owners.length, retry, missed)
    if (keys.size === 0) return [{ type: 'recall' }]
    return [{ type: 'catchUp', keys: [...keys.values()], need }]
  }

  caughtUp (): PrimaryEffect[] {
    return [{ type: 'recall' }]
  }

  recalled (recalled: ReadonlyMap<string, VersionEntry>): PrimaryEffect[] {
    this.recalledWrites = recalled
    return [{ type: 'order' }]
  }

  /** A step before the ordering failed (full disk, catch-up, recall): its error is the answer */
  failed (error: unknown): PrimaryEffect[] {
    return this.finish({ type: 'fail', error })
  }

  /**
   * Orders the write against the records' states (under their lock) and
   * starts its replication; returns the versions to commit here. Throws a
   * refusal (409, 412, 404), which the driver hands to commitFailed().
   */
  order (states: Parameters<typeof orderMutations>[1], clock: HybridClock): { entries: VersionEntry[], effects: PrimaryEffect[] } {
    const { mutations, retry, owners, self, level, writeQuorum, down } = this.init
    const ordered = orderMutations(mutations, states, clock, retry, this.recalledWrites)
    this.entries = ordered.entries
    this.results = ordered.results
    this.quorum = new WriteQuorum({
      peers: owners.filter(p => p !== self).map(peer => ({ peer, down: down(peer) })),
      need: requiredAcks(level, writeQuorum, owners.length),
      local: true,
      empty: ordered.entries.length === 0,
      what: this.shard,
      self
    })
    return { entries: ordered.entries, effects: this.pass(this.quorum.start()) }
  }

  /** This node's commit is on disk */
  committed (): PrimaryEffect[] {
    return this.quorum === undefined ? [] : this.pass(this.quorum.committed())
  }

  /** The commit failed: before ordering ended (a refusal), that is the answer; after, it counts as an owner that missed it */
  commitFailed (error: unknown): PrimaryEffect[] {
    if (this.quorum === undefined) return this.finish({ type: 'fail', error })
    const out: PrimaryEffect[] = []
    // The write may still be answered (W other owners have it) while this node lacks it: the next write
    // to these records catches up from the other owners first, inserts included.
    if (this.entries.length > 0) out.push({ type: 'missed', keys: this.init.mutations.map(m => `${m.table}/${m.id}`), error })
    return [...out, ...this.pass(this.quorum.commitFailed(error))]
  }

  /** The answers of the other owners, passed to the count */
  ack (peer: string): PrimaryEffect[] { return this.pass(this.quorum?.ack(peer) ?? []) }
  failure (peer: string, error: unknown, timedOut: boolean): PrimaryEffect[] { return this.pass(this.quorum?.failure(peer, error, timedOut) ?? []) }
  hinted (peer: string): PrimaryEffect[] { return this.pass(this.quorum?.hinted(peer) ?? []) }

  /** The count's effects as the write's: its decision becomes the answer */
  private pass (effects: WriteQuorumEffect[]): PrimaryEffect[] {
    const out: PrimaryEffect[] = []
    for (const e of effects) {
      if (e.type === 'send' || e.type === 'hint') out.push(e)
      else if (e.type === 'done') out.push(...this.finish({ type: 'answer', results: this.results }))
      else if (e.type === 'short') out.push(...this.finish({ type: 'fail', error: shortfallError(e.shortfall) }))
      else out.push(...this.finish({ type: 'fail', error: e.error }))
    }
    return out
  }

  private finish (e: PrimaryEffect): PrimaryEffect[] {
    if (this.done) return []
    this.done = true
    return [e]
  }
}

/** An error as a group's answer in a batch (its JSON form) */
export function errorBody (err: unknown): { code: string, message: string, column?: string } {
  return err instanceof NtsoekheError ? err.toJSON() : { code: 'INTERNAL', message: (err as Error)?.message ?? String(err) }
}

/** What the primary of a batch wants done; `group` is the index of a group in the batch */
export type BatchEffect =
  /** Check that the store takes writes (writable() or notWritable()) */
  | { type: 'checkWritable' }
  /** Read one group's records from `need` other owners and merge them here (caughtUp() or catchUpFailed()) */
  | { type: 'catchUp', group: number, keys: CatchUpKey[], need: number }
  /** Take the lock of these groups' records and call order() with their states; then commit (committed() or commitFailed()) */
  | { type: 'order', groups: number[] }
  | { type: 'send', group: number, peer: string }
  | { type: 'hint', group: number, peer: string, reason: string }
  | { type: 'answer', outcomes: GroupOutcome[] }
  /** This node's commit of the batch failed: the whole batch fails with it */
  | FailEffect

export interface PrimaryBatchInit {
  self: string
  groups: Mutation[][]
  /** Each group's owners */
  ownersOf: string[][]
  down: (peerId: string) => boolean
  level: Consistency | undefined
  writeQuorum: number
  readQuorum: number
  missed: (key: string) => boolean
}

/**
 * The primary's side of a batch of groups (writeGroups), with no I/O: the
 * groups this node owns are checked against a full disk, caught up one by
 * one (a group whose owners cannot be asked fails alone), ordered together
 * in one durable batch, and replicated group by group, each answered when
 * W - 1 other owners have it (this node's commit ends before the answer).
 */
export class PrimaryBatch {
  private readonly init: PrimaryBatchInit
  private readonly outcomes: Array<GroupOutcome | undefined>
  private readonly owned: number[] = []
  private readonly waiting = new Set<number>()
  private readonly failedCatchUp = new Set<number>()
  private readonly quorums = new Map<number, WriteQuorum>()
  private readonly ordered = new Map<number, GroupOutcome>()
  private readonly entriesByGroup = new Map<number, VersionEntry[]>()
  private mine: number[] = []
  private committedHere = false
  private done = false

  constructor (init: PrimaryBatchInit) {
    this.init = init
    this.outcomes = init.groups.map(() => undefined)
  }

  /** The versions ordered for a group (what the driver sends and hints) */
  entriesOf (group: number): VersionEntry[] {
    return this.entriesByGroup.get(group) ?? []
  }

  start (): BatchEffect[] {
    const { groups, ownersOf, self } = this.init
    groups.forEach((g, i) => {
      if ((ownersOf[i] as string[]).includes(self)) this.owned.push(i)
      else this.outcomes[i] = { ok: false, error: { code: 'NOT_OWNER', message: `${self} does not own ${(g[0] as Mutation).shard}` } }
    })
    return [{ type: 'checkWritable' }]
  }

  /** A full disk (or any refusal of the check) fails every group this node owns */
  notWritable (error: unknown): BatchEffect[] {
    for (const gi of this.owned) this.outcomes[gi] = { ok: false, error: errorBody(error) }
    return this.finish({ type: 'answer', outcomes: this.outcomes as GroupOutcome[] })
  }

  writable (): BatchEffect[] {
    const { groups, ownersOf, level, readQuorum, missed } = this.init
    const out: BatchEffect[] = []
    for (const gi of this.owned) {
      const { need, keys } = catchUpPlan(groups[gi] as Mutation[], level, readQuorum, (ownersOf[gi] as string[]).length, false, missed)
      if (keys.size === 0) continue
      this.waiting.add(gi)
      out.push({ type: 'catchUp', group: gi, keys: [...keys.values()], need })
    }
    return [...out, ...this.orderWhenCaughtUp()]
  }

  caughtUp (group: number): BatchEffect[] {
    this.waiting.delete(group)
    return this.orderWhenCaughtUp()
  }

  /** A group whose owners could not be asked fails alone */
  catchUpFailed (group: number, error: unknown): BatchEffect[] {
    this.waiting.delete(group)
    this.failedCatchUp.add(group)
    this.outcomes[group] = { ok: false, error: errorBody(error) }
    return this.orderWhenCaughtUp()
  }

  private orderWhenCaughtUp (): BatchEffect[] {
    if (this.waiting.size > 0) return []
    this.mine = this.owned.filter(gi => !this.failedCatchUp.has(gi))
    if (this.mine.length === 0) return this.finish({ type: 'answer', outcomes: this.outcomes as GroupOutcome[] })
    return [{ type: 'order', groups: this.mine }]
  }

  /** Orders the groups against their records' states (under the lock) and starts each one's replication; returns what to commit here */
  order (states: Parameters<typeof orderGroups>[1], clock: HybridClock): { entries: VersionEntry[], effects: BatchEffect[] } {
    const { groups, ownersOf, self, level, writeQuorum, down } = this.init
    const ordered = orderGroups(this.mine.map(gi => groups[gi] as Mutation[]), states, clock)
    const out: BatchEffect[] = []
    this.mine.forEach((gi, j) => {
      const outcome = ordered.outcomes[j] as GroupOutcome
      if (!outcome.ok) { this.outcomes[gi] = outcome; return }
      const owners = ownersOf[gi] as string[]
      const entries = ordered.perGroup[j] as VersionEntry[]
      this.ordered.set(gi, outcome)
      this.entriesByGroup.set(gi, entries)
      const quorum = new WriteQuorum({
        peers: owners.filter(p => p !== self).map(peer => ({ peer, down: down(peer) })),
        need: requiredAcks(level, writeQuorum, owners.length) - 1,
        local: false,
        empty: entries.length === 0,
        what: (groups[gi]?.[0] as Mutation).shard,
        self
      })
      this.quorums.set(gi, quorum)
      out.push(...this.pass(gi, quorum.start()))
    })
    return { entries: ordered.entries, effects: out }
  }

  committed (): BatchEffect[] {
    this.committedHere = true
    return this.answerWhenDone()
  }

  commitFailed (error: unknown): BatchEffect[] {
    return this.finish({ type: 'fail', error })
  }

  ack (group: number, peer: string): BatchEffect[] { return this.pass(group, this.quorums.get(group)?.ack(peer) ?? []) }
  failure (group: number, peer: string, error: unknown, timedOut: boolean): BatchEffect[] { return this.pass(group, this.quorums.get(group)?.failure(peer, error, timedOut) ?? []) }
  hinted (group: number, peer: string): BatchEffect[] { return this.pass(group, this.quorums.get(group)?.hinted(peer) ?? []) }

  private pass (group: number, effects: WriteQuorumEffect[]): BatchEffect[] {
    const out: BatchEffect[] = []
    for (const e of effects) {
      if (e.type === 'send') out.push({ type: 'send', group, peer: e.peer })
      else if (e.type === 'hint') out.push({ type: 'hint', group, peer: e.peer, reason: e.reason })
      else if (e.type === 'done') this.outcomes[group] = this.ordered.get(group)
      else if (e.type === 'short') this.outcomes[group] = { ok: false, error: errorBody(shortfallError(e.shortfall)) }
      else this.outcomes[group] = { ok: false, error: errorBody(e.error) }
    }
    return [...out, ...this.answerWhenDone()]
  }

  /** Answered once this node's commit ended and every group's count is decided */
  private answerWhenDone (): BatchEffect[] {
    if (!this.committedHere || [...this.quorums.values()].some(q => !q.settled)) return []
    return this.finish({ type: 'answer', outcomes: this.outcomes as GroupOutcome[] })
  }

  private finish (e: BatchEffect): BatchEffect[] {
    if (this.done) return []
    this.done = true
    return [e]
  }
}
