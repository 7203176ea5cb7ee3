import { parse } from 'csv-parse'
import { concat, fromString, toString } from 'uint8arrays'
import type { RequestOptions } from '../cluster/coordinator.js'
import { createHash } from 'node:crypto'
import type { Database, ImportResult, ImportRow } from '../query/database.js'

/** Rows handed to the database at once: large enough for group commit, small enough to bound memory */
export const IMPORT_CHUNK = 2000
/** Rejected lines reported in full; beyond this only counted */
export const MAX_REPORTED_REJECTIONS = 1000
/** Longest NDJSON line or CSV record, bytes: a longer one is rejected without being held in memory */
export const MAX_LINE_BYTES = 1024 * 1024

export interface ImportReport extends ImportResult {
  /** Rejections beyond MAX_REPORTED_REJECTIONS, counted only */
  rejectedNotShown: number
}

export interface ImportInit {
  /** Longest line (NDJSON) or record (CSV), bytes. @default MAX_LINE_BYTES */
  maxLineBytes?: number
  /** Refuses a parsed row before it is written (a column the caller may not write); its error rejects the line */
  check?: (value: unknown) => void
  /**
   * The client's Idempotency-Key for the import, if any: it scopes every
   * line's key (see lineKey), so a new key imports the same lines anew.
   */
  scope?: string
}

/** The scope of an import sent without an Idempotency-Key */
const DEFAULT_SCOPE = 'import'

/**
 * A line's idempotency key: the import's scope, the table, the line's
 * number and its parsed content. The same file imported again (same lines at
 * the same places) makes the same keys, so its rows are not written twice.
 */
export function lineKey (scope: string, table: string, line: number, value: unknown): string {
  return createHash('sha256').update(scope).update('\u0000').update(table).update('\u0000').update(String(line)).update('\u0000').update(JSON.stringify(value)).digest('hex')
}

/** Reads NDJSON or CSV from a stream and inserts it in chunks */
export async function importStream (db: Database, table: string, input: NodeJS.ReadableStream, format: 'ndjson' | 'csv', options: RequestOptions, init: ImportInit = {}): Promise<ImportReport> {
  const maxLine = init.maxLineBytes ?? MAX_LINE_BYTES
  const report: ImportReport = { accepted: 0, rejected: [], rejectedNotShown: 0 }
  let chunk: ImportRow[] = []
  const scope = init.scope ?? DEFAULT_SCOPE
  const reject = (line: number, message: string, code = 'INVALID'): void => {
    addRejections(report, [{ line, error: { code, message } }])
  }
  const take = (line: number, value: unknown): void => {
    try {
      init.check?.(value)
    } catch (err) {
      const e = err as { code?: string, message: string }
      reject(line, e.message, e.code)
      return
    }
    chunk.push({ line, value, key: lineKey(scope, table, line, value) })
  }
  const flush = async (): Promise<void> => {
    if (chunk.length === 0) return
    const result = await db.importRows(table, chunk, options)
    chunk = []
    report.accepted += result.accepted
    addRejections(report, result.rejected)
  }

  if (format === 'ndjson') {
    for await (const line of splitLines(input, maxLine)) {
      if (line.text === undefined) {
        reject(line.n, `Line longer than ${maxLine} bytes; skipped`)
        continue
      }
      if (line.text.trim() === '') continue
      let value: unknown
      try {
        value = JSON.parse(line.text)
      } catch (err) {
        reject(line.n, `Malformed JSON: ${(err as Error).message}`)
        continue
      }
      take(line.n, value)
      if (chunk.length >= IMPORT_CHUNK) await flush()
    }
  } else {
    type CsvRecord = { record: Record<string, string>, info: { lines: number, error?: Error } }
    // Records are taken as the parser makes them (on_record), not as the stream yields them: on a
    // fatal error the stream drops what it buffered, and those good lines would vanish from the report.
    const parsed: CsvRecord[] = []
    const takeParsed = (): void => {
      for (const rec of parsed.splice(0)) {
        // Relaxed column count: a line with too few or too many fields is rejected alone.
        if (rec.info.error !== undefined) {
          reject(rec.info.lines, `CSV: ${rec.info.error.message}`)
          continue
        }
        const value: Record<string, string> = {}
        for (const [k, v] of Object.entries(rec.record)) {
          if (v !== '') value[k] = v
        }
        take(rec.info.lines, value)
      }
    }
    const parser = input.pipe(parse({
      columns: true,
      info: true,
      skip_empty_lines: true,
      trim: true,
      relax_column_count: true,
      max_record_size: maxLine,
      on_record: (rec: CsvRecord) => { parsed.push(rec); return rec }
    }))
    try {
      for await (const _ of parser) {
        takeParsed()
        if (chunk.length >= IMPORT_CHUNK) await flush()
      }
    } catch (err) {
      const e = err as { message: string, lines?: number }
      if (isAbort(err)) throw err
      reject(e.lines ?? 0, `CSV: ${e.message}; the rest of the file was not read`)
    }
    takeParsed()
  }
  await flush()
  return report
}

/**
 * Adds rejections keeping the report in line order (a parse error is found
 * before the database rejects earlier lines of its chunk) and, past
 * MAX_REPORTED_REJECTIONS, the earliest lines shown and the rest counted.
 */
function addRejections (report: ImportReport, rejected: ImportResult['rejected']): void {
  if (rejected.length === 0) return
  const last = report.rejected.at(-1)?.line ?? 0
  report.rejected.push(...rejected)
  if (rejected.some(r => r.line < last) || rejected.length > 1) report.rejected.sort((a, b) => a.line - b.line)
  const over = report.rejected.length - MAX_REPORTED_REJECTIONS
  if (over > 0) {
    report.rejected.splice(MAX_REPORTED_REJECTIONS, over)
    report.rejectedNotShown += over
  }
}

/**
 * Splits a byte stream into lines, holding at most `max` bytes of one line:
 * a longer line comes out without its text (and is skipped to its end).
 */
export async function * splitLines (input: AsyncIterable<unknown> | NodeJS.ReadableStream, max: number): AsyncGenerator<{ n: number, text?: string }> {
  let parts: Uint8Array[] = []
  let size = 0
  let tooLong = false
  let n = 0
  for await (const c of input as AsyncIterable<Uint8Array | string>) {
    let buf = typeof c === 'string' ? fromString(c, 'utf8') : c
    for (;;) {
      const nl = buf.indexOf(0x0a)
      const piece = nl === -1 ? buf : buf.subarray(0, nl)
      if (!tooLong) {
        if (size + piece.length > max) {
          tooLong = true
          parts = []
          size = 0
        } else if (piece.length > 0) {
          parts.push(piece)
          size += piece.length
        }
      }
      if (nl === -1) break
      n++
      yield tooLong ? { n } : { n, text: toString(concat(parts, size), 'utf8') }
      parts = []
      size = 0
      tooLong = false
      buf = buf.subarray(nl + 1)
    }
  }
  if (tooLong || size > 0) {
    n++
    yield tooLong ? { n } : { n, text: toString(concat(parts, size), 'utf8') }
  }
}

/** The request's client went away mid-body: not a failure of the server */
export function isAbort (err: unknown): boolean {
  const e = err as { code?: string, message?: string } | null
  return e?.code === 'ECONNRESET' || e?.code === 'ERR_STREAM_PREMATURE_CLOSE' || e?.message === 'aborted'
}
