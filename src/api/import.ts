import { createInterface } from 'node:readline'
import { parse } from 'csv-parse'
import type { RequestOptions } from '../cluster/coordinator.js'
import type { Database, ImportResult } from '../query/database.js'

/** Rows handed to the database at once: large enough for group commit, small enough to bound memory */
export const IMPORT_CHUNK = 2000
/** Rejected lines reported in full; beyond this only counted */
export const MAX_REPORTED_REJECTIONS = 1000

export interface ImportReport extends ImportResult {
  /** Rejections beyond MAX_REPORTED_REJECTIONS, counted only */
  rejectedNotShown: number
}

/** Reads NDJSON or CSV from a stream and inserts it in chunks */
export async function importStream (db: Database, table: string, input: NodeJS.ReadableStream, format: 'ndjson' | 'csv', options: RequestOptions): Promise<ImportReport> {
  const report: ImportReport = { accepted: 0, rejected: [], rejectedNotShown: 0 }
  let chunk: Array<{ line: number, value: unknown }> = []
  const reject = (line: number, message: string): void => {
    addRejections(report, [{ line, error: { code: 'INVALID', message } }])
  }
  const flush = async (): Promise<void> => {
    if (chunk.length === 0) return
    const result = await db.importRows(table, chunk, options)
    chunk = []
    report.accepted += result.accepted
    addRejections(report, result.rejected)
  }

  if (format === 'ndjson') {
    const lines = createInterface({ input, crlfDelay: Infinity })
    let n = 0
    for await (const line of lines) {
      n++
      if (line.trim() === '') continue
      try {
        chunk.push({ line: n, value: JSON.parse(line) })
      } catch (err) {
        reject(n, `Malformed JSON: ${(err as Error).message}`)
      }
      if (chunk.length >= IMPORT_CHUNK) await flush()
    }
  } else {
    type CsvRecord = { record: Record<string, string>, info: { lines: number, error?: Error } }
    // Records are taken as the parser makes them (on_record), not as the stream yields them: on a
    // fatal error the stream drops what it buffered, and those good lines would vanish from the report.
    const parsed: CsvRecord[] = []
    const take = (): void => {
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
        chunk.push({ line: rec.info.lines, value })
      }
    }
    const parser = input.pipe(parse({
      columns: true,
      info: true,
      skip_empty_lines: true,
      trim: true,
      relax_column_count: true,
      on_record: (rec: CsvRecord) => { parsed.push(rec); return rec }
    }))
    try {
      for await (const _ of parser) {
        take()
        if (chunk.length >= IMPORT_CHUNK) await flush()
      }
    } catch (err) {
      const e = err as { message: string, lines?: number }
      reject(e.lines ?? 0, `CSV: ${e.message}; the rest of the file was not read`)
    }
    take()
  }
  await flush()
  return report
}

function addRejections (report: ImportReport, rejected: ImportResult['rejected']): void {
  for (const r of rejected) {
    if (report.rejected.length < MAX_REPORTED_REJECTIONS) report.rejected.push(r)
    else report.rejectedNotShown++
  }
}
