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

function fail (col: Column, message: string): never {
  throw new ValidationError(`${col.name}: ${message}`, { column: col.name })
}

/** Checks and normalises one value against its column; returns the stored form */
export function checkValue (col: Column, value: unknown): Value {
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
      const m = typeof value === 'string' ? TIMESTAMP_RE.exec(value) : null
      if (m === null || !isRealDate(Number(m[1]), Number(m[2]), Number(m[3])) ||
          Number(m[4]) > 23 || Number(m[5]) > 59 || Number(m[7] ?? 0) > 59 || Number.isNaN(Date.parse(value as string))) {
        fail(col, `expected an ISO 8601 timestamp, got ${JSON.stringify(value)}`)
      }
      return value as string
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
export function validateRow (table: TableDef, input: unknown, mode: ValidateMode, options: { allowMissingKey?: boolean } = {}): Row {
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
    row[col.name] = checkValue(col, body[col.name])
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
