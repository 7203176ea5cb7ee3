import { createHash } from 'node:crypto'

/** Digits of a ring token: the first 64 bits of SHA-256, in hex, so tokens sort as strings */
export const TOKEN_HEX = 16

/** The ring token of a shard-key value (`patient_id:42`) */
export function tokenOf (shard: string): string {
  return createHash('sha256').update(shard).digest('hex').slice(0, TOKEN_HEX)
}
