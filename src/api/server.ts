import { PassThrough } from 'node:stream'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { ForbiddenError, NtsoekheError, ValidationError } from '../errors/index.js'
import { CONSISTENCY_LEVELS, type Consistency, type RequestOptions } from '../cluster/coordinator.js'
import type { BatchOperation, Database } from '../query/database.js'
import type { TableDef } from '../schema/index.js'
import type { AccessEvent } from '../security/principal.js'
import type { NodeMetrics } from '../observability/metrics.js'
import { metricsRoutes } from './metrics.js'
import { HIDDEN_COLUMNS, RIGHTS, assertWritable, cascadeTables, columnsFor, describeRoles, project } from '../security/rights.js'
import type { UserDirectory } from '../security/users.js'
import { isVersion } from '../storage/version.js'
import { parseComparison } from '../schema/condition.js'
import { runSql } from '../query/sql.js'
import { TABLE_ACCESS, checkFilters, installAccess, principalOf, readView } from './access.js'
import { auditRoute, type AuditReader } from './audit.js'
import { backupRoutes, type BackupSource } from './backup.js'
import { toErrorResponse } from './errors.js'
import { exportRoute } from './export.js'
import { importStream, isAbort } from './import.js'
import { openApiRoute, recordRoutes } from './openapi.js'
import { IDEMPOTENCY_KEY_PATTERN, MAX_IDEMPOTENCY_KEY, ROUTE_SCHEMAS as S, validatorCompiler } from './schemas.js'

export { MAX_IDEMPOTENCY_KEY }

/** Largest JSON body the socket accepts (imports are streamed and exempt) */
export const BODY_LIMIT = 1024 * 1024
/** A request body that sends nothing for this long is cut off, ms */
export const BODY_TIMEOUT_MS = 30_000
/** Records a page of `GET /v1/inspect/records` holds by default, and at most */
const INSPECT_PAGE = 1000
const IDEMPOTENCY_KEY_RE = new RegExp(IDEMPOTENCY_KEY_PATTERN)

export interface ApiComponents {
  db: Database
  /** Counts every request and serves `GET /metrics` and `GET /v1/metrics/series` (see api/metrics.ts) */
  metrics?: NodeMetrics
  /** Everything `GET /v1/status` reports */
  status: () => Promise<Record<string, unknown>>
  /** Extra read-only routes' data, e.g. peers and ring, added by the networked node */
  extra?: Record<string, () => Promise<unknown>>
  /** What a new machine needs to join (`GET /v1/invite`): it carries the network key, so admins only */
  invite?: () => Promise<unknown>
  /** Declares a down member gone for good (`DELETE /v1/members/:peerId`), on the networked node */
  removeMember?: (peerId: string) => Promise<unknown>
  /** Hands off this node's records and leaves the network (`POST /v1/leave`), on the networked node */
  leave?: () => Promise<unknown>
  /** Runs one anti-entropy round now (`POST /v1/repair`): `{ ranges, recordsCompared, recordsSent, seconds }` */
  repair?: () => Promise<unknown>
  /**
   * Read-only views of what this node stores, for checkers (the chaos suite):
   * `GET /v1/inspect/records` pages through every record with its heads,
   * digest and owners; `GET /v1/inspect/summary` gives the range summary.
   */
  inspect?: {
    records: (options: { after?: string, limit: number }) => Promise<unknown>
    summary: () => Promise<unknown>
  }
  /** Backup and restore of the whole network (`GET /v1/backup`, `POST /v1/restore`), on the networked node */
  backup?: BackupSource
  /** Rebuilds one table's index entries in this node's store (`POST /v1/tables/:table/reindex`), with progress */
  reindex?: (table: string, progress: (done: number, total: number) => void) => Promise<{ rows: number, added: number, removed: number }>
  /** Users and their tokens: every request is authenticated against it */
  users: Pick<UserDirectory, 'authenticate' | 'add' | 'list' | 'revoke'>
  /** Called once per request that touches data, per 401, per 403 and per break-glass read */
  audit?: (event: AccessEvent) => void
  /** The audit trail, served on `GET /v1/audit` (auditors and admins) */
  auditTrail?: AuditReader
  logger?: FastifyBaseLogger
  /** The package version the API document names. @default '0.1.0' */
  version?: string
}

export interface ApiInit {
  /** See BODY_TIMEOUT_MS. @default 30000 */
  bodyTimeoutMs?: number
  /** Longest import line or CSV record, bytes. @default MAX_LINE_BYTES (1 MiB) */
  maxImportLineBytes?: number
  /** Rows an export reads per page. @default EXPORT_PAGE_ROWS (500) */
  exportPageRows?: number
}

type Params = { table: string, id: string }
type Query = Record<string, string | string[] | undefined>

/** Media types an import takes */
const IMPORT_TYPES = ['application/x-ndjson', 'application/ndjson', 'text/csv']
const RESERVED_QUERY = new Set(['limit', 'cursor', 'consistency', 'local', 'cascade', 'where', 'order_by'])
const ROWS = { config: { access: TABLE_ACCESS } }
const CLUSTER = { config: { access: RIGHTS.cluster } }
/** The route schemas of the extra read-only routes the networked node adds */
const EXTRA_SCHEMAS: Record<string, typeof S.peers | typeof S.ring> = { peers: S.peers, ring: S.ring }

/**
 * The HTTP/JSON API that the socket serves: routes, authentication and
 * access rights, error mapping, ETags. A route declares the right it needs
 * as `config: { access }` (RIGHTS); one that declares none is for admins.
 * Each route declares its schema (`schema: S.<name>`, src/api/schemas.ts):
 * fastify checks the request with it, and `GET /v1/openapi.json` is made
 * from it.
 */
export function createApi (components: ApiComponents, init: ApiInit = {}): FastifyInstance {
  const { db, users } = components
  const app = Fastify({
    // Per-request lines are info level: the API logger runs at warn so only failures are logged.
    ...(components.logger === undefined ? { logger: false } : { loggerInstance: components.logger.child({ component: 'api' }, { level: 'warn' }) }),
    bodyLimit: BODY_LIMIT,
    return503OnClosing: true,
    // The router refuses a bad percent-escape or an overlong parameter before any hook or error handler runs.
    frameworkErrors: (err, _req, reply) => {
      const { status, body } = toErrorResponse(err)
      void (reply as FastifyReply).status(status).send(body)
    }
  })

  const routes = recordRoutes(app)
  app.setValidatorCompiler(validatorCompiler)
  // Response schemas document the answers; they are written as JSON.stringify writes them (nothing dropped or coerced).
  app.setSerializerCompiler(() => data => JSON.stringify(data))
  // A JSON route sent another media type answers 415, before its body is checked against the schema.
  app.addHook('preValidation', async req => {
    if (req.routeOptions.schema?.body !== undefined && req.body !== undefined && req.body !== null) requireBody(req)
  })

  // Imports stream their body: the parser hands over the raw request, so no limit applies.
  app.addContentTypeParser(IMPORT_TYPES, (_req, payload, done) => { done(null, payload) })

  app.setErrorHandler((err, req, reply) => {
    const { status, body } = toErrorResponse(err)
    if (status === 401 || status === 403) req.denial = body.error.message
    if (req.raw.socket?.destroyed === true || isAbort(err)) {
      // The client went away mid-body (or stalled and was cut off): nothing failed here.
      req.log.debug({ err }, 'client went away')
      void reply.status(400).send({ error: { code: 'INVALID', message: 'The request body ended early' } })
      return
    }
    if (status >= 500) req.log.error({ err }, 'request failed')
    void reply.status(status).send(body)
  })
  const trail = components.auditTrail
  installAccess(app, { auth: users, ...(components.audit === undefined ? {} : { audit: components.audit }), ...(trail === undefined ? {} : { auditReady: () => trail.accepting !== false }), bodyTimeoutMs: init.bodyTimeoutMs ?? BODY_TIMEOUT_MS, log: app.log })
  if (components.metrics !== undefined) metricsRoutes(app, components.metrics)
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({ error: { code: 'NOT_FOUND', message: `No route ${req.method} ${req.url}` } })
  })

  app.get('/v1/status', { ...CLUSTER, schema: S.status }, async () => await components.status())
  openApiRoute(app, routes, () => ({ version: components.version ?? '0.1.0', tables: db.tables() }))
  if (components.auditTrail !== undefined) auditRoute(app, components.auditTrail)
  exportRoute(app, db, init.exportPageRows === undefined ? {} : { pageRows: init.exportPageRows })

  app.get('/v1/tables', { ...CLUSTER, schema: S.tables }, async () => ({
    tables: db.tables().map(t => ({
      name: t.name,
      columns: t.columns,
      primaryKey: t.primaryKey,
      shardKey: t.shardKey,
      references: t.references,
      unique: t.unique,
      indexed: t.indexed
    }))
  }))

  const invite = components.invite
  if (invite !== undefined) app.get('/v1/invite', { config: { access: RIGHTS.admin }, schema: S.invite }, async () => await invite())
  for (const [name, fn] of Object.entries(components.extra ?? {})) {
    // An extra route with no schema in EXTRA_SCHEMAS goes undocumented, and test/unit/openapi.test.ts names it.
    const schema = EXTRA_SCHEMAS[name]
    app.get(`/v1/${name}`, { ...CLUSTER, ...(schema === undefined ? {} : { schema }) }, async () => await fn())
  }

  const removeMember = components.removeMember
  if (removeMember !== undefined) {
    app.delete<{ Params: { peerId: string } }>('/v1/members/:peerId', { config: { access: RIGHTS.membership }, schema: S.removeMember }, async req => await removeMember(req.params.peerId))
  }
  const leave = components.leave
  if (leave !== undefined) app.post('/v1/leave', { config: { access: RIGHTS.membership }, schema: S.leave }, async () => await leave())
  const repair = components.repair
  if (repair !== undefined) app.post('/v1/repair', { config: { access: RIGHTS.admin }, schema: S.repair }, async () => await repair())
  if (components.backup !== undefined) backupRoutes(app, components.backup)

  const inspect = components.inspect
  if (inspect !== undefined) {
    app.get<{ Querystring: Query }>('/v1/inspect/records', { config: { access: RIGHTS.admin }, schema: S.inspectRecords }, async req => {
      // The schema has read limit as an integer from 1 to MAX_INSPECT_PAGE.
      const limit = req.query.limit === undefined ? INSPECT_PAGE : Number(req.query.limit)
      const after = req.query.after === undefined ? undefined : single(req.query, 'after')
      return await inspect.records({ limit, ...(after === undefined ? {} : { after }) })
    })
    app.get('/v1/inspect/summary', { config: { access: RIGHTS.admin }, schema: S.inspectSummary }, async () => await inspect.summary())
  }
  // Admins only (no right declared). The answer is NDJSON: {"done","total"} lines as rows are
  // reindexed, then {"rows","added","removed"} (or {"error"} if it failed midway).
  const reindex = components.reindex
  if (reindex !== undefined) {
    app.post<{ Params: Params }>('/v1/tables/:table/reindex', { schema: S.reindex }, async (req, reply) => {
      const table = db.table(req.params.table)
      req.accessNote = { action: 'admin', table: table.name }
      const out = new PassThrough()
      let last = 0
      void reindex(table.name, (done, total) => {
        // At most about a hundred progress lines, however large the table.
        if (done === total || done - last >= Math.max(1, Math.floor(total / 100))) { last = done; out.write(JSON.stringify({ done, total }) + '\n') }
      }).then(result => { out.end(JSON.stringify(result) + '\n') }, (err: unknown) => { out.end(JSON.stringify({ error: toErrorResponse(err).body.error }) + '\n') })
      void reply.header('content-type', 'application/x-ndjson')
      return out
    })
  }

  app.get('/v1/roles', { config: { access: RIGHTS.roles }, schema: S.roles }, async () => ({ roles: describeRoles() }))

  app.get('/v1/users', { config: { access: RIGHTS.users }, schema: S.users }, async req => {
    req.accessNote = { action: 'admin', table: 'users' }
    return { users: await users.list() }
  })
  app.post('/v1/users', { config: { access: RIGHTS.users }, schema: S.addUser }, async (req, reply) => {
    const body = requireObject(req)
    req.accessNote = { action: 'admin', table: 'users', ...(typeof body.user === 'string' ? { id: body.user } : {}) }
    const made = await users.add(body.user as string, body.role as string)
    void reply.status(201)
    return made
  })
  app.post<{ Params: { name: string } }>('/v1/users/:name/revoke', { config: { access: RIGHTS.users }, schema: S.revokeUser }, async req => {
    req.accessNote = { action: 'admin', table: 'users', id: req.params.name }
    return await users.revoke(req.params.name)
  })

  app.post<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows', { ...ROWS, schema: S.insert }, async (req, reply) => {
    const table = db.table(req.params.table)
    const body = requireObject(req)
    writeNote(req, 'insert', table, body)
    const result = await db.insert(table.name, body, { ...requestOptions(req.query), ...keyOptions(req) })
    void reply.status(201).header('etag', etag(result.version))
    noteRow(req, table, result.id, result.row)
    return { id: result.id, version: result.version, row: visible(req, table, result.row) }
  })

  app.get<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows/:id', { ...ROWS, schema: S.get }, async (req, reply) => {
    const table = db.table(req.params.table)
    const view = readNote(req, 'read', table, req.params.id)
    const local = flag(req.query, 'local')
    const result = await db.get(table.name, req.params.id, { ...requestOptions(req.query), local })
    noteRow(req, table, req.params.id, result.row)
    void reply.header('etag', etag(result.version))
    return {
      row: project(result.row, view.columns),
      version: result.version,
      conflicts: result.conflicts.map(c => ({ version: c.version, row: project(c.row, view.columns) }))
    }
  })

  // PUT replaces the row, PATCH changes the columns it names: the same checks, notes and answer.
  for (const [method, write, schema] of [['PUT', db.replace.bind(db), S.replace], ['PATCH', db.patch.bind(db), S.patch]] as const) {
    app.route<{ Params: Params, Querystring: Query }>({
      method,
      url: '/v1/tables/:table/rows/:id',
      ...ROWS,
      schema,
      handler: async (req, reply) => {
        const table = db.table(req.params.table)
        const body = requireObject(req)
        writeNote(req, 'update', table, body, req.params.id)
        // A column no one sees through the API (a token's hash) is not blanked by a replace that could not name it.
        const result = await write(table.name, req.params.id, body, { ...writeOptions(req), keep: HIDDEN_COLUMNS[table.name] ?? [] })
        noteRow(req, table, result.id, result.row)
        void reply.header('etag', etag(result.version))
        return { id: result.id, version: result.version, row: visible(req, table, result.row) }
      }
    })
  }

  app.delete<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows/:id', { ...ROWS, schema: S.delete }, async (req, reply) => {
    const table = db.table(req.params.table)
    const cascade = flag(req.query, 'cascade')
    writeNote(req, 'delete', table, {}, req.params.id)
    if (cascade) {
      for (const t of cascadeTables(table)) assertWritable(principalOf(req).role, t, [])
    }
    const result = await db.delete(table.name, req.params.id, { ...writeOptions(req), cascade })
    void reply.header('etag', etag(result.version))
    return { id: result.id, version: result.version, deleted: true, cascaded: result.cascaded }
  })

  // Erasure is for admins only (a route that declares no right needs admin) and always audited.
  app.post<{ Params: Params }>('/v1/tables/:table/rows/:id/purge', { schema: S.purge }, async req => {
    const table = db.table(req.params.table)
    req.accessNote = { action: 'purge', table: table.name, id: req.params.id, ...(table.name === 'patient_records' ? { patientId: req.params.id } : {}) }
    return await db.purge(table.name, req.params.id)
  })

  app.get<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows/:id/history', { ...ROWS, schema: S.history }, async req => {
    const table = db.table(req.params.table)
    const view = readNote(req, 'history', table, req.params.id)
    const versions = await db.history(table.name, req.params.id, requestOptions(req.query))
    noteRow(req, table, req.params.id, versions.find(v => v.row !== null)?.row ?? null)
    return { versions: versions.map(v => ({ ...v, row: project(v.row, view.columns) })) }
  })

  app.get<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows', { ...ROWS, schema: S.list }, async req => {
    const table = db.table(req.params.table)
    const filters = Object.keys(req.query).filter(k => !RESERVED_QUERY.has(k))
    const view = readNote(req, 'list', table)
    // where=<col><op><value> (repeatable) adds ranges; order_by=<col>[:desc] sorts (default: primary key).
    const ranges = listOf(req.query.where).map(parseComparison)
    const order = req.query.order_by === undefined ? undefined : parseOrderBy(single(req.query, 'order_by'))
    checkFilters(table, view.columns, [...filters, ...ranges.map(r => r.column), ...(order === undefined ? [] : [order.column])], principalOf(req).role)
    const where: Record<string, string> = Object.create(null) as Record<string, string>
    for (const k of filters) {
      const v = req.query[k]
      if (v === undefined) continue
      if (Array.isArray(v)) throw new ValidationError(`Filter ${k} is given more than once`, { column: k })
      where[k] = v
    }
    for (const r of ranges) if (r.op === '=' && where[r.column] === undefined) where[r.column] = r.value
    // Break-glass opens one patient's records, not a table: a list it widens must name the patient.
    if (view.widened && where.patient_id === undefined) {
      throw new ForbiddenError(table.columns.some(c => c.name === 'patient_id')
        ? `X-Break-Glass reads one patient's records: add a patient_id filter to list ${table.name}`
        : `X-Break-Glass reads one patient's records: read ${table.name} rows by id`)
    }
    if (where.patient_id !== undefined && req.accessNote !== undefined) req.accessNote.patientId = where.patient_id
    if (table.name === 'patient_records' && where.patient_id !== undefined && req.accessNote !== undefined) req.accessNote.id = where.patient_id
    // The schema has read limit as an integer from 1 to MAX_LIMIT.
    const limit = req.query.limit === undefined ? undefined : Number(req.query.limit)
    const cursor = req.query.cursor === undefined ? undefined : single(req.query, 'cursor')
    const page = await db.query(table.name, {
      where: [...Object.entries(where).map(([column, value]) => ({ column, op: '=' as const, value })), ...ranges.filter(r => r.op !== '=')],
      ...(order === undefined ? {} : { orderBy: order.column, desc: order.desc }),
      ...(limit === undefined ? {} : { limit }),
      ...(cursor === undefined ? {} : { cursor })
    }, requestOptions(req.query))
    // Every patient whose rows the page holds gets an entry of their own (audit --patient finds the list).
    if (req.accessNote !== undefined && where.patient_id === undefined && table.columns.some(c => c.name === 'patient_id')) {
      const patients = [...new Set(page.rows.map(r => r.patient_id).filter(p => p !== null && p !== undefined).map(String))]
      if (patients.length > 0) req.accessNote.patients = patients
    }
    return { rows: page.rows.map(r => project(r, view.columns)), next: page.next }
  })

  // SQL: {"sql","params","cursor"} -> {"columns","rows","next"}. Each table it names is checked as its
  // routes check it (a role's missing right is 403, columns it cannot read are absent or refused).
  app.post<{ Querystring: Query }>('/v1/sql', { ...ROWS, schema: S.sql }, async req => {
    const body = requireObject(req)
    if (typeof body.sql !== 'string') throw new ValidationError('The body needs "sql", a string')
    if (body.params !== undefined && !Array.isArray(body.params)) throw new ValidationError('"params" must be an array')
    if (body.cursor !== undefined && body.cursor !== null && typeof body.cursor !== 'string') throw new ValidationError('"cursor" must be a string')
    const role = principalOf(req).role
    const views = new Map<string, { columns: string[], breakGlass: boolean, widened: boolean }>()
    const viewOf = (table: TableDef): { columns: string[], breakGlass: boolean, widened: boolean } => {
      let view = views.get(table.name)
      if (view === undefined) {
        view = readView(req, table)
        views.set(table.name, view)
        if (view.breakGlass && req.accessNote !== undefined) {
          req.accessNote.breakGlass = true
          const reason = principalOf(req).breakGlass
          if (reason !== undefined) req.accessNote.reason = reason
        }
      }
      return view
    }
    req.accessNote = { action: 'list' }
    const patients = new Set<string>()
    const answer = await runSql(db, body.sql, (body.params ?? []) as unknown[], {
      readable: table => {
        if (req.accessNote?.table === undefined && req.accessNote !== undefined) req.accessNote.table = table.name
        return viewOf(table).columns
      },
      widened: table => viewOf(table).widened,
      writable: (table, columns) => { assertWritable(role, table, columns) },
      note: n => {
        const note = req.accessNote ?? { action: n.action }
        req.accessNote = { ...note, action: n.action === 'list' ? note.action : n.action, table: note.table ?? n.table, ...(n.id === undefined ? {} : { id: n.id }), ...(n.columns === undefined ? {} : { columns: n.columns }) }
        if (n.patientId !== undefined) patients.add(n.patientId)
      }
    }, requestOptions(req.query), typeof body.cursor === 'string' ? body.cursor : undefined)
    // Every patient whose rows the answer holds gets an entry of their own, as a list does.
    if (req.accessNote !== undefined && patients.size === 1) req.accessNote.patientId = [...patients][0] as string
    else if (req.accessNote !== undefined && patients.size > 1) req.accessNote.patients = [...patients]
    return answer
  })

  app.post<{ Querystring: Query }>('/v1/batch', { ...ROWS, schema: S.batch }, async (req, reply) => {
    const body = requireObject(req) as { operations?: BatchOperation[] }
    const role = principalOf(req).role
    const ops = Array.isArray(body.operations) ? body.operations : []
    const tables: Array<TableDef | undefined> = []
    req.accessNote = { action: 'batch' }
    for (const [i, op] of ops.entries()) {
      if (op === null || typeof op !== 'object') { tables.push(undefined); continue }
      const table = db.table(String(op.table))
      tables.push(table)
      const row = op.row !== null && typeof op.row === 'object' && !Array.isArray(op.row) ? op.row as Record<string, unknown> : {}
      try {
        assertWritable(role, table, op.op === 'delete' ? [] : Object.keys(row))
      } catch (err) {
        if (err instanceof ForbiddenError) err.message = `operations[${i}]: ${err.message}`
        throw err
      }
      if (req.accessNote.table === undefined) req.accessNote.table = table.name
      if (req.accessNote.patientId === undefined && row.patient_id !== undefined) req.accessNote.patientId = String(row.patient_id)
    }
    const results = await db.batch(body.operations as BatchOperation[], { ...requestOptions(req.query), ...keyOptions(req) })
    void reply.status(201)
    return {
      results: results.map((r, i) => {
        const table = tables[i]
        return table === undefined ? r : { ...r, row: visible(req, table, r.row) }
      })
    }
  })

  app.post<{ Params: Params, Querystring: Query }>('/v1/tables/:table/import', {
    ...ROWS,
    schema: S.import,
    // Before any body parser runs: a JSON body (even one that is not JSON) is 415, not a parse error.
    preParsing: async (req, _reply, payload) => {
      assertImportType(mediaType(req))
      return payload
    }
  }, async (req) => {
    const table = db.table(req.params.table)
    const role = principalOf(req).role
    req.accessNote = { action: 'import', table: table.name }
    assertWritable(role, table, [])
    const type = mediaType(req)
    assertImportType(type)
    const check = (value: unknown): void => {
      if (value !== null && typeof value === 'object' && !Array.isArray(value)) assertWritable(role, table, Object.keys(value))
    }
    const scope = keyOptions(req).idempotencyKey
    return await importStream(db, table.name, req.body as NodeJS.ReadableStream, type === 'text/csv' ? 'csv' : 'ndjson', requestOptions(req.query), {
      check,
      ...(scope === undefined ? {} : { scope }),
      ...(init.maxImportLineBytes === undefined ? {} : { maxLineBytes: init.maxImportLineBytes })
    })
  })

  return app
}

/** The columns of a write's answer that the caller may read */
function visible (req: FastifyRequest, table: TableDef, row: Record<string, unknown> | null): Record<string, unknown> | null {
  return project(row, columnsFor(principalOf(req).role, table, 'read') ?? table.primaryKey)
}

/** Checks the read right (403 names what is missing) and notes the access for the audit */
function readNote (req: FastifyRequest, action: 'read' | 'list' | 'history', table: TableDef, id?: string): { columns: string[], breakGlass: boolean, widened: boolean } {
  req.accessNote = { action, table: table.name, ...(id === undefined ? {} : { id }), ...(table.name === 'patient_records' && id !== undefined ? { patientId: id } : {}) }
  const view = readView(req, table)
  req.accessNote.columns = view.columns
  if (view.breakGlass) {
    req.accessNote.breakGlass = true
    const reason = principalOf(req).breakGlass
    if (reason !== undefined) req.accessNote.reason = reason
  }
  return view
}

/** Checks the write right on every column the body names, and notes the access for the audit */
function writeNote (req: FastifyRequest, action: 'insert' | 'update' | 'delete', table: TableDef, body: Record<string, unknown>, id?: string): void {
  const columns = Object.keys(body)
  req.accessNote = {
    action,
    table: table.name,
    ...(id === undefined ? {} : { id }),
    ...(columns.length > 0 ? { columns } : {}),
    ...(table.name === 'patient_records' && id !== undefined ? { patientId: id } : body.patient_id !== undefined ? { patientId: String(body.patient_id) } : {})
  }
  assertWritable(principalOf(req).role, table, columns)
}

/** Completes the audit note from the row the request touched: its id and patient */
function noteRow (req: FastifyRequest, table: TableDef, id: string, row: Record<string, unknown> | null): void {
  const note = req.accessNote
  if (note === undefined) return
  note.id = id
  if (table.name === 'patient_records') note.patientId = id
  else if (row?.patient_id !== undefined && row.patient_id !== null) note.patientId = String(row.patient_id)
}

/** A JSON body that is an object (not `true`, `[]` or `null`) */
function requireObject (req: FastifyRequest): Record<string, unknown> {
  const body = requireBody(req)
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new ValidationError(`The body must be a JSON object, not ${Array.isArray(body) ? 'an array' : JSON.stringify(body)}`)
  }
  return body as Record<string, unknown>
}

function requireBody (req: FastifyRequest): unknown {
  if (req.body === undefined || req.body === null) throw new ValidationError('This request needs a JSON body')
  const type = mediaType(req)
  if (type !== 'application/json') {
    // The import parsers hand over the unread stream: drain it rather than leave it hanging.
    const stream = req.body as { resume?: () => void }
    if (typeof stream.resume === 'function') stream.resume()
    throw new NtsoekheError('UNSUPPORTED_MEDIA_TYPE', `This request takes application/json, not ${type === '' ? 'an untyped body' : type}`)
  }
  return req.body
}

/** An import's body is NDJSON or CSV: anything else (JSON included) is 415 */
function assertImportType (type: string): void {
  if (!IMPORT_TYPES.includes(type)) {
    throw new NtsoekheError('UNSUPPORTED_MEDIA_TYPE', `Import takes application/x-ndjson or text/csv, not ${type === '' ? 'an untyped body' : type}`)
  }
}

/** The request's media type, lower case, without parameters */
function mediaType (req: FastifyRequest): string {
  return (String(req.headers['content-type'] ?? '').split(';')[0] ?? '').trim().toLowerCase()
}

function single (query: Query, name: string): string {
  const v = query[name]
  if (Array.isArray(v)) throw new ValidationError(`${name} is given more than once`)
  return v ?? ''
}

function flag (query: Query, name: string): boolean {
  if (query[name] === undefined) return false
  const v = single(query, name)
  if (v === '' || v === 'true' || v === '1') return true
  if (v === 'false' || v === '0') return false
  throw new ValidationError(`${name} must be true or false`)
}

/** A query parameter given any number of times, as a list */
function listOf (v: string | string[] | undefined): string[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v]
}

/** `col` or `col:desc` (or `col:asc`) */
export function parseOrderBy (raw: string): { column: string, desc: boolean } {
  const colon = raw.lastIndexOf(':')
  const column = colon < 0 ? raw : raw.slice(0, colon)
  const dir = colon < 0 ? 'asc' : raw.slice(colon + 1).toLowerCase()
  if (column === '' || (dir !== 'asc' && dir !== 'desc')) throw new ValidationError(`order_by takes <column> or <column>:desc, got ${JSON.stringify(raw)}`)
  return { column, desc: dir === 'desc' }
}

function requestOptions (query: Query): RequestOptions {
  if (query.consistency === undefined) return {}
  const c = single(query, 'consistency')
  if (!CONSISTENCY_LEVELS.includes(c as Consistency)) {
    throw new ValidationError(`consistency must be one of ${CONSISTENCY_LEVELS.join(', ')}`)
  }
  return { consistency: c as Consistency }
}

function writeOptions (req: FastifyRequest<{ Querystring: Query }>): RequestOptions & { ifMatch?: string[], idempotencyKey?: string } {
  const ifMatch = parseIfMatch(req.headers['if-match'])
  return { ...requestOptions(req.query), ...(ifMatch === undefined ? {} : { ifMatch }), ...keyOptions(req) }
}

/**
 * The request's Idempotency-Key, kept per user: one user's key never
 * answers with another user's write.
 */
function keyOptions (req: FastifyRequest): { idempotencyKey?: string } {
  const key = parseIdempotencyKey(req.headers['idempotency-key'])
  return key === undefined ? {} : { idempotencyKey: `${principalOf(req).user}\u0000${key}` }
}

/** `Idempotency-Key: <key>`: 1 to MAX_IDEMPOTENCY_KEY characters of IDEMPOTENCY_KEY_RE, given once */
export function parseIdempotencyKey (header: string | string[] | undefined): string | undefined {
  if (header === undefined) return undefined
  if (Array.isArray(header)) throw new ValidationError('Idempotency-Key is given more than once')
  if (header.length === 0 || header.length > MAX_IDEMPOTENCY_KEY || !IDEMPOTENCY_KEY_RE.test(header)) {
    throw new ValidationError(`Idempotency-Key must be 1 to ${MAX_IDEMPOTENCY_KEY} letters, digits or . _ ~ + / = : - (a UUID fits)`)
  }
  return header
}

function etag (version: string): string {
  return `"${version}"`
}

/** `If-Match: "v1", "v2"` → [v1, v2]; a write that names several heads resolves a conflict */
export function parseIfMatch (header: string | string[] | undefined): string[] | undefined {
  if (header === undefined) return undefined
  const raw = Array.isArray(header) ? header.join(',') : header
  if (raw.trim() === '*') return undefined
  const versions = raw.split(',').map(s => s.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1')).filter(s => s !== '')
  for (const v of versions) {
    if (!isVersion(v)) throw new NtsoekheError('PRECONDITION_FAILED', `If-Match: ${JSON.stringify(v)} is not a version this database issues`)
  }
  return versions
}

