/**
 * Typed errors with stable codes. Every layer throws these; the socket maps
 * `.code` to an HTTP status and a JSON body `{ error: { code, message, column? } }`,
 * and the client rebuilds them from that body.
 */
export type ErrorCode =
  | 'INVALID'
  | 'UNAUTHORIZED'
  | 'FORBIDDEN'
  | 'NOT_FOUND'
  | 'UNKNOWN_TABLE'
  | 'CONFLICT'
  | 'REFERENCE'
  | 'PRECONDITION_FAILED'
  | 'TOO_LARGE'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'UNAVAILABLE'
  | 'NOT_OWNER'
  | 'TIMEOUT'
  | 'INVALID_MESSAGE'
  | 'HOME_LOCKED'
  | 'DATA_KEY'
  | 'INTEGRITY'
  | 'INTERNAL'

export const HTTP_STATUS: Record<ErrorCode, number> = {
  INVALID: 400,
  INVALID_MESSAGE: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  UNKNOWN_TABLE: 404,
  CONFLICT: 409,
  REFERENCE: 409,
  PRECONDITION_FAILED: 412,
  TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  UNAVAILABLE: 503,
  NOT_OWNER: 503,
  TIMEOUT: 504,
  HOME_LOCKED: 409,
  DATA_KEY: 500,
  INTEGRITY: 500,
  INTERNAL: 500
}

/** Whether a write that missed its consistency level may still reach the owners that lack it */
export type WriteOutcome = 'partial' | 'unknown'

/** What is known of a write that missed its consistency level (a 503) */
export interface WriteShortfall {
  /** Owners that have the write on disk */
  durable: number
  /** Owners the consistency level required */
  required: number
  /**
   * `partial`: some owners may lack it, and it reaches them when they return
   * (hints); `unknown`: an owner may or may not have applied it. Either way a
   * retry with the same Idempotency-Key writes it at most once.
   */
  outcome: WriteOutcome
}

export interface ErrorOptions extends Partial<WriteShortfall> {
  cause?: unknown
  /** The column the error is about, where there is one */
  column?: string
}

export interface ErrorJSON extends Partial<WriteShortfall> {
  code: ErrorCode
  message: string
  column?: string
}

export class NtsoekheError extends Error {
  readonly code: ErrorCode
  readonly column?: string
  readonly durable?: number
  readonly required?: number
  readonly outcome?: WriteOutcome

  constructor (code: ErrorCode, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    if (options.column !== undefined) this.column = options.column
    if (options.durable !== undefined) this.durable = options.durable
    if (options.required !== undefined) this.required = options.required
    if (options.outcome !== undefined) this.outcome = options.outcome
  }

  toJSON (): ErrorJSON {
    const out: ErrorJSON = { code: this.code, message: this.message }
    if (this.column !== undefined) out.column = this.column
    if (this.durable !== undefined) out.durable = this.durable
    if (this.required !== undefined) out.required = this.required
    if (this.outcome !== undefined) out.outcome = this.outcome
    return out
  }
}

export class ValidationError extends NtsoekheError {
  override name = 'ValidationError'
  constructor (message: string, options: ErrorOptions = {}) { super('INVALID', message, options) }
}

/** No valid credentials: a missing, unknown or revoked token (HTTP 401) */
export class UnauthorizedError extends NtsoekheError {
  override name = 'UnauthorizedError'
  constructor (message: string, options: ErrorOptions = {}) { super('UNAUTHORIZED', message, options) }
}

/** Valid credentials without the right asked for; the message names the missing right (HTTP 403). Also a peer that is not a member */
export class ForbiddenError extends NtsoekheError {
  override name = 'ForbiddenError'
  constructor (message: string, options: ErrorOptions = {}) { super('FORBIDDEN', message, options) }
}

export class NotFoundError extends NtsoekheError {
  override name = 'NotFoundError'
  constructor (message: string, options: ErrorOptions = {}) { super('NOT_FOUND', message, options) }
}

export class UnknownTableError extends NtsoekheError {
  override name = 'UnknownTableError'
  constructor (table: string) { super('UNKNOWN_TABLE', `Unknown table: ${table}`) }
}

export class ConflictError extends NtsoekheError {
  override name = 'ConflictError'
  constructor (message: string, options: ErrorOptions = {}) { super('CONFLICT', message, options) }
}

export class ReferenceError extends NtsoekheError {
  override name = 'ReferenceError'
  constructor (message: string, options: ErrorOptions = {}) { super('REFERENCE', message, options) }
}

export class PreconditionFailedError extends NtsoekheError {
  override name = 'PreconditionFailedError'
  constructor (message: string, options: ErrorOptions = {}) { super('PRECONDITION_FAILED', message, options) }
}

export class UnavailableError extends NtsoekheError {
  override name = 'UnavailableError'
  constructor (message: string, options: ErrorOptions = {}) { super('UNAVAILABLE', message, options) }
}

/**
 * This node's disk is full: it takes no writes (as coordinator or replica)
 * until space is freed, and goes on serving reads. Nothing was written here.
 */
export class StorageFullError extends NtsoekheError {
  override name = 'StorageFullError'
  constructor (message: string, options: ErrorOptions = {}) { super('UNAVAILABLE', message, options) }
}

export class TimeoutError extends NtsoekheError {
  override name = 'TimeoutError'
  constructor (message: string, options: ErrorOptions = {}) { super('TIMEOUT', message, options) }
}

export class InvalidMessageError extends NtsoekheError {
  override name = 'InvalidMessageError'
  constructor (message: string, options: ErrorOptions = {}) { super('INVALID_MESSAGE', message, options) }
}

export class HomeLockedError extends NtsoekheError {
  override name = 'HomeLockedError'
  constructor (message: string, options: ErrorOptions = {}) { super('HOME_LOCKED', message, options) }
}

/** The node's data key is missing, malformed, or not the key the store was encrypted with */
export class DataKeyError extends NtsoekheError {
  override name = 'DataKeyError'
  constructor (message: string, options: ErrorOptions = {}) { super('DATA_KEY', message, options) }
}

/** A stored value failed authentication (damaged, or written under another key): never returned as data */
export class IntegrityError extends NtsoekheError {
  override name = 'IntegrityError'
  constructor (message: string, options: ErrorOptions = {}) { super('INTEGRITY', message, options) }
}

/**
 * Rebuilds an error that crossed the socket or a peer stream: refusals get
 * their class back (so `instanceof ConflictError` works wherever the error was
 * raised). UNAVAILABLE and TIMEOUT stay plain NtsoekheErrors on purpose: a peer
 * that answered "I could not reach my replicas" is not itself unreachable.
 */
export function errorFromJSON (body: { code?: string, message?: string, column?: string, durable?: unknown, required?: unknown, outcome?: unknown }): NtsoekheError {
  const code = (body.code !== undefined && body.code in HTTP_STATUS ? body.code : 'INTERNAL') as ErrorCode
  const message = body.message ?? 'Unknown error'
  const options: ErrorOptions = body.column === undefined ? {} : { column: body.column }
  if (isCount(body.durable)) options.durable = body.durable
  if (isCount(body.required)) options.required = body.required
  if (body.outcome === 'partial' || body.outcome === 'unknown') options.outcome = body.outcome
  switch (code) {
    case 'INVALID': return new ValidationError(message, options)
    case 'UNAUTHORIZED': return new UnauthorizedError(message, options)
    case 'FORBIDDEN': return new ForbiddenError(message, options)
    case 'NOT_FOUND': return new NotFoundError(message, options)
    case 'CONFLICT': return new ConflictError(message, options)
    case 'REFERENCE': return new ReferenceError(message, options)
    case 'PRECONDITION_FAILED': return new PreconditionFailedError(message, options)
    default: {
      const err = new NtsoekheError(code, message, options)
      err.name = 'NtsoekheError'
      return err
    }
  }
}

function isCount (n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0
}

/** Whether `err` is an error with this code (ours, rebuilt from a peer, or any with a `code`) */
export function hasCode (err: unknown, code: string): boolean {
  return (err as { code?: unknown } | null)?.code === code
}
