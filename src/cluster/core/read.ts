import type { RecordState } from '../../storage/store.js'
import type { Consistency, Mutation } from '../coordinator.js'
import { orderByLiveness, requiredAcks } from '../decisions.js'
import { missingHeads } from '../merge.js'
import { tokenOf } from '../token.js'

/**
 * The decisions of a quorum read and of a primary's catch-up, with no I/O:
 * whom to ask, how many answers make the quorum, which copies a read must
 * repair, and which records a write must first bring up to date. The
 * asking itself is a QuorumAsk (ask.ts).
 */

/** How a read of one record goes */
export interface ReadPlan {
  /** Owners to ask, in order: this node first when it owns the record, the other alive owners shuffled, then the rest */
  peers: string[]
  /** Answers that make the quorum */
  need: number
  /** This node owns the record: it reads its own copy, and asks the others for their heads only */
  mine: boolean
  /** At `one`, a copy this node keeps without owning the record (a sloppy write) is read too */
  held: boolean
}

export interface ReadPlanInput {
  /** The record's owners, in ring order */
  owners: string[]
  self: string
  level: Consistency | undefined
  /** Replicas asked on a read (R) */
  quorum: number
  isAlive: (peerId: string) => boolean
  /** A draw in [0, 1) (the order of the alive owners spreads reads over them) */
  random: () => number
}

export function readPlan (i: ReadPlanInput): ReadPlan {
  const mine = i.owners.includes(i.self)
  return {
    peers: orderByLiveness(i.owners, i.self, i.isAlive, true, i.random),
    need: requiredAcks(i.level, i.quorum, i.owners.length),
    mine,
    held: i.level === 'one' && !mine
  }
}

/** Whether a copy (undefined: none) lacks part of the merged state, so that a read repair must send it the whole */
export function needsRepair (merged: RecordState, copy: RecordState | undefined): boolean {
  return missingHeads(merged, copy).length > 0 || merged.superseded.length !== (copy?.superseded.length ?? 0)
}

/** The peers whose answers lack part of the merged state (read repair sends each the whole of it) */
export function repairsFor (answers: ReadonlyMap<string, RecordState | undefined>, merged: RecordState): string[] {
  return [...answers].filter(([, state]) => needsRepair(merged, state)).map(([peer]) => peer)
}

/** The same set of versions (both absent counts as the same): a peer whose heads are this node's holds the same copy */
export function sameVersions (a: readonly string[] | null, b: readonly string[] | null): boolean {
  if (a === null || b === null) return a === b
  return a.length === b.length && a.every(v => b.includes(v))
}

/** A record a primary looks up on the other owners before it orders a write to it */
export interface CatchUpKey {
  table: string
  id: string
  token: string
  /** The look must succeed (updates and deletes); else it only tries (a retried insert) */
  required: boolean
}

/**
 * Before a primary orders an update or delete it brings its copy up to
 * date from the other owners (as a quorum read would): a primary that just
 * joined, or came back before its hints arrived, would otherwise order the
 * write against a stale copy. This says how many other owners to ask
 * (`need`, 0: none) and which records: inserts of fresh ids need no look,
 * unless they are retries or their local commit failed before (`missed`).
 */
export function catchUpPlan (mutations: readonly Mutation[], level: Consistency | undefined, quorum: number, owners: number, retry: boolean, missed: (key: string) => boolean): { need: number, keys: Map<string, CatchUpKey> } {
  const need = requiredAcks(level, quorum, owners) - 1
  const keys = new Map<string, CatchUpKey>()
  if (need <= 0) return { need, keys }
  for (const m of mutations) {
    const key = `${m.table}/${m.id}`
    // An insert with no If-Match on a record whose local commit has not failed: nothing to catch up on.
    // A retried one only tries, since the owner that went silent (and may have applied it) is likely
    // the one that cannot be asked.
    const plainInsert = m.op === 'insert' && (m.ifMatch === undefined || m.ifMatch.length === 0) && !missed(key)
    if (plainInsert && !retry) continue
    keys.set(key, { table: m.table, id: m.id, token: tokenOf(m.shard), required: !plainInsert || keys.get(key)?.required === true })
  }
  return { need, keys }
}
