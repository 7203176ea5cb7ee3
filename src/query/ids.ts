/**
 * Row ids, unique by construction: 53 bits, so they stay exact in JSON.
 *
 *   41 bits  milliseconds since 2025-01-01 (good until 2094)
 *    8 bits  the node's id tag, claimed through the ring (see IdSource)
 *    4 bits  sequence within the millisecond, from 0
 *
 * Why two ids never meet, without a retry:
 * - a tag belongs to one node for the life of the network: the node claims it
 *   with an insert of `_unique/_ids.tag.<tag>` at consistency `all`, which the
 *   key's primary refuses when the key exists and every owner keeps, so a later
 *   claimant meets it whichever owner coordinates; a tag is never given back;
 * - within one node, (millisecond, sequence) only grows: 16 ids a millisecond,
 *   a burst beyond that borrows later milliseconds, and an id is handed out only
 *   once a reservation covering its millisecond is on disk, so a restart (even
 *   with the clock set back) starts above every id the node ever handed out.
 * The bounds: 256 tags, so 256 machines over the network's life (a wiped home is
 * a new machine); 16,000 ids a second per node before ids run ahead of the
 * clock (by 1 s for every further 16,000); 2^41 ms from 2025 is 69.7 years.
 *
 * Ids made by the earlier layout (6 tag bits, 6 sequence bits, a tag hashed from
 * the peer id) lie below the time of the upgrade, so they do not meet these;
 * an insert that meets an existing key still gets 409 and draws again.
 */
export const ID_EPOCH_MS = Date.UTC(2025, 0, 1)
export const ID_TAG_BITS = 8
const SEQ_BITS = 4
/** How many node tags a network has */
export const ID_TAGS = 2 ** ID_TAG_BITS
const SEQ_MAX = 2 ** SEQ_BITS - 1
const LOW = 2 ** (ID_TAG_BITS + SEQ_BITS)
const MAX_MS = 2 ** 41 - 1

/**
 * Ids of one tag, from one clock. Pure: the tag and the floor (the reservation
 * a restart found on disk) come from IdSource.
 */
export class IdGenerator {
  private lastMs: number
  private seq = SEQ_MAX
  private readonly tag: number
  private readonly now: () => number

  /** `floorMs`: every id is above any id of a millisecond at or below it (ms since ID_EPOCH_MS) */
  constructor (tag: number, now: () => number = Date.now, floorMs = -1) {
    if (!Number.isInteger(tag) || tag < 0 || tag >= ID_TAGS) throw new RangeError(`id tag ${tag} is outside 0..${ID_TAGS - 1}`)
    this.tag = tag
    this.now = now
    this.lastMs = floorMs
  }

  next (): number {
    let ms = Math.max(0, this.now() - ID_EPOCH_MS)
    if (ms <= this.lastMs) {
      ms = this.lastMs
      if (this.seq >= SEQ_MAX) {
        // This millisecond is used up (or lies below the floor): borrow the next one.
        ms += 1
        this.seq = 0
      } else {
        this.seq += 1
      }
    } else {
      this.seq = 0
    }
    if (ms > MAX_MS) throw new RangeError('the id space ends in 2094')
    this.lastMs = ms
    return ms * LOW + this.tag * (SEQ_MAX + 1) + this.seq
  }
}

/** When an id was made (ms since the Unix epoch) */
export function idTime (id: number): number {
  return Math.floor(id / LOW) + ID_EPOCH_MS
}

/** The tag of the node that made an id (ids of this layout) */
export function idTag (id: number): number {
  return Math.floor(id / (SEQ_MAX + 1)) % ID_TAGS
}

/** Milliseconds since ID_EPOCH_MS of an id */
export function idMs (id: number): number {
  return Math.floor(id / LOW)
}
