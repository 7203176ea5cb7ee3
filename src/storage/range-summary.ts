import { hash } from 'node:crypto'

/** Token ranges anti-entropy compares first: the top 8 bits of the 64-bit ring token */
export const BUCKETS = 256
/** Leaves per range: a leaf is the top 16 bits of the token, small enough to list its records */
export const LEAVES_PER_BUCKET = 256
export const LEAVES = BUCKETS * LEAVES_PER_BUCKET
const DIGEST_BYTES = 32
/** A leaf's key range is its 4 leading hex digits: tokens are 16 lowercase hex digits */
const LEAF_HEX = 4

/** The leaf (0..65535) a ring token falls in */
export function leafOf (token: string): number {
  return parseInt(token.slice(0, LEAF_HEX), 16)
}

/** The range (0..255) a leaf belongs to */
export function bucketOfLeaf (leaf: number): number {
  return leaf >>> 8
}

/** The key prefix shared by every record of a leaf */
export function leafPrefix (leaf: number): string {
  return leaf.toString(16).padStart(LEAF_HEX, '0')
}

/**
 * What a replica holds of one record, as anti-entropy compares it: the
 * record's key and its current heads. Two replicas with the same heads agree
 * on the record; any write or merge that changes them changes this.
 */
export function recordDigest (key: string, heads: readonly string[]): Buffer {
  // One-shot hash of the same bytes: a Hash object per record costs more than hashing its few dozen bytes.
  return hash('sha256', key + '\n' + [...heads].sort().join(','), 'buffer')
}

/**
 * A two-level hash summary of every record a store holds: per leaf, and per
 * range of 256 leaves, the XOR of its records' digests. XOR makes adding,
 * changing and removing a record O(1) and the result independent of order,
 * so the store keeps it up to date on every commit instead of rebuilding it
 * for each comparison. Equal summaries mean equal heads, with overwhelming
 * probability; a differing range is narrowed to its differing leaves.
 */
export class RangeSummary {
  private readonly leaves = Buffer.alloc(LEAVES * DIGEST_BYTES)
  private readonly buckets = Buffer.alloc(BUCKETS * DIGEST_BYTES)

  /** Adds a record's digest, or removes it (XOR is its own inverse) */
  toggle (token: string, digest: Buffer): void {
    const leaf = leafOf(token)
    xorInto(this.leaves, leaf * DIGEST_BYTES, digest)
    xorInto(this.buckets, bucketOfLeaf(leaf) * DIGEST_BYTES, digest)
  }

  /** The 256 ranges' digests, hex */
  bucketDigests (): string[] {
    return Array.from({ length: BUCKETS }, (_, b) => this.buckets.toString('hex', b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES))
  }

  /** The digests of one range's 256 leaves, hex */
  leafDigests (bucket: number): string[] {
    const first = bucket * LEAVES_PER_BUCKET
    return Array.from({ length: LEAVES_PER_BUCKET }, (_, i) => this.leaves.toString('hex', (first + i) * DIGEST_BYTES, (first + i + 1) * DIGEST_BYTES))
  }

  /** Non-empty leaves, as `{ leaf: hex }`, for saving */
  toJSON (): Record<string, string> {
    const out: Record<string, string> = {}
    for (let leaf = 0; leaf < LEAVES; leaf++) {
      const at = leaf * DIGEST_BYTES
      if (!isZero(this.leaves, at)) out[String(leaf)] = this.leaves.toString('hex', at, at + DIGEST_BYTES)
    }
    return out
  }

  /** A summary saved by toJSON; undefined when it is malformed */
  static fromJSON (saved: unknown): RangeSummary | undefined {
    if (saved === null || typeof saved !== 'object' || Array.isArray(saved)) return undefined
    const summary = new RangeSummary()
    for (const [k, v] of Object.entries(saved as Record<string, unknown>)) {
      const leaf = Number(k)
      if (!Number.isSafeInteger(leaf) || leaf < 0 || leaf >= LEAVES || typeof v !== 'string' || !/^[0-9a-f]{64}$/.test(v)) return undefined
      const digest = Buffer.from(v, 'hex')
      xorInto(summary.leaves, leaf * DIGEST_BYTES, digest)
      xorInto(summary.buckets, bucketOfLeaf(leaf) * DIGEST_BYTES, digest)
    }
    return summary
  }

  equals (other: RangeSummary): boolean {
    return this.leaves.equals(other.leaves) && this.buckets.equals(other.buckets)
  }
}

function xorInto (target: Buffer, at: number, digest: Buffer): void {
  for (let i = 0; i < DIGEST_BYTES; i++) target[at + i] = (target[at + i] as number) ^ (digest[i] as number)
}

function isZero (buf: Buffer, at: number): boolean {
  for (let i = 0; i < DIGEST_BYTES; i++) if (buf[at + i] !== 0) return false
  return true
}
