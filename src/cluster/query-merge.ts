import { NtsoekheError, UnavailableError } from '../errors/index.js'
import { conjuncts, evaluate, type Condition } from '../schema/condition.js'
import { findTable, type Row, type TableDef } from '../schema/index.js'
import { SEP } from '../storage/keys.js'
import { orderColumns, orderedEntries, planRows, sortedKey, type RowPage, type RowPlan, type RowQuery } from '../storage/ordered.js'
import { mergeStates, winner, type RecordState } from '../storage/store.js'

/** A token range and the members that hold it */
export interface OwnedRange { from: string, to: string, owners: string[] }

export interface MergeQueryInput {
  table: TableDef
  request: RowQuery
  /** The ranges the query covers, in token order */
  ranges: OwnedRange[]
  /** Copies each range is read from (the read quorum, 1 at `one`, all at `all`) */
  need: number
  /** Fail when a range cannot be read from `need` members (consistency `all`) */
  strict: boolean
  /** This node: asked first where it is an owner */
  self: string
  /** Whether a member may be asked (not known to be down) */
  usable: (peer: string) => boolean
  /**
   * Whether a member answered lately (not suspect): such owners are asked
   * before a silent one, which would hold the query for a whole timeout
   * until it is down (a frozen machine keeps its connections open)
   */
  alive?: (peer: string) => boolean
  /** One page of the query from a member, for the given token ranges */
  fetch: (peer: string, query: RowQuery) => Promise<RowPage>
  /** A record read from its owners, when the copies asked disagree on it */
  resolve: (token: string, id: string) => Promise<RecordState | undefined>
  log?: (msg: string, ...args: unknown[]) => void
}

interface Stream {
  peer: string
  ranges: Array<[string, string]>
  buffer: Array<{ state: RecordState, key: string }>
  /** Where its next page starts */
  after: string | undefined
  done: boolean
  dead: boolean
}

interface Assigned { from: string, to: string, owners: string[], streams: Set<Stream> }

/**
 * Reads an ordered query across the network: each range from `need` of its
 * owners (this node first, then the least loaded), one stream per member
 * covering all its ranges; the sorted streams are merged k-way and the
 * merge stops at the limit. A record that fewer copies listed at a key
 * than were asked (a copy behind, or ahead, of the others) is read from its
 * owners and kept only at the key its winning row has. A member that does
 * not answer is replaced, for its ranges, by another owner from where the
 * merge had got to.
 */
export async function mergeQuery (input: MergeQueryInput): Promise<RowPage & { asked: Array<{ peer: string, ranges: number }> }> {
  const { table, request } = input
  const desc = request.desc === true
  const plan = planRows(table, request, table.indexed)
  const assigned: Assigned[] = input.ranges.map(r => ({ ...r, streams: new Set<Stream>() }))
  const streams: Stream[] = []
  const load = new Map<string, number>()
  const streamOf = (peer: string, fresh: boolean, after: string | undefined): Stream => {
    let s = fresh ? undefined : streams.find(x => x.peer === peer && !x.dead)
    if (s === undefined) {
      s = { peer, ranges: [], buffer: [], after, done: false, dead: false }
      streams.push(s)
    }
    return s
  }
  for (const range of assigned) {
    const candidates = range.owners.filter(input.usable)
    const silent = (p: string): number => input.alive === undefined || input.alive(p) ? 0 : 1
    candidates.sort((a, b) => (a === input.self ? -1 : b === input.self ? 1 : (silent(a) - silent(b)) || (load.get(a) ?? 0) - (load.get(b) ?? 0)))
    const chosen = candidates.slice(0, input.need)
    if (chosen.length === 0 || (input.strict && chosen.length < input.need)) {
      throw new UnavailableError(`${table.name}: ${chosen.length} of the ${input.need} owners needed for a token range can be asked`)
    }
    for (const peer of chosen) {
      const s = streamOf(peer, false, request.after)
      s.ranges.push([range.from, range.to])
      range.streams.add(s)
      load.set(peer, (load.get(peer) ?? 0) + 1)
    }
  }
  const asked = streams.map(s => ({ peer: s.peer, ranges: s.ranges.length }))
  const before = (a: string, b: string): boolean => desc ? a > b : a < b
  const rows: RowPage['rows'] = []
  const decided = new Set<string>()
  let position = request.after

  /** Gives a dead stream's ranges to other owners, reading on from where the merge is */
  const replace = (dead: Stream): void => {
    dead.dead = true
    for (const range of assigned) {
      if (!range.streams.delete(dead)) continue
      const taken = new Set([...range.streams].map(s => s.peer))
      const spare = range.owners.find(p => input.usable(p) && p !== dead.peer && !taken.has(p) && !streams.some(s => s.dead && s.peer === p))
      if (spare === undefined) {
        if (input.strict || range.streams.size === 0) throw new UnavailableError(`${table.name}: no owner of a token range answered`)
        continue
      }
      const s = streamOf(spare, true, position)
      s.ranges.push([range.from, range.to])
      range.streams.add(s)
      asked.push({ peer: spare, ranges: 1 })
    }
  }

  const fill = async (s: Stream): Promise<void> => {
    try {
      const page = await input.fetch(s.peer, { ...request, tokenRanges: s.ranges, limit: Math.max(request.limit - rows.length, 1), ...(s.after === undefined ? {} : { after: s.after }) })
      // Rows at or before where the merge is were taken from other streams already.
      s.buffer = page.rows.filter(r => position === undefined || before(position, r.key))
      s.after = page.next
      s.done = page.next === undefined
    } catch (err) {
      if (!(err instanceof NtsoekheError)) throw err
      input.log?.('query of %s: %s did not answer (%s)', table.name, s.peer, err.message)
      replace(s)
    }
  }

  while (rows.length < request.limit) {
    let pending = streams.filter(s => !s.dead && s.buffer.length === 0 && !s.done)
    while (pending.length > 0) {
      await Promise.all(pending.map(fill))
      // Replacement streams start empty, and a page may hold only rows already merged: filled again.
      pending = streams.filter(s => !s.dead && s.buffer.length === 0 && !s.done)
    }
    let key: string | undefined
    for (const s of streams) {
      const head = s.buffer[0]
      if (!s.dead && head !== undefined && (key === undefined || before(head.key, key))) key = head.key
    }
    if (key === undefined) break
    const group: RecordState[] = []
    for (const s of streams) {
      if (!s.dead && s.buffer[0]?.key === key) group.push((s.buffer.shift() as { state: RecordState }).state)
    }
    position = key
    const { token, id } = positionOf(key)
    const pos = token + SEP + id
    if (decided.has(pos)) continue
    let state = mergeStates(group)
    if (group.length < copiesOf(assigned, token)) state = mergeStates([state, await input.resolve(token, id)])
    const row = winner(state)?.row ?? null
    if (state === undefined || row === null) { decided.add(pos); continue }
    const real = keyOf(table, plan, request, row, token, id)
    // Listed at a key its winning row no longer has: it is taken where that row sorts.
    if (real !== key) continue
    decided.add(pos)
    if (request.filter !== undefined && evaluate(table, request.filter, row) !== true) continue
    rows.push({ state, key })
  }
  const more = rows.length >= request.limit && streams.some(s => !s.dead && (s.buffer.length > 0 || !s.done))
  const last = rows[rows.length - 1]
  return more && last !== undefined ? { rows, next: last.key, asked } : { rows, asked }
}

/** How many streams read the range holding `token` */
function copiesOf (assigned: Assigned[], token: string): number {
  let lo = 0
  let hi = assigned.length - 1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    const r = assigned[mid] as Assigned
    if (token < r.from) hi = mid - 1
    else if (r.to !== '' && token >= r.to) lo = mid + 1
    else return r.streams.size
  }
  return 1
}

/** The sort key a row has under a plan: what its owner would list it at */
export function keyOf (table: TableDef, plan: RowPlan, request: RowQuery, row: Row, token: string, id: string): string {
  if (plan.kind === 'sorted') return sortedKey(table, orderColumns(table, request.orderBy), row, token, id)
  const entry = orderedEntries(table, row, token, id).find(k => k.startsWith(plan.prefix))
  return entry === undefined ? '' : entry.slice(plan.prefix.length)
}

/** The position (token and id) a sort key ends with */
export function positionOf (key: string): { token: string, id: string } {
  const last = key.lastIndexOf(SEP)
  const before = key.lastIndexOf(SEP, last - 1)
  return { token: key.slice(before + 1, last), id: key.slice(last + 1) }
}

/** The shard value (`patient_id:42`) a filter fixes by equality at its top level, if any */
export function singleShardOf (tableName: string, filter: Condition | undefined): string | undefined {
  const table = findTable(tableName)
  if (table === undefined || table.shardKey === 'global') return undefined
  for (const c of conjuncts(filter)) {
    if (c.op === '=' && c.column === table.shardKey && c.value !== null) return `${table.shardKey}:${String(c.value)}`
  }
  return undefined
}
