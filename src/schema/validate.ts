import { ValidationError } from '../errors/index.js'
import type { Column, TableDef } from './tables.js'

export type Value = number | string | null
export type Row = Record<string, Value>

const DATE_RE = /^(\d{4})-(\d{2})-(\d{2})$/
const TIMESTAMP_RE = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(:(\d{2})(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?$/

function isRealDate (y: number, m: number, d: number): boolean {
  // Not Date.UTC: it maps years 0-99 onto 1900-1999.
  const dt = new Date(0)
  dt.setUTCFullYear(y, m - 1, d)
  return dt.getUTCFullYear() === y && dt.getUTCMonth() === m - 1 && dt.getUTCDate() === d
}

/** The TIMESTAMP forms accepted, as error messages name them */
export const TIMESTAMP_FORMS = '2026-12-02T08:00:00Z, 2026-12-02T10:00:00+02:00, 2026-12-02 10:00+0200; stored as 2026-12-02T08:00:00.000Z'

interface ParsedTimestamp { year: number, month: number, day: number, hour: number, minute: number, second: number, ms: number, offsetMinutes: number | undefined }

/** An ISO 8601 date and time, checked field by field; the zone is left undefined when the text has none */
function parseTimestamp (value: unknown): ParsedTimestamp | undefined {
  const m = typeof value === 'string' ? TIMESTAMP_RE.exec(value) : null
  if (m === null) return undefined
  const [year, month, day, hour, minute] = [m[1], m[2], m[3], m[4], m[5]].map(Number) as [number, number, number, number, number]
  const second = Number(m[7] ?? 0)
  if (!isRealDate(year, month, day) || hour > 23 || minute > 59 || second > 59) return undefined
  // Sub-millisecond digits are dropped: the canonical form holds milliseconds.
  const ms = Number((m[8] ?? '.0').slice(1).padEnd(3, '0').slice(0, 3))
  const zone = m[9]
  let offsetMinutes: number | undefined
  if (zone === 'Z') {
    offsetMinutes = 0
  } else if (zone !== undefined) {
    const z = /^([+-])(\d{2}):?(\d{2})$/.exec(zone) as RegExpExecArray
    const [h, min] = [Number(z[2]), Number(z[3])]
    if (h > 23 || min > 59) return undefined
    offsetMinutes = (z[1] === '-' ? -1 : 1) * (h * 60 + min)
  }
  return { year, month, day, hour, minute, second, ms, offsetMinutes }
}

/** The one stored form of a moment: UTC, milliseconds, `Z` (`2026-12-02T08:00:00.000Z`) */
function canonical (t: ParsedTimestamp): string {
  const d = new Date(0)
  // Not Date.UTC: it maps years 0-99 onto 1900-1999.
  d.setUTCFullYear(t.year, t.month - 1, t.day)
  d.setUTCHours(t.hour, t.minute - (t.offsetMinutes ?? 0), t.second, t.ms)
  return d.toISOString()
}

/**
 * A moment given by a person outside a row (`audit --since`), read as a
 * TIMESTAMP column reads a value: a time names its zone (a time without one
 * names no moment, and is refused rather than read in whatever zone the
 * daemon's machine is in); a date alone is its midnight UTC. Returns the
 * canonical UTC form, which compares as a string in time order.
 */
export function parseMoment (value: string, what: string): string {
  const date = DATE_RE.exec(value)
  if (date !== null && isRealDate(Number(date[1]), Number(date[2]), Number(date[3]))) return `${value}T00:00:00.000Z`
  const parsed = parseTimestamp(value)
  if (parsed === undefined) throw new ValidationError(`${what} takes a date (2026-12-02, its midnight UTC) or an ISO 8601 time with its zone (${TIMESTAMP_FORMS}), got ${JSON.stringify(value)}`)
  if (parsed.offsetMinutes === undefined) throw new ValidationError(`${what}: ${JSON.stringify(value)} has no time zone, so it names no moment: add Z (UTC) or an offset (${TIMESTAMP_FORMS})`)
  return canonical(parsed)
}

/**
 * A TIMESTAMP value stored before the canonical form existed, in that form:
 * a value with a zone is the moment it names; one without is read as UTC
 * (what the daemon's own clocks and the demo data always wrote). Anything
 * else is left as it is. Used where a stored row is merged into a new
 * version (a PATCH), so that rewriting an old row never fails on a column
 * the write did not touch.
 */
export function upgradeStoredRow (table: TableDef, row: Row): Row {
  let out: Row | undefined
  for (const col of table.columns) {
    if (col.type !== 'TIMESTAMP') continue
    const parsed = parseTimestamp(row[col.name])
    if (parsed === undefined) continue
    const value = canonical({ ...parsed, offsetMinutes: parsed.offsetMinutes ?? 0 })
    if (value !== row[col.name]) (out ??= { ...row })[col.name] = value
  }
  return out ?? row
}

function fail (col: Column, message: string): never {
  throw new ValidationError(`${col.name}: ${message}`, { column: col.name })
}

export interface CheckOptions {
  /**
   * The value comes from a member's store (a replica message), not from a
   * client: a TIMESTAMP stored before the canonical form existed (without a
   * zone, or with an offset) is a valid ISO 8601 value and is kept as it
   * is, so old versions still replicate unchanged.
   */
  stored?: boolean
}

/** Checks and normalises one value against its column; returns the stored form */
export function checkValue (col: Column, value: unknown, options: CheckOptions = {}): Value {
  if (value === null || value === undefined) {
    if (col.notNull) fail(col, 'must not be null')
    return null
  }
  switch (col.type) {
    case 'INT': {
      let n = value
      if (typeof n === 'string' && /^-?\d+$/.test(n.trim())) n = Number(n.trim())
      if (typeof n !== 'number' || !Number.isSafeInteger(n)) fail(col, `expected an integer, got ${JSON.stringify(value)}`)
      return n
    }
    case 'VARCHAR': {
      if (typeof value !== 'string') fail(col, `expected a string, got ${typeof value}`)
      // In a /u regex a surrogate range matches only an unpaired half: text no encoding can carry.
      if (/[\uD800-\uDFFF]/u.test(value)) fail(col, 'is not well-formed Unicode (unpaired surrogate)')
      const length = [...value].length
      if (col.length !== undefined && length > col.length) {
        fail(col, `is ${length} characters long; VARCHAR(${col.length}) allows at most ${col.length}`)
      }
      return value
    }
    case 'DATE': {
      const m = typeof value === 'string' ? DATE_RE.exec(value) : null
      if (m === null || !isRealDate(Number(m[1]), Number(m[2]), Number(m[3]))) {
        fail(col, `expected a date YYYY-MM-DD, got ${JSON.stringify(value)}`)
      }
      return value as string
    }
    case 'TIMESTAMP': {
      const parsed = parseTimestamp(value)
      if (parsed === undefined) fail(col, `expected an ISO 8601 timestamp with a time zone (${TIMESTAMP_FORMS}), got ${JSON.stringify(value)}`)
      if (options.stored === true) return value as string
      if (parsed.offsetMinutes === undefined) {
        fail(col, `${JSON.stringify(value)} has no time zone, so it names no moment: add Z (UTC) or an offset (${TIMESTAMP_FORMS})`)
      }
      return canonical(parsed)
    }
    case 'DECIMAL':
      return checkDecimal(col, value)
  }
}

function checkDecimal (col: Column, value: unknown): string {
  const precision = col.precision ?? 10
  const scale = col.scale ?? 2
  let text: string
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) fail(col, `expected a decimal, got ${String(value)}`)
    text = String(value)
    if (/e/i.test(text)) fail(col, `expected a decimal, got ${text}`)
  } else if (typeof value === 'string') {
    text = value.trim()
  } else {
    fail(col, `expected a decimal, got ${typeof value}`)
  }
  const m = /^([+-]?)(\d+)(?:\.(\d+))?$/.exec(text)
  if (m === null) fail(col, `expected a decimal, got ${JSON.stringify(value)}`)
  const sign = m[1] === '-' ? '-' : ''
  const intPart = (m[2] ?? '0').replace(/^0+(?=\d)/, '')
  const frac = m[3] ?? ''
  if (frac.length > scale) fail(col, `has more than ${scale} decimal places (DECIMAL(${precision},${scale}))`)
  if (intPart.length > precision - scale) fail(col, `is out of range for DECIMAL(${precision},${scale})`)
  const out = `${intPart}.${frac.padEnd(scale, '0')}`
  return /^[0.]+$/.test(out) ? out : sign + out
}

export type ValidateMode = 'full' | 'partial'

/**
 * Validates a row body against the table. `full` requires every NOT NULL
 * column (key columns may be absent when `allowMissingKey`); `partial` checks
 * only the columns given (a PATCH). Unknown columns are an error.
 */
export function validateRow (table: TableDef, input: unknown, mode: ValidateMode, options: { allowMissingKey?: boolean } & CheckOptions = {}): Row {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new ValidationError(`A ${table.name} row must be a JSON object`)
  }
  const body = input as Record<string, unknown>
  const known = new Set(table.columns.map(c => c.name))
  for (const key of Object.keys(body)) {
    if (!known.has(key)) throw new ValidationError(`Unknown column ${key} in table ${table.name}`, { column: key })
  }
  const row: Row = {}
  for (const col of table.columns) {
    const present = Object.prototype.hasOwnProperty.call(body, col.name) && body[col.name] !== undefined
    if (!present) {
      if (mode === 'partial') continue
      if (options.allowMissingKey === true && table.primaryKey.includes(col.name)) continue
      if (col.notNull) fail(col, 'is required (NOT NULL)')
      row[col.name] = null
      continue
    }
    row[col.name] = checkValue(col, body[col.name], options)
  }
  return row
}

/** The row's address: its key values joined with ':' (`42`, or `3:7` for a composite key) */
export function rowId (table: TableDef, row: Row): string {
  return table.primaryKey.map(k => String(row[k])).join(':')
}

/** Parses an address such as `42` or `3:7` into key column values */
export function parseId (table: TableDef, id: string): Row {
  const parts = id.split(':')
  if (parts.length !== table.primaryKey.length) {
    throw new ValidationError(`${table.name} rows are addressed by ${table.primaryKey.join(':')}, got ${JSON.stringify(id)}`)
  }
  const out: Row = {}
  table.primaryKey.forEach((k, i) => {
    const col = table.columns.find(c => c.name === k)
    if (col === undefined) throw new Error(`schema: missing key column ${k}`)
    const raw = parts[i] ?? ''
    if (!/^-?\d+$/.test(raw)) throw new ValidationError(`${k}: expected an integer in the row address, got ${JSON.stringify(raw)}`, { column: k })
    out[k] = checkValue(col, Number(raw))
  })
  return out
}

/** The value that places the row on the ring: the shard key's value, or the table name for global tables */
export function shardValue (table: TableDef, row: Row): string {
  if (table.shardKey === 'global') return `global:${table.name}`
  const v = row[table.shardKey]
  if (v === null || v === undefined) throw new ValidationError(`${table.shardKey}: the shard key is required`, { column: table.shardKey })
  return `${table.shardKey}:${String(v)}`
}
