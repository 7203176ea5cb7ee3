import { InvalidMessageError } from '../../errors/index.js'
import type { Hint, VersionEntry } from '../../storage/store.js'
import { chunkGroups, resultOk } from '../apply-batcher.js'
import { handoffAction, type StateOf } from '../decisions.js'
import type { LogEffect } from './effects.js'

/** Hints handed to one peer per round */
export const HANDOFF_BATCH = 256

/** What a handoff round sends: a purge a peer missed, or the versions it missed */
export type HandoffMessage =
  | { type: 'purge', table: string, id: string, token: string, version: string }
  | { type: 'apply', groups: VersionEntry[][] }

/** What a handoff round wants done, one store or network step at a time; the driver takes them with ready() */
export type HandoffEffect =
  /** Read up to `limit` of the hints kept for `peer` and give them to hints() */
  | { type: 'readHints', peer: string, limit: number }
  /** Delete every hint kept for `peer` (it left) and say how many with hintsDropped() */
  | { type: 'dropHints', peer: string }
  /** Send `message` to `peer` (a replica request) and give what came back to answer() or failure() */
  | { type: 'send', peer: string, message: HandoffMessage }
  /** Delete these hints (delivered) and call deleted(), or failure() when that fails */
  | { type: 'deleteHints', keys: string[] }
  /** Versions reached their owners while this node holds sloppy copies: a rebalance moves those copies */
  | { type: 'rebalance' }
  | LogEffect
  /** The round is over */
  | { type: 'done' }

export interface HandoffRoundInit {
  /** The peers this node keeps hints for */
  peers: string[]
  stateOf: StateOf
  /** Copies of records this node does not own were written here (sloppy writes) */
  sloppyHeld: boolean
}

/** Where the round is with the current peer */
type Step =
  | { at: 'dropping' }
  | { at: 'reading' }
  /** Handing over the purges, one at a time: sending purge `i`, or deleting its hint */
  | { at: 'purge', purges: Hint[], rest: Hint[], i: number, deleting: boolean }
  /** The versions went in one `apply`: waiting for its answer, or for the delivered hints to be deleted */
  | { at: 'apply', hints: Hint[], delivered?: number }
  | { at: 'idle' }

/**
 * One round of hinted handoff as a state machine with no I/O: for each peer
 * this node keeps hints for, in turn, by its state (handoffAction): one that
 * left has its hints dropped (what it missed lives on the records' new
 * owners); one that is alive is handed up to HANDOFF_BATCH hints, the
 * purges first, one at a time (a version hinted after a purge is newer than
 * it, and is kept by the marker), then the versions in one `apply`; a hint
 * is deleted only once the peer acknowledged it. Others wait. A failed step
 * moves on to the next peer; a store read that fails ends the round.
 *
 * Inputs: start(), hints(), hintsDropped(), answer(), failure(), deleted(),
 * readFailed(). The coordinator (distributed.ts) is its driver.
 */
export class HandoffRound {
  private readonly init: HandoffRoundInit
  private next = 0
  private peer = ''
  private step: Step = { at: 'idle' }
  private over = false
  private out: HandoffEffect[] = []

  constructor (init: HandoffRoundInit) {
    this.init = init
  }

  /** The effects of the inputs since the last call, in order (etcd's Ready) */
  ready (): HandoffEffect[] {
    const out = this.out
    this.out = []
    return out
  }

  start (): void {
    this.nextPeer()
  }

  /** The hints read for the current peer */
  hints (batch: readonly Hint[]): void {
    if (this.step.at !== 'reading') return
    // Purges first: a version hinted after a purge is newer than it, and is kept by the marker.
    const purges = batch.filter(h => h.purge !== undefined)
    const rest = batch.filter(h => h.purge === undefined)
    this.step = { at: 'purge', purges, rest, i: 0, deleting: false }
    this.nextPurge()
  }

  /** The current peer's hints were dropped (it left) */
  hintsDropped (count: number): void {
    if (this.step.at !== 'dropping') return
    this.log('dropped %d hints for %s, which left', count, this.peer)
    this.nextPeer()
  }

  /** The current peer answered the request sent to it */
  answer (reply: unknown): void {
    const step = this.step
    if (step.at === 'purge' && !step.deleting) {
      if ((reply as { ok?: unknown } | null)?.ok !== true) {
        this.failure(new InvalidMessageError('replica: malformed purge reply'))
        return
      }
      step.deleting = true
      this.out.push({ type: 'deleteHints', keys: [(step.purges[step.i] as Hint).key] })
    } else if (step.at === 'apply' && step.delivered === undefined) {
      const delivered = step.hints.filter((_, i) => resultOk(reply, i))
      step.delivered = delivered.length
      this.out.push({ type: 'deleteHints', keys: delivered.map(h => h.key) })
    }
  }

  /** The request to the current peer, or deleting the hints it acknowledged, failed: the round moves on to the next peer */
  failure (error: unknown): void {
    const message = (error as Error)?.message ?? String(error)
    if (this.step.at === 'purge') this.log('purge handoff to %s failed: %s', this.peer, message)
    else if (this.step.at === 'apply') this.log('handoff to %s failed: %s', this.peer, message)
    else return
    this.nextPeer()
  }

  /** The hints asked to be deleted are gone */
  deleted (): void {
    const step = this.step
    if (step.at === 'purge' && step.deleting) {
      step.i++
      step.deleting = false
      this.nextPurge()
    } else if (step.at === 'apply' && step.delivered !== undefined) {
      this.log('handed %d of %d hints to %s', step.delivered, step.hints.length, this.peer)
      // Copies kept here by sloppyWrite go to their owners (and are dropped here) by a rebalance.
      if (step.delivered > 0 && this.init.sloppyHeld) this.out.push({ type: 'rebalance' })
      this.nextPeer()
    }
  }

  /** Reading or dropping a peer's hints failed: the round ends */
  readFailed (error: unknown): void {
    if (this.over) return
    this.log('handoff round failed: %s', (error as Error)?.message ?? String(error))
    this.finish()
  }

  private log (msg: string, ...args: unknown[]): void {
    this.out.push({ type: 'log', msg, args })
  }

  private nextPurge (): void {
    const step = this.step
    if (step.at !== 'purge') return
    const hint = step.purges[step.i]
    if (hint !== undefined) {
      const { time: _, ...marker } = hint.purge as NonNullable<Hint['purge']>
      this.out.push({ type: 'send', peer: this.peer, message: { type: 'purge', ...marker } })
      return
    }
    if (step.purges.length > 0) this.log('handed %d purges to %s', step.purges.length, this.peer)
    const hints = chunkGroups(step.rest, h => h.entries.length)[0] ?? []
    if (hints.length === 0) {
      this.nextPeer()
      return
    }
    this.step = { at: 'apply', hints }
    this.out.push({ type: 'send', peer: this.peer, message: { type: 'apply', groups: hints.map(h => h.entries) } })
  }

  /** The next peer with something to do, or the end of the round */
  private nextPeer (): void {
    while (this.next < this.init.peers.length) {
      this.peer = this.init.peers[this.next++] as string
      const action = handoffAction(this.init.stateOf(this.peer))
      if (action === 'wait') continue
      if (action === 'drop') {
        // Gone for good: what it missed lives on the records' new owners.
        this.step = { at: 'dropping' }
        this.out.push({ type: 'dropHints', peer: this.peer })
      } else {
        this.step = { at: 'reading' }
        this.out.push({ type: 'readHints', peer: this.peer, limit: HANDOFF_BATCH })
      }
      return
    }
    this.finish()
  }

  private finish (): void {
    if (this.over) return
    this.over = true
    this.step = { at: 'idle' }
    this.out.push({ type: 'done' })
  }
}
