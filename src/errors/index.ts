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

export interface ErrorOptions {
  cause?: unknown
  /** The column the error is about, where there is one */
  column?: string
}

export class NtsoekheError extends Error {
  readonly code: ErrorCode
  readonly column?: string

  constructor (code: ErrorCode, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    if (options.column !== undefined) this.column = options.column
  }

  toJSON (): { code: ErrorCode, message: string, column?: string } {
    return this.column === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, column: this.column }
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
export function errorFromJSON (body: { code?: string, message?: string, column?: string }): NtsoekheError {
  const code = (body.code !== undefined && body.code in HTTP_STATUS ? body.code : 'INTERNAL') as ErrorCode
  const message = body.message ?? 'Unknown error'
  const options = body.column === undefined ? {} : { column: body.column }
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
