import type { NtsoekheClient, RequestOptions } from '../client/index.js'
import { NtsoekheError } from '../errors/index.js'
import { MAX_LIMIT } from '../query/limits.js'

/** Rows `head` shows per table unless `--limit` says otherwise */
export const HEAD_ROWS = 5

/** One table's first rows, or why they could not be read */
export interface HeadTable {
  table: string
  /** The table's key columns: the order of `rows` */
  primaryKey: string[]
  rows: Array<Record<string, unknown>>
  /** Rows the table holds (what the pages read counted) */
  total: number
  /** Set instead of rows when the caller's role may not read the table */
  error?: { code: string, message: string }
}

type Row = Record<string, unknown>

/**
 * The first `limit` rows of every table, ordered by primary key (the first
 * design document's retrieval step). A list pages through a table in ring
 * order, not key order, so each table is read a page of MAX_LIMIT rows at a
 * time, across the network, and only the `limit` smallest keys seen so far
 * are kept: memory stays at a page plus `limit` rows, whatever the table's
 * size. A table the caller may not read is reported, not fatal.
 */
export async function head (client: Pick<NtsoekheClient, 'tables' | 'query'>, limit: number, options: RequestOptions = {}): Promise<HeadTable[]> {
  const { tables } = await client.tables()
  const out: HeadTable[] = []
  for (const t of tables) {
    const table = String(t.name)
    const primaryKey = (t.primaryKey as unknown[]).map(String)
    try {
      out.push({ table, primaryKey, ...await firstRows(client, table, primaryKey, limit, options) })
    } catch (err) {
      if (!(err instanceof NtsoekheError) || err.code !== 'FORBIDDEN') throw err
      out.push({ table, primaryKey, rows: [], total: 0, error: { code: err.code, message: err.message } })
    }
  }
  return out
}

async function firstRows (client: Pick<NtsoekheClient, 'query'>, table: string, primaryKey: string[], limit: number, options: RequestOptions): Promise<{ rows: Row[], total: number }> {
  let kept: Row[] = []
  let total = 0
  let cursor: string | undefined
  do {
    const page = await client.query(table, {}, { ...options, limit: MAX_LIMIT, ...(cursor === undefined ? {} : { cursor }) })
    total += page.rows.length
    kept = smallest([...kept, ...page.rows], primaryKey, limit)
    cursor = page.next ?? undefined
  } while (cursor !== undefined)
  return { rows: kept, total }
}

/** The `limit` rows with the smallest keys, in key order */
export function smallest (rows: Row[], primaryKey: string[], limit: number): Row[] {
  return rows.sort((a, b) => compareKeys(a, b, primaryKey)).slice(0, limit)
}

/** Key order: column by column, numbers as numbers (ids are INT), anything else as text */
export function compareKeys (a: Row, b: Row, primaryKey: string[]): number {
  for (const k of primaryKey) {
    const x = a[k]
    const y = b[k]
    const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y))
    if (c !== 0) return c < 0 ? -1 : 1
  }
  return 0
}
