/**
 * Who a socket request acts for: the authenticated user and their role, and
 * the reason given when a clinician reads outside their role (break-glass).
 * The API layer makes it from the bearer token; access rules and the audit
 * trail take it from there.
 */
export interface Principal {
  /** The user's name (`users.user_name`) */
  user: string
  /** The user's role name (`user_roles.role_name`): admin, doctor, nurse, billing, auditor */
  role: string
  /** The reason stated with `X-Break-Glass` / `--break-glass`, when one was */
  breakGlass?: string
}

/**
 * One access to the socket that the audit trail records: a read or write of
 * data, a failed login, a denial, a break-glass read. The API layer makes it
 * once the answer is known (the outcome and status are final).
 */
export interface AccessEvent {
  /** Who; undefined when the token was missing or unknown */
  principal?: Principal
  /** `seal` is the audit trail's own: a signature that closes each batch of a node's chain */
  action: 'read' | 'list' | 'history' | 'insert' | 'update' | 'delete' | 'batch' | 'import' | 'export' | 'backup' | 'restore' | 'purge' | 'login' | 'admin' | 'seal'
  table?: string
  /** The row's id (`42`, `3:7`), when the request names one */
  id?: string
  /** The patient the data concerns, when known (from the row or the filter) */
  patientId?: string
  /** Columns read or written */
  columns?: string[]
  outcome: 'ok' | 'denied' | 'unauthenticated' | 'error'
  /** The HTTP status answered */
  status: number
  /** The break-glass reason, or why access was denied */
  reason?: string
  /** The access was allowed only by break-glass */
  breakGlass?: boolean
}
