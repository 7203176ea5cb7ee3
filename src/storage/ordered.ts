import { conjuncts, encodeOrdered, type Condition } from '../schema/condition.js'
import { findTable, TABLES, type Row, type TableDef, type Value } from '../schema/index.js'
import { SEP } from './keys.js'

/**
 * A read of a table's rows in order, as one owner answers it: the rows that
 * pass `filter`, sorted by `orderBy` (the primary key when absent), from
 * `after` on, at most `limit` of them.
 */
export interface RowQuery {
  filter?: Condition
  /** The column to sort by; the primary key when absent */
  orderBy?: string
  desc?: boolean
  /** Only rows whose ring token lies in one of these [from, to) ranges (`to` '' for the end of the ring) */
  tokenRanges?: Array<[string, string]>
  /** Resume after this sort key (a `key` this plan answered before) */
  after?: string
  limit: number
}

export interface RowPage {
  /** Rows in order, each with its sort key: the same query on any owner gives comparable keys */
  rows: Array<{ state: import('./store.js').RecordState, key: string }>
  /** The key to resume after, when more rows may follow */
  next?: string
}

/** How an owner finds a query's rows (see planRows) */
export type RowPlan =
  /** An ordered index gives the rows in the asked order: read from `prefix`, within the bounds, stop at the limit */
  | { kind: 'ordered', index: string[], prefix: string, lower?: string, lowerInclusive: boolean, upper?: string, upperInclusive: boolean }
  /** No index gives the order: candidates from `source`, the best `limit` kept as they come */
  | { kind: 'sorted', source: CandidateSource }

export type CandidateSource =
  | { type: 'equality', column: string, value: Value }
  | { type: 'range', index: string[], prefix: string, lower?: string, lowerInclusive: boolean, upper?: string, upperInclusive: boolean }
  | { type: 'table' }

/** An ordered index's name in its keys: its columns joined by commas */
export function indexName (columns: string[]): string {
  return columns.join(',')
}

/** The key of a row's entry in one ordered index */
export function orderedEntry (table: TableDef, cols: string[], row: Row, token: string, id: string): string {
  return table.name + SEP + indexName(cols) + SEP + cols.map(c => encodeOrdered(colOf(table, c), row[c] ?? null)).join(SEP) + SEP + token + SEP + id
}

/** The keys (in the ordered sublevel) of a row's ordered-index entries */
export function orderedEntries (table: TableDef, row: Row, token: string, id: string): string[] {
  const out: string[] = []
  const pos = token + SEP + id
  for (const cols of table.ordered) {
    out.push(table.name + SEP + indexName(cols) + SEP + cols.map(c => encodeOrdered(colOf(table, c), row[c] ?? null)).join(SEP) + SEP + pos)
  }
  return out
}

/** Every table's ordered indexes as one string: a store built for another one rebuilds them at open */
export function orderedSignature (): string {
  return JSON.stringify(TABLES.map(t => [t.name, t.ordered]))
}

/** The columns rows sort by: the asked column, else the primary key */
export function orderColumns (table: TableDef, orderBy: string | undefined): string[] {
  return orderBy === undefined ? table.primaryKey : [orderBy]
}

/**
 * Chooses how an owner reads a query's rows. An ordered index whose leading
 * columns the filter fixes by equality and whose next columns are the sort
 * columns gives the rows in order, so the read stops after `limit` (the
 * most leading equalities win). Otherwise the rows are gathered from the
 * narrowest source (an equality index, a range on an ordered index's first
 * column, else the whole table) and the best `limit` kept. Deterministic:
 * every owner chooses the same plan, so their sort keys compare.
 */
export function planRows (table: TableDef, query: RowQuery, equalityIndexed: readonly string[]): RowPlan {
  const conds = conjuncts(query.filter)
  const eq = new Map<string, Value>()
  for (const c of conds) if (c.op === '=' && c.value !== null && !eq.has(c.column)) eq.set(c.column, c.value)
  const order = orderColumns(table, query.orderBy)
  let best: { index: string[], fixed: number } | undefined
  for (const cols of table.ordered) {
    let fixed = 0
    while (fixed < cols.length && eq.has(cols[fixed] as string) && !order.includes(cols[fixed] as string)) fixed++
    const next = cols.slice(fixed, fixed + order.length)
    if (next.length !== order.length || !next.every((c, i) => c === order[i])) continue
    if (best === undefined || fixed > best.fixed || (fixed === best.fixed && cols.length < best.index.length)) best = { index: cols, fixed }
  }
  let ordered: RowPlan | undefined
  if (best !== undefined) {
    const prefix = indexPrefix(table, best.index, best.index.slice(0, best.fixed).map(c => eq.get(c) as Value))
    const b = bounds(table, conds, order[0] as string, prefix)
    ordered = { kind: 'ordered', index: best.index, prefix, ...b }
    // Narrowed by the filter (a fixed prefix, a range on the order): read in order, stop at the limit.
    if (best.fixed > 0 || b.lower !== undefined || b.upper !== undefined) return ordered
  }
  // A filter that narrows some other index reads fewer rows than a whole index in order would.
  const narrow = narrowestSource(table, conds, eq, equalityIndexed)
  if (narrow !== undefined) return { kind: 'sorted', source: narrow }
  return ordered ?? { kind: 'sorted', source: { type: 'table' } }
}

/** The narrowest candidates a filter allows: an equality index, an ordered index's first column fixed or bounded; none when it narrows nothing */
function narrowestSource (table: TableDef, conds: Condition[], eq: Map<string, Value>, equalityIndexed: readonly string[]): CandidateSource | undefined {
  for (const [column, value] of eq) {
    if (equalityIndexed.includes(column)) return { type: 'equality', column, value }
  }
  for (const cols of table.ordered) {
    const first = cols[0] as string
    if (eq.has(first)) {
      const prefix = indexPrefix(table, cols, [eq.get(first) as Value])
      return { type: 'range', index: cols, prefix, lowerInclusive: true, upperInclusive: true }
    }
  }
  for (const cols of table.ordered) {
    const prefix = indexPrefix(table, cols, [])
    const b = bounds(table, conds, cols[0] as string, prefix)
    if (b.lower !== undefined || b.upper !== undefined) return { type: 'range', index: cols, prefix, ...b }
  }
  return undefined
}

/** The key prefix of an ordered index's entries whose leading columns hold `values` */
function indexPrefix (table: TableDef, index: string[], values: Value[]): string {
  return table.name + SEP + indexName(index) + SEP + values.map((v, i) => encodeOrdered(colOf(table, index[i] as string), v) + SEP).join('')
}

/**
 * The tightest bounds the filter's top-level comparisons put on `column`,
 * the first column after `prefix`, as keys: an entry with value v starts
 * `prefix + enc(v) + SEP`, so an inclusive lower bound is that, an
 * exclusive one that followed by a character above any key's.
 */
function bounds (table: TableDef, conds: Condition[], column: string, prefix: string): { lower?: string, lowerInclusive: boolean, upper?: string, upperInclusive: boolean } {
  const col = colOf(table, column)
  let lower: string | undefined
  let upper: string | undefined
  const raise = (v: Value, inclusive: boolean): void => {
    if (v === null) return
    const k = prefix + encodeOrdered(col, v) + SEP + (inclusive ? '' : '\xff')
    if (lower === undefined || k > lower) lower = k
  }
  const lowerTo = (v: Value, inclusive: boolean): void => {
    if (v === null) return
    const k = prefix + encodeOrdered(col, v) + SEP + (inclusive ? '\xff' : '')
    if (upper === undefined || k < upper) upper = k
  }
  for (const c of conds) {
    if (!('column' in c) || c.column !== column) continue
    switch (c.op) {
      case '=': raise(c.value, true); lowerTo(c.value, true); break
      case '>': raise(c.value, false); break
      case '>=': raise(c.value, true); break
      case '<': lowerTo(c.value, false); break
      case '<=': lowerTo(c.value, true); break
      case 'between': raise(c.low, true); lowerTo(c.high, true); break
      case 'like':
        if (col.type === 'VARCHAR' && c.prefix !== '') {
          // Every text starting with the prefix sorts from it up to (not with) the prefix whose last code unit is one more.
          raise(c.prefix, true)
          const last = c.prefix.charCodeAt(c.prefix.length - 1)
          if (last < 0xffff) lowerTo(c.prefix.slice(0, -1) + String.fromCharCode(last + 1), false)
        }
        break
      default: break
    }
  }
  // Bounds are written as [lower, upper) with the inclusiveness folded into the key.
  return { ...(lower === undefined ? {} : { lower }), lowerInclusive: true, ...(upper === undefined ? {} : { upper }), upperInclusive: false }
}

function colOf (table: TableDef, name: string): import('../schema/index.js').Column {
  const col = table.columns.find(c => c.name === name)
  if (col === undefined) throw new Error(`schema: no column ${table.name}.${name}`)
  return col
}

/** The sort key of a row gathered by a 'sorted' plan: its sort columns' values, then its position */
export function sortedKey (table: TableDef, order: string[], row: Row, token: string, id: string): string {
  return order.map(c => encodeOrdered(colOf(table, c), row[c] ?? null)).join(SEP) + SEP + token + SEP + id
}

/** Whether `token` lies in one of the [from, to) ranges (none given: every token) */
export function inRanges (token: string, ranges: Array<[string, string]> | undefined): boolean {
  if (ranges === undefined) return true
  for (const [from, to] of ranges) {
    if (token >= from && (to === '' || token < to)) return true
  }
  return false
}

export { findTable }
