import { Readable } from 'node:stream'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ForbiddenError, NtsoekheError, ValidationError } from '../errors/index.js'
import { CONSISTENCY_LEVELS, type Consistency, type RequestOptions } from '../cluster/coordinator.js'
import type { Database } from '../query/database.js'
import type { TableDef } from '../schema/index.js'
import { Pseudonymizer, anonymizeRow, anonymizedColumns } from '../security/anonymize.js'
import { RIGHTS, columnsFor, hasRight, project } from '../security/rights.js'
import { TABLE_ACCESS, principalOf } from './access.js'
import { ROUTE_SCHEMAS } from './schemas.js'

/**
 * `GET /v1/export?table=<t>&table=<u>&anonymize=true`: every row of the
 * tables, streamed as NDJSON, one `{"table","row"}` object a line. The rows
 * are read a page at a time across the network and written as the client
 * reads them, so a daemon holds one page, never a table. A plain export needs
 * the right RIGHTS.export (admins); an anonymized one is open to every role
 * but holds only the tables and columns that role may read, with each column
 * treated by its rule (src/security/anonymize.ts).
 */
export const EXPORT_ROUTE = '/v1/export'
/** The response header naming the tables the export holds, in order (comma-separated) */
export const EXPORT_TABLES_HEADER = 'x-export-tables'
/** Rows read per page. @default 500 */
export const EXPORT_PAGE_ROWS = 500

const EXPORT_QUERY = new Set(['table', 'anonymize', 'consistency'])

export interface ExportPart {
  table: TableDef
  /** The columns the caller may read (and, anonymized, that survive their rule) */
  columns: string[]
}

/**
 * Which tables and columns `role` gets. Without `requested`, every table
 * (those the role may not read are left out of an anonymized export); a
 * requested table the role may not read is a 403, an unknown one a 404.
 */
export function exportPlan (db: Pick<Database, 'table' | 'tables'>, role: string, requested: readonly string[], anonymize: boolean): ExportPart[] {
  if (!anonymize && !hasRight(role, RIGHTS.export)) {
    throw new ForbiddenError(`Role ${role} lacks the right ${RIGHTS.export} (a plain export is for admins; an anonymized one is open to every role)`)
  }
  const tables = requested.length === 0 ? [...db.tables()] : [...new Set(requested)].map(name => db.table(name))
  const parts: ExportPart[] = []
  for (const table of tables) {
    const readable = columnsFor(role, table, 'read')
    if (readable === undefined) {
      if (requested.length > 0) throw new ForbiddenError(`Role ${role} may not read table ${table.name}`)
      continue
    }
    const columns = anonymize ? anonymizedColumns(table, readable) : readable
    if (columns.length > 0) parts.push({ table, columns })
  }
  return parts
}

export interface ExportInit {
  /** See EXPORT_PAGE_ROWS */
  pageRows?: number
}

export function exportRoute (app: FastifyInstance, db: Database, init: ExportInit = {}): void {
  const pageRows = init.pageRows ?? EXPORT_PAGE_ROWS
  app.get<{ Querystring: Record<string, string | string[] | undefined> }>(EXPORT_ROUTE, { config: { access: TABLE_ACCESS }, schema: ROUTE_SCHEMAS.export }, async (req, reply) => {
    const q = req.query
    for (const k of Object.keys(q)) {
      if (!EXPORT_QUERY.has(k)) throw new ValidationError(`Unknown export parameter ${k}: use table, anonymize or consistency`)
    }
    const anonymize = bool(q.anonymize, 'anonymize')
    const requested = q.table === undefined ? [] : Array.isArray(q.table) ? q.table : [q.table]
    const principal = principalOf(req)
    req.accessNote = { action: 'export', ...(requested.length === 1 ? { table: requested[0] } : {}) }
    if (principal.breakGlass !== undefined) throw new ValidationError('X-Break-Glass opens one patient\'s records, not an export; use an anonymized export')
    const plan = exportPlan(db, principal.role, requested, anonymize)
    req.accessNote = {
      action: 'export',
      ...(plan.length === 1 && plan[0] !== undefined ? { table: plan[0].table.name } : {}),
      columns: plan.flatMap(p => p.columns.map(c => `${p.table.name}.${c}`)),
      reason: `${anonymize ? 'anonymized' : 'plain'} export of ${plan.length === 0 ? 'no table' : plan.map(p => p.table.name).join(',')}`
    }
    const options = consistencyOf(q.consistency)
    void reply
      .type('application/x-ndjson')
      .header(EXPORT_TABLES_HEADER, plan.map(p => p.table.name).join(','))
    return exportStream(db, plan, { anonymize, options, pageRows, onCutOff: err => { cutOff(req, err) } })
  })
}

export interface ExportStreamInit {
  anonymize: boolean
  options: RequestOptions
  pageRows: number
  /** Called when reading a page fails mid-export (the answer's status is already sent) */
  onCutOff?: (err: unknown) => void
}

/**
 * The export's NDJSON as a byte stream that reads the next page only when the
 * reader has taken the last one (beyond the stream's 16 KiB buffer): memory is
 * bounded by a page, whatever the table's size. The pseudonym key lives only
 * as long as the stream.
 */
export function exportStream (db: Pick<Database, 'list'>, plan: ExportPart[], init: ExportStreamInit): Readable {
  return Readable.from(exportLines(db, plan, init), { objectMode: false })
}

async function * exportLines (db: Pick<Database, 'list'>, plan: ExportPart[], { anonymize, options, pageRows, onCutOff }: ExportStreamInit): AsyncGenerator<string> {
  const pseudonyms = anonymize ? new Pseudonymizer() : undefined
  try {
    for (const { table, columns } of plan) {
      let cursor: string | undefined
      do {
        const page = await db.list(table.name, {}, { ...options, limit: pageRows, ...(cursor === undefined ? {} : { cursor }) })
        let chunk = ''
        for (const row of page.rows) {
          const out = pseudonyms === undefined ? project(row, columns) : anonymizeRow(table, row, columns, pseudonyms)
          chunk += JSON.stringify({ table: table.name, row: out }) + '\n'
        }
        if (chunk !== '') yield chunk
        cursor = page.next ?? undefined
      } while (cursor !== undefined)
    }
  } catch (err) {
    onCutOff?.(err)
    throw err
  }
}

/** The status line is gone: the client sees the answer cut off, the audit entry says why */
function cutOff (req: FastifyRequest, err: unknown): void {
  const note = req.accessNote
  if (note !== undefined) note.reason = `${note.reason ?? 'export'}; cut off: ${err instanceof NtsoekheError ? err.code : 'INTERNAL'}`
  req.log.warn({ err }, 'export cut off')
}

function single (v: string | string[], name: string): string {
  if (Array.isArray(v)) throw new ValidationError(`${name} is given more than once`)
  return v
}

function consistencyOf (v: string | string[] | undefined): RequestOptions {
  if (v === undefined) return {}
  const c = single(v, 'consistency')
  if (!CONSISTENCY_LEVELS.includes(c as Consistency)) throw new ValidationError(`consistency must be one of ${CONSISTENCY_LEVELS.join(', ')}`)
  return { consistency: c as Consistency }
}

function bool (v: string | string[] | undefined, name: string): boolean {
  if (v === undefined) return false
  const s = single(v, name)
  if (s === '' || s === 'true' || s === '1') return true
  if (s === 'false' || s === '0') return false
  throw new ValidationError(`${name} must be true or false`)
}
