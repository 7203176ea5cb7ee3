import { createHash } from 'node:crypto'
import type { Store, VersionEntry } from '../storage/store.js'
import type { Mutation } from './coordinator.js'
import { tokenOf } from './token.js'

/**
 * The write id of one part of a keyed write: a hash of the client's
 * Idempotency-Key and what the part writes, in the form of random write ids
 * (16 hex digits). The same key sent again makes the same ids, so any owner
 * that holds a version carrying one answers that version instead of
 * writing again.
 */
export function keyedWriteId (key: string, ...scope: Array<string | number>): string {
  const h = createHash('sha256').update(key)
  for (const part of scope) h.update('\u0000').update(String(part))
  return h.digest('hex').slice(0, 16)
}

/**
 * The versions already made by keyed mutations whose write id is not on a
 * current head here (a later write replaced it): found in the records'
 * local history, so a repeat of that write answers it rather than write it
 * again on top of the later one.
 */
export async function recallWrites (store: Store, mutations: Mutation[]): Promise<Map<string, VersionEntry>> {
  const found = new Map<string, VersionEntry>()
  for (const m of mutations) {
    if (m.keyed !== true || m.writeId === undefined) continue
    const token = tokenOf(m.shard)
    const state = await store.get(m.table, token, m.id)
    if (state === undefined || state.heads.some(h => h.writeId === m.writeId)) continue
    const earlier = (await store.versions(m.table, token, m.id)).find(v => v.writeId === m.writeId)
    if (earlier !== undefined) found.set(earlier.writeId as string, earlier)
  }
  return found
}
