import { ConflictError, NotFoundError, PreconditionFailedError } from '../errors/index.js'
import type { HybridClock } from '../storage/version.js'
import { winner, type RecordState, type VersionEntry } from '../storage/store.js'
import { recordKey } from '../storage/keys.js'
import type { Mutation, WriteResult } from './coordinator.js'
import { tokenOf } from './token.js'

export function mutationKey (m: Mutation): { table: string, token: string, id: string } {
  return { table: m.table, token: tokenOf(m.shard), id: m.id }
}

/**
 * The primary's step: turns logical mutations into new versions against the
 * current states, checking existence and `If-Match`. Mutations on the same
 * record in one batch chain onto each other.
 */
export function orderMutations (mutations: Mutation[], states: Map<string, RecordState | undefined>, clock: HybridClock): { entries: VersionEntry[], results: WriteResult[] } {
  const current = new Map(states)
  const entries: VersionEntry[] = []
  const results: WriteResult[] = []
  for (const m of mutations) {
    const { table, token, id } = mutationKey(m)
    const key = recordKey(token, table, id)
    const state = current.get(key)
    const head = state === undefined ? undefined : winner(state)
    const live = head !== undefined && head.row !== null
    if (m.op === 'insert' && live) {
      throw new ConflictError(`${table} ${id} already exists`)
    }
    if (m.op !== 'insert' && !live) {
      throw new NotFoundError(`${table} ${id} not found`)
    }
    let parents: string[]
    if (m.ifMatch !== undefined && m.ifMatch.length > 0) {
      const heads = new Set(state?.heads.map(h => h.version) ?? [])
      const stale = m.ifMatch.filter(v => !heads.has(v))
      if (stale.length > 0) {
        throw new PreconditionFailedError(`${table} ${id}: version ${stale.join(', ')} is not current (current: ${[...heads].join(', ') || 'none'})`)
      }
      parents = [...m.ifMatch]
    } else {
      parents = head === undefined ? [] : [head.version]
    }
    for (const v of parents) clock.observe(v)
    const entry: VersionEntry = { table, id, token, version: clock.tick(), parents, row: m.op === 'delete' ? null : (m.row ?? null) }
    entries.push(entry)
    const parentSet = new Set(parents)
    current.set(key, {
      table, id, token,
      heads: [entry, ...(state?.heads.filter(h => !parentSet.has(h.version)) ?? [])],
      seen: [...(state?.seen ?? []), entry.version],
      superseded: [...(state?.superseded ?? []), ...parents]
    })
    results.push({ table, id, version: entry.version, row: entry.row })
  }
  return { entries, results }
}
