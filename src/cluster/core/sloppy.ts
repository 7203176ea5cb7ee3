import type { VersionEntry } from '../../storage/store.js'
import type { HybridClock } from '../../storage/version.js'
import type { Mutation, WriteResult } from '../coordinator.js'
import { orderMutations } from '../mutations.js'
import type { FailEffect, LogEffect } from './effects.js'

/** What a sloppy write wants done */
export type SloppyEffect =
  /** Check that the store takes writes (writable() or failed()) */
  | { type: 'checkWritable' }
  /** Look up the versions keyed writes already made (recalled() or failed()) */
  | { type: 'recall' }
  /** Take the records' lock and call order() with their states; then commit what it returns (committed() or failed()) */
  | { type: 'order' }
  /** This node now keeps a copy of a record it does not own: a handoff that delivers it should be followed by a rebalance */
  | { type: 'held' }
  /** Keep the versions as a hint for this owner (hinted() once written, or failed to be: the copy kept here still reaches it by rebalance) */
  | { type: 'hint', peer: string }
  | LogEffect
  | { type: 'answer', results: WriteResult[] }
  | FailEffect

export interface SloppyWriteInit {
  mutations: Mutation[]
  /** The key's owners, none of which could take the write */
  owners: string[]
  /** An owner went silent before: the write may have landed already */
  retry: boolean
}

/**
 * Sloppy quorum, for `one` when no owner of the key could take the write,
 * as a state machine with no I/O: this node (not an owner) checks its disk,
 * recalls keyed writes, orders the write against its own copy under the
 * records' lock, commits it, and keeps the new versions as a hint for every
 * owner. Handoff gives the owners the versions once they are back; the
 * rebalance that follows sends them the whole record and drops this node's
 * copy once every owner has it. A write that orders nothing new (a keyed
 * repeat) is answered without hints. A refusal while ordering (409, 412,
 * 404) is the answer.
 */
export class SloppyWrite {
  private readonly init: SloppyWriteInit
  private recalledWrites?: ReadonlyMap<string, VersionEntry>
  private results: WriteResult[] = []
  /** The versions ordered (what the driver commits and hints) */
  entries: VersionEntry[] = []
  private readonly hinting = new Set<string>()
  private done = false

  constructor (init: SloppyWriteInit) {
    this.init = init
  }

  start (): SloppyEffect[] { return [{ type: 'checkWritable' }] }
  writable (): SloppyEffect[] { return [{ type: 'recall' }] }

  recalled (recalled: ReadonlyMap<string, VersionEntry>): SloppyEffect[] {
    this.recalledWrites = recalled
    return [{ type: 'order' }]
  }

  /** Orders the write against this node's copies (under their lock); returns the versions to commit. Throws a refusal */
  order (states: Parameters<typeof orderMutations>[1], clock: HybridClock): VersionEntry[] {
    const ordered = orderMutations(this.init.mutations, states, clock, this.init.retry, this.recalledWrites)
    this.entries = ordered.entries
    this.results = ordered.results
    return ordered.entries
  }

  /** The versions are durable here: every owner gets a hint */
  committed (): SloppyEffect[] {
    if (this.entries.length === 0) return this.finish({ type: 'answer', results: this.results })
    for (const peer of this.init.owners) this.hinting.add(peer)
    if (this.hinting.size === 0) return [{ type: 'held' }, ...this.kept()]
    return [{ type: 'held' }, ...this.init.owners.map(peer => ({ type: 'hint', peer }) as const)]
  }

  /** A hint was written (or lost: the copy kept here still reaches the owner by rebalance) */
  hinted (peer: string): SloppyEffect[] {
    if (!this.hinting.delete(peer) || this.hinting.size > 0) return []
    return this.kept()
  }

  /** Every hint is written: the write is answered */
  private kept (): SloppyEffect[] {
    const shard = (this.init.mutations[0] as Mutation).shard
    return [
      { type: 'log', msg: 'no owner of %s could take the write: kept here with hints for %s (consistency one)', args: [shard, this.init.owners.join(', ')] },
      ...this.finish({ type: 'answer', results: this.results })
    ]
  }

  /** A step failed (full disk, recall, a refusal while ordering, the commit): its error is the answer */
  failed (error: unknown): SloppyEffect[] {
    return this.finish({ type: 'fail', error })
  }

  private finish (e: SloppyEffect): SloppyEffect[] {
    if (this.done) return []
    this.done = true
    return [e]
  }
}
