import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ValidationError } from '../errors/index.js'
import type { AuditFilter } from '../security/audit.js'
import type { AuditRow, VerifyResult } from '../security/audit-entry.js'
import type { AccessEvent } from '../security/principal.js'

/**
 * The audit trail's one route: `GET /v1/audit?patient=&user=&since=` lists
 * entries, `?verify=true` walks every chain. Only auditors and admins may
 * read it: the access rules name this path.
 */
export const AUDIT_ROUTE = '/v1/audit'

/** What the route reads: the node's AuditTrail */
export interface AuditReader {
  query: (filter: AuditFilter) => Promise<{ entries: AuditRow[], truncated: boolean }>
  verify: () => Promise<VerifyResult>
}

const AUDIT_QUERY = new Set(['patient', 'user', 'since', 'verify'])

export function auditRoute (app: FastifyInstance, trail: AuditReader): void {
  app.get<{ Querystring: Record<string, string | string[] | undefined> }>(AUDIT_ROUTE, async req => {
    const q: Record<string, string> = {}
    for (const [k, v] of Object.entries(req.query)) {
      if (!AUDIT_QUERY.has(k)) throw new ValidationError(`Unknown audit filter ${k}: use patient, user, since or verify`)
      if (typeof v !== 'string') throw new ValidationError(`${k} is given more than once`)
      q[k] = v
    }
    if (q.verify !== undefined && q.verify !== 'false') {
      if (q.verify !== 'true') throw new ValidationError('verify must be true or false')
      return await trail.verify()
    }
    const filter: AuditFilter = {}
    if (q.patient !== undefined) filter.patient = q.patient
    if (q.user !== undefined) filter.user = q.user
    if (q.since !== undefined) filter.since = q.since
    return await trail.query(filter)
  })
}

/** Keys the data routes learnt while answering (an insert's new id), for the access event */
const learntKeys = new WeakMap<FastifyRequest, string>()

export function noteKey (req: FastifyRequest, id: string): void {
  learntKeys.set(req, id)
}

const ACTIONS: Record<string, AccessEvent['action']> = {
  'POST /v1/tables/:table/rows': 'insert',
  'GET /v1/tables/:table/rows/:id': 'read',
  'PUT /v1/tables/:table/rows/:id': 'update',
  'PATCH /v1/tables/:table/rows/:id': 'update',
  'DELETE /v1/tables/:table/rows/:id': 'delete',
  'GET /v1/tables/:table/rows/:id/history': 'history',
  'GET /v1/tables/:table/rows': 'list',
  'POST /v1/batch': 'batch',
  'POST /v1/tables/:table/import': 'import'
}

/**
 * The access event of an answered request to a data route, or undefined for
 * other routes. Without authentication on this branch there is no principal;
 * the patient is known from the row's key (patient_records), the body or the
 * filter.
 */
export function accessEventOf (req: FastifyRequest, status: number): AccessEvent | undefined {
  const action = ACTIONS[`${req.method} ${req.routeOptions.url ?? ''}`]
  if (action === undefined) return undefined
  const params = req.params as { table?: string, id?: string }
  const query = req.query as Record<string, unknown>
  const body = req.body !== null && typeof req.body === 'object' && !Array.isArray(req.body) && typeof (req.body as { pipe?: unknown }).pipe !== 'function'
    ? req.body as Record<string, unknown>
    : undefined
  const id = params.id ?? learntKeys.get(req)
  const patient = params.table === 'patient_records' ? id : body?.patient_id ?? query.patient_id
  const event: AccessEvent = {
    action,
    outcome: status < 400 ? 'ok' : status === 401 ? 'unauthenticated' : status === 403 ? 'denied' : 'error',
    status
  }
  if (params.table !== undefined) event.table = params.table
  if (id !== undefined) event.id = id
  if (typeof patient === 'string' || typeof patient === 'number') event.patientId = String(patient)
  if (body !== undefined && action !== 'batch') event.columns = Object.keys(body)
  return event
}
