/**
 * Who may use the socket: the bearer token makes a Principal (401 without a
 * valid one), each route declares the right it needs (403 naming it), table
 * routes check rights by table and column, and every access that touches
 * data, every 401 and every 403 is handed to the audit hook once its answer
 * is known.
 */
import type { Socket } from 'node:net'
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest } from 'fastify'
import { ForbiddenError, UnavailableError, ValidationError } from '../errors/index.js'
import type { TableDef } from '../schema/index.js'
import type { AccessEvent, Principal } from '../security/principal.js'
import { RIGHTS, breakGlassColumns, columnsFor, hasRight, mayBreakGlass } from '../security/rights.js'

/** A route whose handler checks table and column rights itself */
export const TABLE_ACCESS = 'rows'
/** A route any authenticated user may use (the API's own description) */
export const AUTHENTICATED = 'authenticated'
/** Longest break-glass reason, characters */
export const MAX_REASON = 500

/** What the audit event of a request says beyond who, outcome and status */
export type AccessNote = Omit<AccessEvent, 'principal' | 'outcome' | 'status'> & {
  /** The patients whose rows an answer holds (a list): one audit entry each, kept in each patient's shard */
  patients?: string[]
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * The named right a route needs (RIGHTS, e.g. 'audit'), TABLE_ACCESS
     * when its handler checks table rights, or AUTHENTICATED for any user. A
     * route that declares nothing needs 'admin'.
     */
    access?: string
  }
  interface FastifyRequest {
    principal?: Principal
    /** Set by handlers that touch data: the request is audited */
    accessNote?: AccessNote
    /** The message of a 401 or 403 answered */
    denial?: string
  }
}

export interface Authenticator {
  authenticate: (token: string | undefined) => Promise<Principal>
}

export interface AccessInit {
  auth: Authenticator
  audit?: (event: AccessEvent) => void
  /** Whether the audit trail can take an entry now; data routes answer 503 while it cannot (the trail fails closed) */
  auditReady?: () => boolean
  /** A request body that sends nothing for this long is cut off, ms */
  bodyTimeoutMs: number
  log: FastifyBaseLogger
}

/** Installs authentication, route rights, the body inactivity timeout and the audit hook */
export function installAccess (app: FastifyInstance, init: AccessInit): void {
  const timed = new WeakSet<Socket>()
  app.addHook('onRequest', async req => {
    armBodyTimeout(req, init.bodyTimeoutMs, timed)
    const principal = await init.auth.authenticate(bearer(req.headers.authorization))
    const reason = breakGlassReason(req.headers['x-break-glass'])
    req.principal = reason === undefined ? principal : { ...principal, breakGlass: reason }
  })

  // Before the route schema is checked: a caller without the right learns that, not what its request lacks.
  app.addHook('preValidation', async req => {
    const access = req.routeOptions.config?.access ?? RIGHTS.admin
    if (access === AUTHENTICATED) return
    if (access === TABLE_ACCESS) {
      if (init.auditReady !== undefined && !init.auditReady()) throw new UnavailableError('The audit trail cannot record accesses now (the network does not take its entries): patient data is not served until it can')
      return
    }
    const p = principalOf(req)
    if (!hasRight(p.role, access)) throw new ForbiddenError(`Role ${p.role} lacks the right ${access}`)
  })

  const audit = init.audit
  if (audit === undefined) return
  app.addHook('onResponse', async (req, reply) => {
    const status = reply.statusCode
    let event: AccessEvent | undefined
    if (status === 401) {
      event = { action: 'login', outcome: 'unauthenticated', status, ...(req.denial === undefined ? {} : { reason: req.denial }) }
    } else if (req.accessNote !== undefined || status === 403) {
      const note: AccessNote = req.accessNote ?? { action: 'admin' }
      const outcome = status < 400 ? 'ok' : status === 403 ? 'denied' : 'error'
      event = {
        ...(req.principal === undefined ? {} : { principal: req.principal }),
        ...note,
        outcome,
        status,
        ...(status === 403 && req.denial !== undefined ? { reason: req.denial } : {})
      }
    }
    if (event === undefined) return
    try {
      const { patients, ...one } = event as AccessEvent & { patients?: string[] }
      if (patients === undefined || patients.length === 0) audit(one)
      else for (const patientId of patients) audit({ ...one, patientId })
    } catch (err) {
      init.log.error({ err }, 'audit hook failed')
    }
  })
}

export function principalOf (req: FastifyRequest): Principal {
  const p = req.principal
  if (p === undefined) throw new Error('principalOf: the request was not authenticated')
  return p
}

/**
 * The columns of `table` this request may read: the role's, or with a
 * break-glass reason from a doctor or nurse, every column of a patient table.
 */
export function readView (req: FastifyRequest, table: TableDef): { columns: string[], breakGlass: boolean, widened: boolean } {
  const p = principalOf(req)
  const own = columnsFor(p.role, table, 'read')
  if (p.breakGlass !== undefined && p.role !== 'admin') {
    if (!mayBreakGlass(p.role)) throw new ForbiddenError(`Role ${p.role} may not break the glass (X-Break-Glass is for doctors and nurses)`)
    const all = breakGlassColumns(table)
    // widened: the reason opened more than the role reads anyway
    if (all !== undefined) return { columns: all, breakGlass: true, widened: own === undefined || all.some(c => !own.includes(c)) }
  }
  if (own === undefined) throw new ForbiddenError(`Role ${p.role} may not read table ${table.name}`)
  return { columns: own, breakGlass: false, widened: false }
}

/** Throws unless each filter column is one the request may read (an unknown column is a 400) */
export function checkFilters (table: TableDef, columns: readonly string[], filters: string[], role: string): void {
  for (const f of filters) {
    if (!table.columns.some(c => c.name === f)) throw new ValidationError(`Unknown column ${f} in table ${table.name}`, { column: f })
    if (!columns.includes(f)) throw new ForbiddenError(`Role ${role} may not read column ${f} of ${table.name}`, { column: f })
  }
}

function bearer (header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header)
  return m?.[1]
}

function breakGlassReason (header: string | string[] | undefined): string | undefined {
  if (header === undefined) return undefined
  const raw = Array.isArray(header) ? header.join(', ') : header
  // The client percent-encodes the reason so any text survives an HTTP header.
  let reason: string
  try {
    reason = decodeURIComponent(raw).trim()
  } catch {
    reason = raw.trim()
  }
  if (reason === '') throw new ValidationError('X-Break-Glass needs a reason')
  if (reason.length > MAX_REASON) throw new ValidationError(`X-Break-Glass: a reason of at most ${MAX_REASON} characters`)
  return reason
}

/**
 * Cuts off a request whose body stalls: a socket inactivity timeout while
 * the body is being read (an import streams for as long as it sends, so
 * inactivity is bounded, not total time), cleared once the body has ended.
 */
function armBodyTimeout (req: FastifyRequest, ms: number, timed: WeakSet<Socket>): void {
  const raw = req.raw
  const socket = raw.socket as Socket | null
  // Injected requests (tests) have a socket stand-in without timers.
  if (socket === null || typeof socket.setTimeout !== 'function' || ms <= 0 || raw.complete) return
  const length = raw.headers['content-length']
  if (raw.headers['transfer-encoding'] === undefined && (length === undefined || length === '0')) return
  if (!timed.has(socket)) {
    timed.add(socket)
    socket.on('timeout', () => { socket.destroy() })
  }
  socket.setTimeout(ms)
  raw.once('end', () => { socket.setTimeout(0) })
}
