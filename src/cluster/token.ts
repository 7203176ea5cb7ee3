import { hash } from 'node:crypto'

/** Digits of a ring token: the first 64 bits of SHA-256, in hex, so tokens sort as strings */
export const TOKEN_HEX = 16

/** Tokens computed lately: one write asks for its key's token several times on its way (about 2 us of hashing each) */
const recent = new Map<string, string>()
const RECENT_MAX = 8192

/** The ring token of a shard-key value (`patient_id:42`) */
export function tokenOf (shard: string): string {
  let token = recent.get(shard)
  if (token === undefined) {
    // The one-shot hash: no Hash object per call (a node receiving a share of the ring hashes every record's key).
    token = hash('sha256', shard, 'hex').slice(0, TOKEN_HEX)
    if (recent.size >= RECENT_MAX) recent.clear()
    recent.set(shard, token)
  }
  return token
}
