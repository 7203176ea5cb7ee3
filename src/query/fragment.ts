import { createHash } from 'node:crypto'
import { ValidationError } from '../errors/index.js'
import { allOf, checkCondition, columnOf, compareValues, type Condition } from '../schema/condition.js'
import { findTable, type Column, type Row, type TableDef, type Value } from '../schema/index.js'
import { tokenOf } from '../cluster/token.js'
import { winner, type Store } from '../storage/store.js'

/**
 * The part of a SELECT each owner runs on its own copy of a token range:
 * the rows of `table` that pass `filter`, each joined (on the owner, where
 * the rows it joins with live too) with the rows of each `joins` table in
 * turn holding the value of an earlier table's column, then grouped with
 * partial aggregates, or projected, sorted and cut to `limit`. The
 * coordinator merges the ranges' results. A column is `[source, name]`:
 * source 0 the table, 1 its first join, 2 the second...
 */
export interface Fragment {
  table: string
  filter?: Condition
  joins?: FragmentJoin[]
  /** Grouped: the group columns and the aggregates; else `columns` are projected */
  groupBy?: FragmentColumn[]
  aggregates?: FragmentAggregate[]
  columns?: FragmentColumn[]
  /** Rows mode: sort keys (each a `columns` index) and how many rows a range needs to give at most */
  orderBy?: Array<{ at: number, desc: boolean }>
  limit?: number
  /** Rows mode: only rows that sort after these values of the `orderBy` keys (where the page before stopped) */
  after?: Value[]
}

/** A column of one of a fragment's tables: 0 the table, n its n-th join */
export type FragmentColumn = [number, string]

/**
 * One table joined on the owner: its rows whose `column` equals the value of
 * `on` (a column of the table or of an earlier join). It is placed by that
 * column (so its rows live where the row they join does) or global.
 */
export interface FragmentJoin { table: string, column: string, on: FragmentColumn, filter?: Condition }

/** Most tables a fragment joins to its own */
export const MAX_JOINS = 7

export type AggregateFn = 'COUNT' | 'SUM' | 'AVG' | 'MIN' | 'MAX'
export interface FragmentAggregate { fn: AggregateFn, column?: FragmentColumn }

/** A partial aggregate: COUNT a number, SUM and AVG `[sum, count]`, MIN and MAX a value */
export type Partial = number | [number, number] | Value

export interface FragmentResult {
  /** Grouped: each group's key and partial aggregates */
  groups?: Array<{ key: Value[], partials: Partial[] }>
  rows?: Value[][]
  /**
   * A digest of every row version the result was computed from (ids and
   * winning versions, both tables): two copies whose digests agree gave
   * the same answer from the same rows.
   */
  digest: string
}

/** Where a fragment's rows come from: one owner's store, or the coordinator's quorum reads */
export interface FragmentSource {
  /** The rows of a table that pass a filter, within the fragment's ranges (or one shard value's rows, when `shard` is given) */
  rows: (table: string, filter: Condition | undefined, shard?: string) => AsyncIterable<{ row: Row, id: string, version: string }>
}

/** Longest text value of a fragment's `after` */
const MAX_KEY_CHARS = 64 * 1024

/** Most groups or rows a range's result may hold (and a merged answer) */
export const MAX_FRAGMENT_ROWS = 100_000

/** Most rows a range's joins may make (each table joined multiplies them: eight tables of a patient's 60 rows make 60^8) */
export const MAX_JOINED_ROWS = 10 * MAX_FRAGMENT_ROWS

/** Joined rows made between two yields to the event loop (rows looked up again come from memory, without I/O) */
const JOINED_PER_TURN = 10_000

/** Runs a fragment over a source (see Fragment) */
export async function runFragment (f: Fragment, source: FragmentSource): Promise<FragmentResult> {
  const tables = tablesOf(f)
  const joins = f.joins ?? []
  // Every copy reads its rows in the same order (the same plan over the same keys), so one running
  // hash of what was read is the same on copies that hold the same versions.
  const hash = createHash('sha256')
  const mix = (t: string, id: string, version: string): void => { hash.update(`${t}\u0000${id}\u0000${version}\n`) }
  const groups = new Map<string, { key: Value[], partials: Partial[] }>()
  const rows: Value[][] = []
  // Per join, the rows looked up for each value (a patient's history is read once for all their rows).
  const lookups = joins.map(() => new Map<string, Row[]>())
  let cached = 0
  let made = 0
  const past = f.after === undefined ? undefined : afterKey(f, tables, f.after)
  const emit = (tuple: Row[]): void => {
    const value = ([s, c]: FragmentColumn): Value => tuple[s]?.[c] ?? null
    if (f.aggregates !== undefined) {
      const key = (f.groupBy ?? []).map(value)
      const k = JSON.stringify(key)
      let g = groups.get(k)
      if (g === undefined) {
        g = { key, partials: f.aggregates.map(a => initial(a.fn)) }
        groups.set(k, g)
        if (groups.size > MAX_FRAGMENT_ROWS) throw new ValidationError(`SQL: more than ${MAX_FRAGMENT_ROWS} groups`)
      }
      f.aggregates.forEach((a, i) => {
        const g2 = g as { partials: Partial[] }
        g2.partials[i] = step(a, (g2.partials[i] ?? null) as Partial, a.column === undefined ? 1 : value(a.column), a.column === undefined ? undefined : columnOf(tables[a.column[0]] as TableDef, a.column[1]))
      })
      return
    }
    const projected = (f.columns ?? []).map(value)
    if (past !== undefined && !past(projected)) return
    rows.push(projected)
    // Only the best `limit` are kept: sorted and cut whenever twice as many have come.
    if (f.limit !== undefined && rows.length >= Math.max(2 * f.limit, 1000)) {
      sortRows(rows, f, tables)
      rows.length = f.limit
    }
    // With a limit the rows are held to twice it (at most twice MAX_FRAGMENT_ROWS) by the cut above.
    if (f.limit === undefined && rows.length > MAX_FRAGMENT_ROWS) throw new ValidationError(`SQL: this query makes more than ${MAX_FRAGMENT_ROWS} rows; narrow its WHERE or add a LIMIT`)
  }
  /** Joins a tuple with the rows of join `j` (and those after it), emitting each whole tuple */
  const expand = async (tuple: Row[], j: number): Promise<void> => {
    const join = joins[j]
    if (join === undefined) { emit(tuple); return }
    const joined = tables[j + 1] as TableDef
    const v = tuple[join.on[0]]?.[join.on[1]]
    if (v === null || v === undefined) return
    const cache = lookups[j] as Map<string, Row[]>
    const cacheKey = JSON.stringify(v)
    let others = cache.get(cacheKey)
    if (others === undefined) {
      others = []
      const filter = allOf([{ op: '=', column: join.column, value: v }, ...(join.filter === undefined ? [] : [join.filter])])
      // The joined rows of this key live where this row does (same shard value), or on every node (a global table).
      const shard = joined.shardKey === join.column ? `${joined.shardKey}:${String(v)}` : undefined
      for await (const o of source.rows(joined.name, filter, shard)) {
        mix(joined.name, o.id, o.version)
        others.push(o.row)
      }
      // The looked-up rows are kept for the values met again, up to a bound (then read again: the same rows, the same digest on every copy).
      cached += others.length + 1
      if (cached > MAX_FRAGMENT_ROWS) { for (const c of lookups) c.clear(); cached = others.length + 1 }
      cache.set(cacheKey, others)
    }
    for (const o of others) {
      if (++made > MAX_JOINED_ROWS) throw new ValidationError(`SQL: this join makes more than ${MAX_JOINED_ROWS.toLocaleString('en')} joined rows on one owner; narrow its WHERE`)
      if (made % JOINED_PER_TURN === 0) await new Promise(resolve => setImmediate(resolve))
      await expand([...tuple, o], j + 1)
    }
  }
  for await (const { row, id, version } of source.rows((tables[0] as TableDef).name, f.filter)) {
    mix((tables[0] as TableDef).name, id, version)
    if (joins.length === 0) emit([row])
    else await expand([row], 0)
  }
  const digest = hash.digest('hex').slice(0, 32)
  if (f.aggregates !== undefined) return { groups: [...groups.values()], digest }
  sortRows(rows, f, tables)
  if (f.limit !== undefined && rows.length > f.limit) rows.length = f.limit
  return { rows, digest }
}

/** The fragment's tables: its own, then each joined one */
function tablesOf (f: Fragment): TableDef[] {
  return [tableOf(f.table), ...(f.joins ?? []).map(j => tableOf(j.table))]
}

function initial (fn: AggregateFn): Partial {
  return fn === 'COUNT' ? 0 : fn === 'SUM' || fn === 'AVG' ? [0, 0] : null
}

function step (a: FragmentAggregate, p: Partial, v: Value, col: import('../schema/index.js').Column | undefined): Partial {
  if (v === null) return p
  switch (a.fn) {
    case 'COUNT': return (p as number) + 1
    case 'SUM':
    case 'AVG': {
      const [s, n] = p as [number, number]
      return [s + Number(v), n + 1]
    }
    case 'MIN': return p === null || (col !== undefined && compareValues(col, v, p as Value) < 0) ? v : p
    case 'MAX': return p === null || (col !== undefined && compareValues(col, v, p as Value) > 0) ? v : p
  }
}

/** Merges partial aggregates of one group from several ranges */
export function mergePartials (aggregates: FragmentAggregate[], a: Partial[], b: Partial[], colOf: (c: FragmentColumn) => import('../schema/index.js').Column): Partial[] {
  return aggregates.map((agg, i) => {
    const x = a[i] ?? null
    const y = b[i] ?? null
    switch (agg.fn) {
      case 'COUNT': return (x as number) + (y as number)
      case 'SUM':
      case 'AVG': return [(x as [number, number])[0] + (y as [number, number])[0], (x as [number, number])[1] + (y as [number, number])[1]]
      default: {
        if (x === null) return y
        if (y === null) return x
        const c = compareValues(colOf(agg.column as FragmentColumn), x as Value, y as Value)
        return agg.fn === 'MIN' ? (c <= 0 ? x : y) : (c >= 0 ? x : y)
      }
    }
  })
}

/** A merged partial as the answer's value */
export function finish (fn: AggregateFn, p: Partial): Value {
  switch (fn) {
    case 'COUNT': return p as number
    case 'SUM': {
      const [s, n] = p as [number, number]
      if (n === 0) return null
      // Decimal sums lose a trace to binary fractions (0.1 + 0.2): rounded to millionths, where s * 1e6 is
      // still exact; a whole sum (of INT) is exact as it is, and past that rounding would change it.
      return Number.isInteger(s) || Math.abs(s * 1e6) > Number.MAX_SAFE_INTEGER ? s : Math.round(s * 1e6) / 1e6
    }
    case 'AVG': { const [s, n] = p as [number, number]; return n === 0 ? null : s / n }
    default: return p as Value
  }
}

/** Sorts projected rows by the fragment's order (NULLs last ascending, first descending, as PostgreSQL) */
export function sortRows (rows: Value[][], f: Fragment, tables: TableDef[]): void {
  const order = f.orderBy ?? []
  if (order.length === 0) return
  const cols = orderColumns(f, tables)
  rows.sort((a, b) => {
    for (const [i, o] of order.entries()) {
      const c = compareKeyValues(cols[i] as Column, a[o.at] ?? null, b[o.at] ?? null)
      if (c !== 0) return o.desc ? -c : c
    }
    return 0
  })
}

/** The column each `orderBy` key sorts as */
function orderColumns (f: Fragment, tables: TableDef[]): Column[] {
  return (f.orderBy ?? []).map(o => {
    const [s, c] = (f.columns ?? [])[o.at] as FragmentColumn
    return columnOf(tables[s] as TableDef, c)
  })
}

/** Two values of a sort key in ascending order, NULL after every value */
function compareKeyValues (col: Column, x: Value, y: Value): number {
  return x === null || y === null ? (x === y ? 0 : x === null ? 1 : -1) : compareValues(col, x, y)
}

/** Whether a projected row sorts after `after` (its `orderBy` keys' values), as sortRows orders rows */
function afterKey (f: Fragment, tables: TableDef[], after: Value[]): (row: Value[]) => boolean {
  const order = f.orderBy ?? []
  const cols = orderColumns(f, tables)
  return row => {
    for (const [i, o] of order.entries()) {
      const c = compareKeyValues(cols[i] as Column, row[o.at] ?? null, after[i] ?? null)
      if (c !== 0) return o.desc ? c < 0 : c > 0
    }
    return false
  }
}

/** The values of a projected row's `orderBy` keys: where a page that ends with it stopped (see Fragment.after) */
export function keyOf (f: Fragment, row: Value[]): Value[] {
  return (f.orderBy ?? []).map(o => row[o.at] ?? null)
}

function tableOf (name: string): TableDef {
  const t = findTable(name)
  if (t === undefined) throw new ValidationError(`unknown table ${name}`)
  return t
}

/** A fragment as a peer sends it, checked whole (tables, columns, conditions, sizes) */
export function checkFragment (raw: unknown): Fragment {
  const m = raw as Record<string, unknown> | null
  if (m === null || typeof m !== 'object') throw new ValidationError('malformed fragment')
  const table = tableOf(String(m.table))
  const out: Fragment = { table: table.name }
  if (m.filter !== undefined) out.filter = checkCondition(table, m.filter)
  const tables = [table]
  const col = (c: unknown, sources = tables.length): FragmentColumn => {
    if (!Array.isArray(c) || c.length !== 2 || !Number.isSafeInteger(c[0]) || typeof c[1] !== 'string') throw new ValidationError('malformed fragment column')
    const t = c[0] >= 0 && c[0] < sources ? tables[c[0]] : undefined
    if (t === undefined) throw new ValidationError('fragment column of no joined table')
    return [c[0], columnOf(t, c[1]).name]
  }
  if (m.joins !== undefined) {
    if (!Array.isArray(m.joins) || m.joins.length > MAX_JOINS) throw new ValidationError('malformed fragment joins')
    out.joins = m.joins.map((j: any) => {
      if (j === null || typeof j !== 'object') throw new ValidationError('malformed fragment join')
      const joined = tableOf(String(j.table))
      const column = columnOf(joined, String(j.column)).name
      const on = col(j.on)
      // A joined table's rows must live where the rows they join do: placed by the join column, as the table is
      // and as the table of `on` is (its value is that key), or global.
      const placed = joined.shardKey === column && table.shardKey === column && on[1] === column && (tables[on[0]] as TableDef).shardKey === column
      if (joined.shardKey !== 'global' && !placed) throw new ValidationError(`fragment join of ${joined.name} on ${column}, which does not place it`)
      tables.push(joined)
      return { table: joined.name, column, on, ...(j.filter === undefined ? {} : { filter: checkCondition(joined, j.filter) }) }
    })
  }
  const list = (x: unknown, max = 100): unknown[] => {
    if (!Array.isArray(x) || x.length > max) throw new ValidationError('malformed fragment list')
    return x
  }
  if (m.groupBy !== undefined) out.groupBy = list(m.groupBy).map(c => col(c))
  if (m.aggregates !== undefined) {
    out.aggregates = list(m.aggregates).map((a: any) => {
      if (a === null || typeof a !== 'object' || !['COUNT', 'SUM', 'AVG', 'MIN', 'MAX'].includes(a.fn)) throw new ValidationError('malformed fragment aggregate')
      return { fn: a.fn as AggregateFn, ...(a.column === undefined ? {} : { column: col(a.column) }) }
    })
  }
  if (m.columns !== undefined) out.columns = list(m.columns, 1000).map(c => col(c))
  if (m.orderBy !== undefined) {
    out.orderBy = list(m.orderBy).map((o: any) => {
      if (o === null || typeof o !== 'object' || !Number.isSafeInteger(o.at) || o.at < 0 || o.at >= (out.columns?.length ?? 0) || typeof o.desc !== 'boolean') throw new ValidationError('malformed fragment order')
      return { at: o.at as number, desc: o.desc as boolean }
    })
  }
  if (m.limit !== undefined) {
    if (!Number.isSafeInteger(m.limit) || (m.limit as number) < 0 || (m.limit as number) > MAX_FRAGMENT_ROWS) throw new ValidationError('malformed fragment limit')
    out.limit = m.limit as number
  }
  if (m.after !== undefined) {
    // One value per sort key: a position in the order, nothing else.
    const scalar = (v: unknown): boolean => v === null || (typeof v === 'string' && v.length <= MAX_KEY_CHARS) || (typeof v === 'number' && Number.isFinite(v))
    if (out.orderBy === undefined || out.aggregates !== undefined || !Array.isArray(m.after) || m.after.length !== out.orderBy.length || !m.after.every(scalar)) throw new ValidationError('malformed fragment after')
    out.after = m.after as Value[]
  }
  return out
}

/** Merges the ranges' results into one (groups merged by key; rows concatenated, sorted and cut) */
export function mergeResults (f: Fragment, results: FragmentResult[]): FragmentResult {
  const tables = tablesOf(f)
  if (f.aggregates !== undefined) {
    const colOf = ([s, c]: FragmentColumn): import('../schema/index.js').Column => columnOf(tables[s] as TableDef, c)
    const groups = new Map<string, { key: Value[], partials: Partial[] }>()
    for (const r of results) {
      for (const g of r.groups ?? []) {
        const k = JSON.stringify(g.key)
        const have = groups.get(k)
        groups.set(k, have === undefined ? g : { key: g.key, partials: mergePartials(f.aggregates, have.partials, g.partials, colOf) })
      }
    }
    return { groups: [...groups.values()], digest: '' }
  }
  const rows = results.flatMap(r => r.rows ?? [])
  sortRows(rows, f, tables)
  if (f.limit !== undefined && rows.length > f.limit) rows.length = f.limit
  return { rows, digest: '' }
}

/** A fragment's rows from one store: those of `ranges` (all of a global table's, or one shard value's for a join lookup) */
export function storeSource (store: Store, ranges: Array<[string, string]> | undefined): FragmentSource {
  return {
    rows: async function * (table, filter, shard) {
      const def = tableOf(table)
      const own = shard !== undefined ? [[tokenOf(shard), tokenOf(shard) + '\u0000'] as [string, string]] : def.shardKey === 'global' ? undefined : ranges
      for await (const state of store.rows(table, filter, own)) {
        const head = winner(state)
        if (head?.row != null) yield { row: head.row, id: state.id, version: head.version }
      }
    }
  }
}

/** A peer's fragment answer: one result per range asked, each of the shape runFragment makes */
export function checkFragmentResults (x: unknown, ranges: number): FragmentResult[] {
  const results = (x as { results?: unknown } | null)?.results
  if (!Array.isArray(results) || results.length !== ranges) throw new ValidationError('malformed fragment answer')
  const scalar = (v: unknown): boolean => v === null || typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v))
  const partial = (p: unknown): boolean => scalar(p) || (Array.isArray(p) && p.length === 2 && p.every(v => typeof v === 'number' && Number.isFinite(v)))
  return results.map((r: any) => {
    if (r === null || typeof r !== 'object' || typeof r.digest !== 'string' || r.digest.length > 64) throw new ValidationError('malformed fragment result')
    if (r.groups !== undefined) {
      if (!Array.isArray(r.groups) || r.groups.length > MAX_FRAGMENT_ROWS || !r.groups.every((g: any) => g !== null && Array.isArray(g.key) && g.key.every(scalar) && Array.isArray(g.partials) && g.partials.every(partial))) {
        throw new ValidationError('malformed fragment groups')
      }
      return { groups: r.groups, digest: r.digest }
    }
    if (!Array.isArray(r.rows) || r.rows.length > MAX_FRAGMENT_ROWS || !r.rows.every((row: unknown) => Array.isArray(row) && row.every(scalar))) throw new ValidationError('malformed fragment rows')
    return { rows: r.rows, digest: r.digest }
  })
}
