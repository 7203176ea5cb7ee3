import { ValidationError } from '../errors/index.js'
import type { Column, TableDef } from './tables.js'
import type { Value } from './validate.js'

/** A comparison of a column with a value */
export type Comparison = '=' | '<>' | '<' | '<=' | '>' | '>='

export const COMPARISONS: readonly Comparison[] = ['=', '<>', '<', '<=', '>', '>=']

/**
 * A row filter, as the query layer hands it to the owners: a tree of
 * comparisons, never text. SQL's WHERE and the `query` command's `--where`
 * both become one. Evaluated with SQL's three-valued logic: a comparison
 * with NULL is unknown, and a row passes only when the whole is true.
 */
export type Condition =
  | { op: Comparison, column: string, value: Value }
  | { op: 'in', column: string, values: Value[] }
  | { op: 'between', column: string, low: Value, high: Value }
  /** LIKE 'prefix%': the only LIKE pattern the subset takes */
  | { op: 'like', column: string, prefix: string }
  /** IS NULL, or IS NOT NULL when `negated` */
  | { op: 'null', column: string, negated: boolean }
  | { op: 'and' | 'or', args: Condition[] }
  | { op: 'not', arg: Condition }

/** Deepest condition tree a peer may send */
export const MAX_CONDITION_DEPTH = 64
/** Most values of one IN list, and arguments of one AND/OR */
export const MAX_CONDITION_ITEMS = 1000

/**
 * A value as it compares: numbers for INT and DECIMAL (stored as text),
 * timestamps in UTC ISO form (a zone-less one is taken as UTC, a date as its
 * midnight), other text as it is.
 */
export function comparable (col: Column, v: Value): string | number | null {
  if (v === null) return null
  switch (col.type) {
    case 'INT':
    case 'DECIMAL':
      return typeof v === 'number' ? v : Number(v)
    case 'TIMESTAMP':
      return typeof v === 'string' ? normalizeTimestamp(v) : String(v)
    default:
      return typeof v === 'string' ? v : String(v)
  }
}

/** Orders two non-null values of a column (negative, zero, positive) */
export function compareValues (col: Column, a: Value, b: Value): number {
  const x = comparable(col, a)
  const y = comparable(col, b)
  if (x === null || y === null) return x === y ? 0 : x === null ? -1 : 1
  if (typeof x === 'number' && typeof y === 'number') return x < y ? -1 : x > y ? 1 : 0
  const s = String(x)
  const t = String(y)
  return s < t ? -1 : s > t ? 1 : 0
}

/** A timestamp (or a date) as a UTC ISO string with milliseconds, so timestamps compare as strings */
export function normalizeTimestamp (s: string): string {
  // The common forms, without parsing: the canonical UTC form itself, a zone-less time to the second, a date.
  if (s.length === 24 && s[10] === 'T' && s[19] === '.' && s[23] === 'Z') return s
  if (s.length === 19 && (s[10] === 'T' || s[10] === ' ') && s[13] === ':' && s[16] === ':') return `${s.slice(0, 10)}T${s.slice(11)}.000Z`
  if (s.length === 10 && s[4] === '-' && s[7] === '-') return `${s}T00:00:00.000Z`
  let text = s.length === 10 ? `${s}T00:00:00` : s.replace(' ', 'T')
  const zone = /(Z|[+-]\d{2}:?\d{2})$/.exec(text)
  if (zone === null) text += 'Z'
  else if (zone[1] !== 'Z' && !(zone[1] as string).includes(':')) text = text.slice(0, -2) + ':' + text.slice(-2)
  const t = Date.parse(text)
  return Number.isNaN(t) ? s : new Date(t).toISOString()
}

/**
 * A value as an ordered-index key part: its order as a string is the
 * value's order. NULL first, then numbers (IEEE 754 bits made sortable),
 * then text (UTF-16 code units in hex, JavaScript's string order). None
 * holds the key separator.
 */
export function encodeOrdered (col: Column, v: Value): string {
  const x = comparable(col, v)
  if (x === null) return '0'
  if (typeof x === 'number') {
    const buf = Buffer.alloc(8)
    buf.writeDoubleBE(x === 0 ? 0 : x)
    if ((buf[0] as number) & 0x80) for (let i = 0; i < 8; i++) buf[i] = ~(buf[i] as number) & 0xff
    else buf[0] = (buf[0] as number) | 0x80
    return '1' + buf.toString('hex')
  }
  let out = '2'
  for (let i = 0; i < x.length; i++) out += x.charCodeAt(i).toString(16).padStart(4, '0')
  return out
}

/** The column a condition names, or a ValidationError naming the table */
export function columnOf (table: TableDef, name: string): Column {
  const col = table.columns.find(c => c.name === name)
  if (col === undefined) throw new ValidationError(`Unknown column ${name} in table ${table.name}`, { column: name })
  return col
}

/** Whether `row` passes `cond`: true, false, or null (unknown: a NULL was compared) */
export function evaluate (table: TableDef, cond: Condition, row: Record<string, Value | undefined>): boolean | null {
  switch (cond.op) {
    case 'and': {
      let unknown = false
      for (const a of cond.args) {
        const r = evaluate(table, a, row)
        if (r === false) return false
        if (r === null) unknown = true
      }
      return unknown ? null : true
    }
    case 'or': {
      let unknown = false
      for (const a of cond.args) {
        const r = evaluate(table, a, row)
        if (r === true) return true
        if (r === null) unknown = true
      }
      return unknown ? null : false
    }
    case 'not': {
      const r = evaluate(table, cond.arg, row)
      return r === null ? null : !r
    }
    case 'null': {
      const isNull = row[cond.column] === null || row[cond.column] === undefined
      return cond.negated ? !isNull : isNull
    }
    default:
      break
  }
  const col = columnOf(table, cond.column)
  const v = row[cond.column] ?? null
  if (v === null) return null
  switch (cond.op) {
    case 'in': {
      let unknown = false
      for (const x of cond.values) {
        if (x === null) { unknown = true; continue }
        if (compareValues(col, v, x) === 0) return true
      }
      return unknown ? null : false
    }
    case 'between': {
      // x >= low AND x <= high: a NULL bound is unknown, which a bound the value misses still makes false
      // (so NOT (x BETWEEN 5 AND NULL) holds for x < 5, as in PostgreSQL).
      const above = cond.low === null ? null : compareValues(col, v, cond.low) >= 0
      const below = cond.high === null ? null : compareValues(col, v, cond.high) <= 0
      return above === false || below === false ? false : above === null || below === null ? null : true
    }
    case 'like':
      return typeof v === 'string' && v.startsWith(cond.prefix)
    default: {
      if (cond.value === null) return null
      return satisfies(compareValues(col, v, cond.value), cond.op)
    }
  }
}

/** Whether a comparison's result (negative, zero, positive: as compareValues gives it) satisfies `op` */
export function satisfies (c: number, op: Comparison): boolean {
  switch (op) {
    case '=': return c === 0
    case '<>': return c !== 0
    case '<': return c < 0
    case '<=': return c <= 0
    case '>': return c > 0
    case '>=': return c >= 0
  }
}

/** The conditions a top-level AND holds (the whole condition when it is not an AND) */
export function conjuncts (cond: Condition | undefined): Condition[] {
  if (cond === undefined) return []
  if (cond.op === 'and') return cond.args.flatMap(a => conjuncts(a))
  return [cond]
}

/** Conditions joined by AND (undefined for none) */
export function allOf (conds: Condition[]): Condition | undefined {
  if (conds.length === 0) return undefined
  if (conds.length === 1) return conds[0]
  return { op: 'and', args: conds }
}

/** Every column a condition names */
export function conditionColumns (cond: Condition | undefined, out = new Set<string>()): Set<string> {
  if (cond === undefined) return out
  if (cond.op === 'and' || cond.op === 'or') for (const a of cond.args) conditionColumns(a, out)
  else if (cond.op === 'not') conditionColumns(cond.arg, out)
  else if ('column' in cond) out.add(cond.column)
  return out
}

/**
 * A condition as received from a peer (or any untrusted source), checked
 * whole: its shape, its columns (of `table`), its values. Throws a
 * ValidationError naming what is wrong.
 */
export function checkCondition (table: TableDef, raw: unknown, depth = 0): Condition {
  if (depth > MAX_CONDITION_DEPTH) throw new ValidationError('condition nested too deeply')
  const c = raw as Record<string, unknown> | null
  if (c === null || typeof c !== 'object' || Array.isArray(c) || typeof c.op !== 'string') throw new ValidationError('malformed condition')
  const value = (v: unknown): Value => {
    if (v === null || typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v))) return v
    throw new ValidationError('malformed condition value')
  }
  const column = (): string => {
    if (typeof c.column !== 'string') throw new ValidationError('malformed condition column')
    return columnOf(table, c.column).name
  }
  switch (c.op) {
    case 'and':
    case 'or':
      if (!Array.isArray(c.args) || c.args.length === 0 || c.args.length > MAX_CONDITION_ITEMS) throw new ValidationError(`malformed ${c.op}`)
      return { op: c.op, args: c.args.map(a => checkCondition(table, a, depth + 1)) }
    case 'not':
      return { op: 'not', arg: checkCondition(table, c.arg, depth + 1) }
    case 'null':
      if (typeof c.negated !== 'boolean') throw new ValidationError('malformed IS NULL')
      return { op: 'null', column: column(), negated: c.negated }
    case 'in':
      if (!Array.isArray(c.values) || c.values.length === 0 || c.values.length > MAX_CONDITION_ITEMS) throw new ValidationError('malformed IN list')
      return { op: 'in', column: column(), values: c.values.map(value) }
    case 'between':
      return { op: 'between', column: column(), low: value(c.low), high: value(c.high) }
    case 'like':
      if (typeof c.prefix !== 'string') throw new ValidationError('malformed LIKE')
      return { op: 'like', column: column(), prefix: c.prefix }
    default:
      if (!(COMPARISONS as readonly string[]).includes(c.op)) throw new ValidationError(`unknown condition ${JSON.stringify(c.op)}`)
      return { op: c.op as Comparison, column: column(), value: value(c.value) }
  }
}

/** Comparison operators a `col<op>value` filter may use, longest first so `<=` is not read as `<` */
const FILTER_OPS = ['<>', '!=', '<=', '>=', '=', '<', '>'] as const

/**
 * A filter as a user types it (`date>=2026-01-01`, `doctor_id=7`,
 * `status<>done`): the column, the first comparison operator after it,
 * and the rest as the (still untyped) value. `!=` means `<>`.
 */
export function parseComparison (text: string): { column: string, op: Comparison, value: string } {
  let at = -1
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]
    if (ch === '<' || ch === '>' || ch === '=' || ch === '!') { at = i; break }
  }
  if (at <= 0) throw new ValidationError(`A filter is <column><op><value> with op one of =, <>, <, <=, >, >=; got ${JSON.stringify(text)}`)
  const op = FILTER_OPS.find(o => text.startsWith(o, at))
  if (op === undefined) throw new ValidationError(`A filter is <column><op><value> with op one of =, <>, <, <=, >, >=; got ${JSON.stringify(text)}`)
  return { column: text.slice(0, at).trim(), op: op === '!=' ? '<>' : op, value: text.slice(at + op.length) }
}
