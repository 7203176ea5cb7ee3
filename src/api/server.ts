import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify'
import { NtsoekheError, ValidationError } from '../errors/index.js'
import { CONSISTENCY_LEVELS, type Consistency, type RequestOptions } from '../cluster/coordinator.js'
import type { BatchOperation, Database } from '../query/database.js'
import { isVersion } from '../storage/version.js'
import type { AccessEvent } from '../security/principal.js'
import { accessEventOf, auditRoute, noteKey, type AuditReader } from './audit.js'
import { toErrorResponse } from './errors.js'
import { importStream } from './import.js'

/** Largest JSON body the socket accepts (imports are streamed and exempt) */
export const BODY_LIMIT = 1024 * 1024

export interface ApiComponents {
  db: Database
  /** Everything `GET /v1/status` reports */
  status: () => Promise<Record<string, unknown>>
  /** Extra read-only routes' data, e.g. peers and ring, added by the networked node */
  extra?: Record<string, () => Promise<unknown>>
  /** Declares a down member gone for good (`DELETE /v1/members/:peerId`), on the networked node */
  removeMember?: (peerId: string) => Promise<unknown>
  /** Hands off this node's records and leaves the network (`POST /v1/leave`), on the networked node */
  leave?: () => Promise<unknown>
  /** Told of every answered request to a data route (the audit trail's `record`); must not throw or wait */
  audit?: (event: AccessEvent) => void
  /** The audit trail, served on `GET /v1/audit` */
  auditTrail?: AuditReader
  logger?: FastifyBaseLogger
}

type Params = { table: string, id: string }
type Query = Record<string, string | string[] | undefined>

const RESERVED_QUERY = new Set(['limit', 'cursor', 'consistency', 'local', 'cascade'])

/** The HTTP/JSON API that the socket serves: routes, error mapping, ETags */
export function createApi (components: ApiComponents): FastifyInstance {
  const { db } = components
  const app = Fastify({
    // Per-request lines are info level: the API logger runs at warn so only failures are logged.
    ...(components.logger === undefined ? { logger: false } : { loggerInstance: components.logger.child({ component: 'api' }, { level: 'warn' }) }),
    bodyLimit: BODY_LIMIT,
    return503OnClosing: true
  })

  // Imports stream their body: the parser hands over the raw request, so no limit applies.
  app.addContentTypeParser(['application/x-ndjson', 'application/ndjson', 'text/csv'], (_req, payload, done) => { done(null, payload) })

  app.setErrorHandler((err, req, reply) => {
    const { status, body } = toErrorResponse(err)
    if (status >= 500) req.log.error({ err }, 'request failed')
    void reply.status(status).send(body)
  })
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({ error: { code: 'NOT_FOUND', message: `No route ${req.method} ${req.url}` } })
  })

  const audit = components.audit
  if (audit !== undefined) {
    app.addHook('onResponse', (req, reply, done) => {
      const event = accessEventOf(req, reply.statusCode)
      if (event !== undefined) audit(event)
      done()
    })
  }

  app.get('/v1/status', async () => await components.status())
  if (components.auditTrail !== undefined) auditRoute(app, components.auditTrail)

  app.get('/v1/tables', async () => ({
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

  for (const [name, fn] of Object.entries(components.extra ?? {})) {
    app.get(`/v1/${name}`, async () => await fn())
  }

  const removeMember = components.removeMember
  if (removeMember !== undefined) {
    app.delete<{ Params: { peerId: string } }>('/v1/members/:peerId', async req => await removeMember(req.params.peerId))
  }
  const leave = components.leave
  if (leave !== undefined) app.post('/v1/leave', async () => await leave())

  app.post<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows', async (req, reply) => {
    const result = await db.insert(req.params.table, requireBody(req), requestOptions(req.query))
    noteKey(req, result.id)
    void reply.status(201).header('etag', etag(result.version))
    return { id: result.id, version: result.version, row: result.row }
  })

  app.get<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows/:id', async (req, reply) => {
    const local = flag(req.query, 'local')
    const result = await db.get(req.params.table, req.params.id, { ...requestOptions(req.query), local })
    void reply.header('etag', etag(result.version))
    return result
  })

  app.put<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows/:id', async (req, reply) => {
    const result = await db.replace(req.params.table, req.params.id, requireBody(req), writeOptions(req))
    void reply.header('etag', etag(result.version))
    return { id: result.id, version: result.version, row: result.row }
  })

  app.patch<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows/:id', async (req, reply) => {
    const result = await db.patch(req.params.table, req.params.id, requireBody(req), writeOptions(req))
    void reply.header('etag', etag(result.version))
    return { id: result.id, version: result.version, row: result.row }
  })

  app.delete<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows/:id', async (req, reply) => {
    const result = await db.delete(req.params.table, req.params.id, { ...writeOptions(req), cascade: flag(req.query, 'cascade') })
    void reply.header('etag', etag(result.version))
    return { id: result.id, version: result.version, deleted: true, cascaded: result.cascaded }
  })

  app.post<{ Params: Params }>('/v1/tables/:table/rows/:id/purge', async req => {
    return await db.purge(req.params.table, req.params.id)
  })

  app.get<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows/:id/history', async req => {
    return { versions: await db.history(req.params.table, req.params.id, requestOptions(req.query)) }
  })

  app.get<{ Params: Params, Querystring: Query }>('/v1/tables/:table/rows', async req => {
    const where: Record<string, string> = {}
    for (const [k, v] of Object.entries(req.query)) {
      if (RESERVED_QUERY.has(k) || v === undefined) continue
      if (Array.isArray(v)) throw new ValidationError(`Filter ${k} is given more than once`, { column: k })
      where[k] = v
    }
    const limit = req.query.limit === undefined ? undefined : parseLimit(single(req.query, 'limit'))
    const cursor = req.query.cursor === undefined ? undefined : single(req.query, 'cursor')
    return await db.list(req.params.table, where, {
      ...requestOptions(req.query),
      ...(limit === undefined ? {} : { limit }),
      ...(cursor === undefined ? {} : { cursor })
    })
  })

  app.post<{ Querystring: Query }>('/v1/batch', async (req, reply) => {
    const body = requireBody(req) as { operations?: BatchOperation[] }
    const results = await db.batch(body.operations as BatchOperation[], requestOptions(req.query))
    void reply.status(201)
    return { results }
  })

  app.post<{ Params: Params, Querystring: Query }>('/v1/tables/:table/import', async (req) => {
    db.table(req.params.table)
    const type = mediaType(req)
    if (!['application/x-ndjson', 'application/ndjson', 'text/csv'].includes(type)) {
      throw new NtsoekheError('UNSUPPORTED_MEDIA_TYPE', 'Import takes application/x-ndjson or text/csv')
    }
    return await importStream(db, req.params.table, req.body as NodeJS.ReadableStream, type === 'text/csv' ? 'csv' : 'ndjson', requestOptions(req.query))
  })

  return app
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

function parseLimit (raw: string): number {
  if (!/^\d+$/.test(raw)) throw new ValidationError(`limit must be a positive integer, got ${JSON.stringify(raw)}`)
  return Number(raw)
}

function requestOptions (query: Query): RequestOptions {
  if (query.consistency === undefined) return {}
  const c = single(query, 'consistency')
  if (!CONSISTENCY_LEVELS.includes(c as Consistency)) {
    throw new ValidationError(`consistency must be one of ${CONSISTENCY_LEVELS.join(', ')}`)
  }
  return { consistency: c as Consistency }
}

function writeOptions (req: FastifyRequest<{ Querystring: Query }>): RequestOptions & { ifMatch?: string[] } {
  const ifMatch = parseIfMatch(req.headers['if-match'])
  return { ...requestOptions(req.query), ...(ifMatch === undefined ? {} : { ifMatch }) }
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

