/**
 * Row ids made without coordination: 53 bits, so they stay exact in JSON.
 *
 *   41 bits  milliseconds since 2025-01-01 (good until 2094)
 *    6 bits  node tag (a hash of the peer id)
 *    6 bits  sequence within the millisecond, from a random start in 0..31
 *
 * Ids from one node are strictly increasing; ids from different nodes are
 * time-ordered to the millisecond. Two nodes that share a tag (one pair in
 * 64) could, in the same millisecond, draw the same id: the insert then
 * meets an existing key at the key's primary (409) and the caller draws
 * again, so a duplicate is never stored. The random start is what makes the
 * draw again work: with every millisecond's sequence starting at 0, two such
 * nodes each drawing about one id per millisecond drew the same ids nearly
 * every time, retries included, and inserts failed with 409 after their
 * last attempt (seen in the benchmark). Now two draws in one millisecond
 * meet with a chance of 1 in 32, independently each time.
 */
export const ID_EPOCH_MS = Date.UTC(2025, 0, 1)
const NODE_BITS = 6
const SEQ_BITS = 6
const SEQ_MAX = (1 << SEQ_BITS) - 1
/** A millisecond's sequence starts at a random value below this, leaving at least 32 ids per millisecond */
const SEQ_STARTS = (SEQ_MAX + 1) / 2
const LOW = 2 ** (NODE_BITS + SEQ_BITS)

export class IdGenerator {
  private lastMs = 0
  private seq = 0
  private readonly node: number
  private readonly now: () => number
  private readonly random: () => number

  /** `random` returns a number in [0, 1), as Math.random does (tests pass a fixed one) */
  constructor (peerId: string, now: () => number = Date.now, random: () => number = Math.random) {
    let h = 0
    for (let i = 0; i < peerId.length; i++) h = (h * 31 + peerId.charCodeAt(i)) >>> 0
    this.node = h & ((1 << NODE_BITS) - 1)
    this.now = now
    this.random = random
  }

  private firstSeq (): number {
    return Math.min(SEQ_STARTS - 1, Math.floor(this.random() * SEQ_STARTS))
  }

  next (): number {
    let ms = Math.max(0, this.now() - ID_EPOCH_MS)
    if (ms <= this.lastMs) {
      ms = this.lastMs
      if (this.seq >= SEQ_MAX) {
        // Sequence exhausted in this millisecond: borrow the next one.
        ms += 1
        this.seq = this.firstSeq()
      } else {
        this.seq += 1
      }
    } else {
      this.seq = this.firstSeq()
    }
    this.lastMs = ms
    return ms * LOW + this.node * (SEQ_MAX + 1) + this.seq
  }
}

/** When an id was made (ms since the Unix epoch) */
export function idTime (id: number): number {
  return Math.floor(id / LOW) + ID_EPOCH_MS
}
