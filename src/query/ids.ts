/**
 * Row ids made without coordination: 53 bits, so they stay exact in JSON.
 *
 *   41 bits  milliseconds since 2025-01-01 (good until 2094)
 *    6 bits  node tag (a hash of the peer id)
 *    6 bits  sequence within the millisecond
 *
 * Ids from one node are strictly increasing; ids from different nodes are
 * time-ordered to the millisecond. Two nodes that share a tag could, in the
 * same millisecond, draw the same id: the insert then meets an existing key
 * at the key's primary (409) and the caller draws again, so a duplicate is
 * never stored.
 */
export const ID_EPOCH_MS = Date.UTC(2025, 0, 1)
const NODE_BITS = 6
const SEQ_BITS = 6
const SEQ_MAX = (1 << SEQ_BITS) - 1
const LOW = 2 ** (NODE_BITS + SEQ_BITS)

export class IdGenerator {
  private lastMs = 0
  private seq = 0
  private readonly node: number
  private readonly now: () => number

  constructor (peerId: string, now: () => number = Date.now) {
    let h = 0
    for (let i = 0; i < peerId.length; i++) h = (h * 31 + peerId.charCodeAt(i)) >>> 0
    this.node = h & ((1 << NODE_BITS) - 1)
    this.now = now
  }

  next (): number {
    let ms = Math.max(0, this.now() - ID_EPOCH_MS)
    if (ms <= this.lastMs) {
      ms = this.lastMs
      if (this.seq >= SEQ_MAX) {
        // Sequence exhausted in this millisecond: borrow the next one.
        ms += 1
        this.seq = 0
      } else {
        this.seq += 1
      }
    } else {
      this.seq = 0
    }
    this.lastMs = ms
    return ms * LOW + this.node * (SEQ_MAX + 1) + this.seq
  }
}

/** When an id was made (ms since the Unix epoch) */
export function idTime (id: number): number {
  return Math.floor(id / LOW) + ID_EPOCH_MS
}
