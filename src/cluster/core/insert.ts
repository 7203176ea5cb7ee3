import type { VersionEntry } from '../../storage/store.js'
import type { Consistency, InsertOutcome } from '../coordinator.js'
import { requiredAcks } from '../decisions.js'
import { errorBody } from './primary.js'
import { shortfallError, WriteQuorum, type WriteQuorumEffect } from './write-quorum.js'
import type { LogEffect } from './effects.js'

/** What an insert of first versions wants done; `group` is the index of a group in the batch */
export type InsertEffect =
  /** Commit this node's share of every group it owns, in one durable batch (committed() or commitFailed()) */
  | { type: 'commit', entries: VersionEntry[] }
  /** Send one group's versions to this owner (ack() or failure()) */
  | { type: 'send', group: number, peer: string }
  /** Keep one group's versions as a hint for this owner (hinted() once written, or failed to be) */
  | { type: 'hint', group: number, peer: string, reason: string }
  | LogEffect
  /** Every group's count is decided */
  | { type: 'answer', outcomes: InsertOutcome[] }

export interface InsertBatchInit {
  self: string
  /** Groups of first versions, each group one record's (or one patient's) */
  groups: VersionEntry[][]
  /** Each group's owners */
  ownersOf: string[][]
  /** Owners known to be down now (they get a hint, not a send) */
  down: (peerId: string) => boolean
  level: Consistency | undefined
  writeQuorum: number
}

/**
 * `insertOnce` (first versions of new records, an import's batches) as a
 * state machine with no I/O. This node's share of every group it owns goes
 * into one durable batch, which counts as one owner's acknowledgement for
 * each of those groups; every group is sent to its other owners and counted
 * on its own (a WriteQuorum each). The answer, one outcome per group, comes
 * once every group's count is decided; a group whose own commit here failed
 * with nothing else counted fails with that error, the others stand on the
 * other owners' answers.
 */
export class InsertBatch {
  private readonly init: InsertBatchInit
  private readonly outcomes: Array<InsertOutcome | undefined>
  private readonly quorums = new Map<number, WriteQuorum>()
  /** Groups this node owns: their counts wait on the local commit */
  private readonly mine: number[] = []
  private done = false

  constructor (init: InsertBatchInit) {
    this.init = init
    this.outcomes = init.groups.map(() => undefined)
  }

  start (): InsertEffect[] {
    const { groups, ownersOf, self, down, level, writeQuorum } = this.init
    const out: InsertEffect[] = []
    const here: VersionEntry[] = []
    groups.forEach((g, i) => {
      const owners = ownersOf[i] ?? []
      if (owners.includes(self)) {
        this.mine.push(i)
        here.push(...g)
      }
    })
    if (here.length > 0) out.push({ type: 'commit', entries: here })
    groups.forEach((g, i) => {
      const first = g[0]
      const owners = ownersOf[i] ?? []
      if (first === undefined) { this.outcomes[i] = { ok: true }; return }
      if (owners.length === 0) { this.outcomes[i] = { ok: false, error: { code: 'UNAVAILABLE', message: 'No members on the ring yet' } }; return }
      const quorum = new WriteQuorum({
        peers: owners.filter(p => p !== self).map(peer => ({ peer, down: down(peer) })),
        need: requiredAcks(level, writeQuorum, owners.length),
        local: owners.includes(self),
        // A writer that is not an owner holds no copy: only the owners' answers count, in the 503 too.
        held: owners.includes(self),
        empty: false,
        what: `${first.table} ${first.id}`,
        self
      })
      this.quorums.set(i, quorum)
      out.push(...this.pass(i, quorum.start()))
    })
    return [...out, ...this.answerWhenDecided()]
  }

  /** The group's versions (what the driver sends and hints) */
  entriesOf (group: number): VersionEntry[] {
    return this.init.groups[group] ?? []
  }

  /** This node's batch is durable: one acknowledgement for each group it owns */
  committed (): InsertEffect[] {
    return this.mine.flatMap(gi => this.pass(gi, this.quorums.get(gi)?.committed() ?? [])).concat(this.answerWhenDecided())
  }

  commitFailed (error: unknown): InsertEffect[] {
    const here = this.mine.reduce((n, gi) => n + (this.init.groups[gi]?.length ?? 0), 0)
    const out: InsertEffect[] = [{ type: 'log', msg: 'local commit of %d first versions failed: %s', args: [here, (error as Error)?.message ?? String(error)] }]
    for (const gi of this.mine) out.push(...this.pass(gi, this.quorums.get(gi)?.commitFailed(error) ?? []))
    return [...out, ...this.answerWhenDecided()]
  }

  ack (group: number, peer: string): InsertEffect[] { return [...this.pass(group, this.quorums.get(group)?.ack(peer) ?? []), ...this.answerWhenDecided()] }
  failure (group: number, peer: string, error: unknown, timedOut: boolean): InsertEffect[] { return [...this.pass(group, this.quorums.get(group)?.failure(peer, error, timedOut) ?? []), ...this.answerWhenDecided()] }
  hinted (group: number, peer: string): InsertEffect[] { return [...this.pass(group, this.quorums.get(group)?.hinted(peer) ?? []), ...this.answerWhenDecided()] }

  /** A group's count's effects as the batch's: its decision becomes the group's outcome */
  private pass (group: number, effects: WriteQuorumEffect[]): InsertEffect[] {
    const out: InsertEffect[] = []
    for (const e of effects) {
      if (e.type === 'send') out.push({ type: 'send', group, peer: e.peer })
      else if (e.type === 'hint') out.push({ type: 'hint', group, peer: e.peer, reason: e.reason })
      else if (e.type === 'done') this.outcomes[group] = { ok: true }
      else if (e.type === 'short') this.outcomes[group] = { ok: false, error: errorBody(shortfallError(e.shortfall)) }
      else this.outcomes[group] = { ok: false, error: errorBody(e.error) }
    }
    return out
  }

  /** Answered once every group's count is decided (this node's commit need not have ended: it is one count among W) */
  private answerWhenDecided (): InsertEffect[] {
    if (this.done || [...this.quorums.values()].some(q => !q.settled)) return []
    this.done = true
    return [{ type: 'answer', outcomes: this.outcomes as InsertOutcome[] }]
  }
}
