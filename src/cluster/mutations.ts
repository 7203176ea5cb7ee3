import { ConflictError, NotFoundError, NtsoekheError, PreconditionFailedError } from '../errors/index.js'
import type { HybridClock } from '../storage/version.js'
import { nextState, winner, type RecordState, type VersionEntry } from '../storage/store.js'
import { recordKey } from '../storage/keys.js'
import type { GroupOutcome, Mutation, WriteResult } from './coordinator.js'
import { tokenOf } from './token.js'

export function mutationKey (m: Mutation): { table: string, token: string, id: string } {
  return { table: m.table, token: tokenOf(m.shard), id: m.id }
}

/** Read access to record states by record key */
export interface StateView {
  get: (key: string) => RecordState | undefined
}

/**
 * The primary's step: turns logical mutations into new versions against the
 * current states, checking existence and `If-Match`. Mutations on the same
 * record in one batch chain onto each other.
 *
 * `retry` marks a write sent again after the owner first asked went silent
 * with the write possibly applied: a mutation whose write id is already on
 * the record's head is answered with that version instead of 409, 412 or
 * 404, and the head is returned among the entries again so it reaches W
 * replicas (applying it twice changes nothing). A keyed mutation (from an
 * Idempotency-Key) is treated so always, and one whose version a later
 * write replaced is answered from `recalled` (see recallWrites).
 */
export function orderMutations (mutations: Mutation[], states: StateView, clock: HybridClock, retry = false, recalled?: ReadonlyMap<string, VersionEntry>): { entries: VersionEntry[], results: WriteResult[], changed: Map<string, RecordState> } {
  // The group's own changes over the shared states: committed to them only if the whole group succeeds.
  const changed = new Map<string, RecordState>()
  const current = { get: (key: string) => changed.has(key) ? changed.get(key) : states.get(key), set: (key: string, state: RecordState) => changed.set(key, state) }
  const entries: VersionEntry[] = []
  const results: WriteResult[] = []
  for (const m of mutations) {
    const { table, token, id } = mutationKey(m)
    const key = recordKey(token, table, id)
    const state = current.get(key)
    const head = winner(state)
    const live = head !== undefined && head.row !== null
    // A head that carries this write's id is this write, applied before: a retry, a keyed repeat, or
    // the same request delivered twice (a write id is random, 64 bits). Without either flag only the
    // stored heads are looked at: a later mutation of this group shares the id and must still apply.
    if ((retry || m.keyed === true || !changed.has(key)) && m.writeId !== undefined && state !== undefined) {
      const own = state.heads.find(h => h.writeId === m.writeId)
      if (own !== undefined) {
        if (!entries.includes(own)) entries.push(own)
        results.push({ table, id, version: own.version, row: own.row })
        continue
      }
      const earlier = recalled?.get(m.writeId)
      if (earlier !== undefined && earlier.table === table && earlier.id === id) {
        results.push({ table, id, version: earlier.version, row: earlier.row })
        continue
      }
    }
    if (m.op === 'insert' && live) {
      throw new ConflictError(`${table} ${id} already exists`)
    }
    if (m.op !== 'insert' && !live) {
      throw new NotFoundError(`${table} ${id} not found`)
    }
    let parents: string[]
    let row = m.op === 'delete' ? null : (m.row ?? null)
    if (m.changed !== undefined && head?.row != null && row !== null) {
      // A PATCH: its columns onto whatever the head is now (the caller's read may be overtaken).
      const patched = { ...head.row }
      for (const c of m.changed) if (c in row) patched[c] = row[c] ?? null
      row = patched
    }
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
    const entry: VersionEntry = { table, id, token, version: clock.tickAfter(parents), parents, row }
    if (m.writeId !== undefined) entry.writeId = m.writeId
    entries.push(entry)
    current.set(key, nextState(state, entry).after)
    results.push({ table, id, version: entry.version, row: entry.row })
  }
  return { entries, results, changed }
}


/**
 * Orders independent groups of mutations (each sharing one shard key) in one
 * pass: a group that fails (exists, not found, stale If-Match) is reported
 * and leaves no trace; later groups see the earlier groups' writes.
 */
export function orderGroups (groups: Mutation[][], states: StateView, clock: HybridClock): { entries: VersionEntry[], perGroup: VersionEntry[][], outcomes: GroupOutcome[] } {
  // Earlier groups' writes, seen by later ones; the caller's states stay as they were read.
  const overlay = new Map<string, RecordState>()
  const view: StateView = { get: key => overlay.has(key) ? overlay.get(key) : states.get(key) }
  const entries: VersionEntry[] = []
  const perGroup: VersionEntry[][] = []
  const outcomes: GroupOutcome[] = []
  for (const group of groups) {
    try {
      const ordered = orderMutations(group, view, clock)
      for (const [key, state] of ordered.changed) overlay.set(key, state)
      entries.push(...ordered.entries)
      perGroup.push(ordered.entries)
      outcomes.push({ ok: true, results: ordered.results })
    } catch (err) {
      if (!(err instanceof NtsoekheError)) throw err
      perGroup.push([])
      outcomes.push({ ok: false, error: err.toJSON() })
    }
  }
  return { entries, perGroup, outcomes }
}
