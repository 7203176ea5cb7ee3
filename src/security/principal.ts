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
