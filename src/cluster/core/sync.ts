import { differingIndexes } from '../decisions.js'

/**
 * Anti-entropy's decisions, with no I/O: which leaves of the differing
 * ranges differ, and which records of those leaves move which way. The
 * round itself (src/cluster/anti-entropy.ts) asks the peer and reads and
 * writes the store; these say what to ask for and what to send.
 */

/** A peer's digest of a record, with its heads when it sent them */
export interface PeerDigest {
  digest: string
  heads?: string[]
}

/**
 * The leaves (numbered across the ring: bucket × leavesPerBucket + k) where
 * this node's leaf digests differ from the peer's, for the buckets asked
 * (`replies[j]` is the peer's leaf digests of `buckets[j]`)
 */
export function differingLeaves (buckets: readonly number[], replies: ReadonlyArray<readonly string[]>, mine: (bucket: number) => readonly string[], leavesPerBucket: number): number[] {
  const leaves: number[] = []
  for (const [j, bucket] of buckets.entries()) {
    for (const k of differingIndexes(mine(bucket), replies[j] ?? [])) leaves.push(bucket * leavesPerBucket + k)
  }
  return leaves
}

/**
 * Records to pull from the peer: those whose digests differ, unless this
 * node holds every head of the peer's copy (this copy is then the newer,
 * and is pushed instead). `holdsHeads` answers from this node's store.
 */
export function recordsToPull (mine: ReadonlyMap<string, string>, theirs: ReadonlyMap<string, PeerDigest>, holdsHeads: (key: string, heads: string[]) => boolean): string[] {
  return [...theirs].filter(([k, t]) => mine.get(k) !== t.digest && !(mine.has(k) && t.heads !== undefined && holdsHeads(k, t.heads))).map(([k]) => k)
}

/**
 * Records to push to the peer, after the pull was merged: those it lacks,
 * and those whose digest here (as it is now, `digestNow`) still differs
 * from the peer's. A record that was merely stale here travels once, not
 * both ways.
 */
export function recordsToPush (mine: ReadonlyMap<string, string>, theirs: ReadonlyMap<string, PeerDigest>, digestNow: (key: string) => string | undefined): string[] {
  return [...mine.keys()].filter(k => {
    const d = theirs.get(k)?.digest
    if (d === undefined) return true
    if (mine.get(k) === d) return false
    return digestNow(k) !== d
  })
}
