import type { FastifyInstance } from 'fastify'
import { ValidationError } from '../errors/index.js'
import type { AuditFilter } from '../security/audit.js'
import type { AuditRow, VerifyResult } from '../security/audit-entry.js'
import { RIGHTS } from '../security/rights.js'
import { ROUTE_SCHEMAS } from './schemas.js'

/**
 * The audit trail's one route: `GET /v1/audit?patient=&user=&since=` lists
 * entries, `?verify=true` walks every chain. Only auditors and admins may
 * read it (the right RIGHTS.audit).
 */
export const AUDIT_ROUTE = '/v1/audit'

/** What the route reads: the node's AuditTrail */
export interface AuditReader {
  query: (filter: AuditFilter) => Promise<{ entries: AuditRow[], truncated: boolean }>
  verify: () => Promise<VerifyResult>
  /** Whether an entry recorded now would be kept; absent means always */
  readonly accepting?: boolean
}

const AUDIT_QUERY = new Set(['patient', 'user', 'since', 'verify'])

export function auditRoute (app: FastifyInstance, trail: AuditReader): void {
  app.get<{ Querystring: Record<string, string | string[] | undefined> }>(AUDIT_ROUTE, { config: { access: RIGHTS.audit }, schema: ROUTE_SCHEMAS.audit }, async req => {
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
