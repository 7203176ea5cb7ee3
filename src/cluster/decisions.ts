import type { Consistency, MemberStatus } from './coordinator.js'

/**
 * The cluster's decisions as pure functions: what they need to know comes
 * in as arguments (owners, member states, digests, a random draw), what to
 * do goes out as a value. The coordinator and anti-entropy call them with
 * what the ring, membership and store say; tests call them with anything.
 */

/** A member's state as this node sees it (undefined: not known) */
export type StateOf = (peerId: string) => MemberStatus['state'] | undefined

/** How many owners must answer at a consistency level: one, the quorum (capped at the owners there are), or all */
export function requiredAcks (level: Consistency | undefined, quorum: number, owners: number): number {
  if (level === 'one') return 1
  if (level === 'all') return owners
  return Math.min(quorum, owners)
}

/**
 * Owners in the order to ask them: alive ones first, then the rest
 * (suspect, down, unknown), each group in ring order. With `spread` (reads),
 * `self` stays first among the alive and the other alive owners are
 * shuffled with `random`, so reads spread over the replicas.
 */
export function orderByLiveness (owners: string[], self: string, isAlive: (peerId: string) => boolean, spread: boolean, random: () => number): string[] {
  const alive = owners.filter(p => isAlive(p))
  const rest = owners.filter(p => !alive.includes(p))
  if (!spread) return [...alive, ...rest]
  const mine = alive.filter(p => p === self)
  const others = alive.filter(p => p !== self)
  for (let i = others.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    const t = others[i] as string
    others[i] = others[j] as string
    others[j] = t
  }
  return [...mine, ...others, ...rest]
}

/** Where a rebalance sends one local record, and whether this node's copy goes afterwards */
export interface RecordMove {
  /** Members to send the whole record to */
  targets: string[]
  /** Drop this node's copy once every target has it */
  drop: boolean
  /** Some member that should get it is down now: the run counts as failed and is retried */
  missing: boolean
}

/**
 * The rebalance decision for one record this node holds, given its owners
 * on the current ring and on the ring the records were last placed for.
 * While this node stays an owner, the first live old owner (if that is this
 * node) sends it to the owners that gained it. A copy this node no longer
 * owns (or never did: a sloppy write) goes to every owner, and is dropped
 * only when every owner was sent it. Undefined: nothing to do.
 */
export function planRecordMove (self: string, owners: string[], oldOwners: string[], stateOf: StateOf): RecordMove | undefined {
  if (owners.includes(self)) {
    const sender = oldOwners.find(p => stateOf(p) === 'alive')
    const gained = owners.filter(p => p !== self && !oldOwners.includes(p))
    if (sender !== self || gained.length === 0) return undefined
    // An old owner that lost its place and is alive sends the record to every owner before it drops
    // its copy: the newcomers get it from there, and once is enough. Should it fail, it keeps its copy
    // and retries; anti-entropy covers one that is gone for good.
    if (oldOwners.some(p => !owners.includes(p) && stateOf(p) === 'alive')) return undefined
    // A newcomer that is down now gets it on a later run: this one counts as failed, so it is retried.
    const up = gained.filter(p => stateOf(p) !== 'down')
    return { targets: up, drop: false, missing: up.length < gained.length }
  }
  // A copy this node no longer owns (or never did): every owner must have it before it goes.
  const targets = owners.filter(p => stateOf(p) !== 'down')
  return { targets, drop: targets.length === owners.length, missing: targets.length < owners.length }
}

/** Indexes where two digest lists differ (a position missing on one side differs) */
export function differingIndexes (mine: readonly string[], theirs: readonly (string | undefined)[]): number[] {
  const out: number[] = []
  for (let i = 0; i < mine.length; i++) if (mine[i] !== theirs[i]) out.push(i)
  return out
}
