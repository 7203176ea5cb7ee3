import { HTTP_STATUS, NtsoekheError, type ErrorCode } from '../errors/index.js'

/** Maps fastify's own error codes onto ours */
const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'INVALID',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'INVALID',
  FST_ERR_CTP_INVALID_JSON_BODY: 'INVALID',
  FST_ERR_VALIDATION: 'INVALID'
}

export interface ErrorBody {
  error: { code: string, message: string, column?: string }
}

export function toErrorResponse (err: unknown): { status: number, body: ErrorBody } {
  if (err instanceof NtsoekheError) {
    return { status: HTTP_STATUS[err.code], body: { error: err.toJSON() } }
  }
  const e = err as { code?: string, statusCode?: number, message?: string }
  const mapped = e.code === undefined ? undefined : FASTIFY_CODES[e.code]
  if (mapped !== undefined) {
    return { status: HTTP_STATUS[mapped], body: { error: { code: mapped, message: e.message ?? mapped } } }
  }
  if (err instanceof SyntaxError) {
    return { status: 400, body: { error: { code: 'INVALID', message: `Malformed JSON: ${err.message}` } } }
  }
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return { status: e.statusCode, body: { error: { code: 'INVALID', message: e.message ?? 'Bad request' } } }
  }
  return { status: 500, body: { error: { code: 'INTERNAL', message: e.message ?? 'Internal error' } } }
}
