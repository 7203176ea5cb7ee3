import { ConflictError, NotFoundError, UnauthorizedError, ValidationError } from '../errors/index.js'
import type { Database } from '../query/database.js'
import type { Row } from '../schema/index.js'
import type { Principal } from './principal.js'
import { DEFAULT_ROLES } from './rights.js'
import { hashToken, newToken, readAdminToken, writeAdminToken } from './tokens.js'

/** How long a token's lookup (and the role names) is trusted before it is read again: bounds how late a revoke bites */
export const DEFAULT_CACHE_MS = 1000
/** Tokens whose lookups are kept; beyond this the cache is emptied (bad tokens must not grow it without end) */
export const DEFAULT_MAX_CACHED = 10_000
/** The name of the admin a new network is created with */
export const FIRST_ADMIN = 'admin'
/** Rows read per page when the whole users or user_roles table is listed */
const PAGE = 1000

export interface UserDirectoryComponents {
  db: Database
}

export interface UserDirectoryInit {
  /** How long a lookup is cached, ms. @default 1000 */
  cacheMs?: number
  /** Most tokens cached at once. @default 10000 */
  maxCached?: number
  /** The clock (tests move it). @default Date.now */
  now?: () => number
  /**
   * True while this node may not have heard of the network's users yet (it
   * joined moments ago and its view of the members is still forming): an
   * unknown token is then looked up again until it is false, for at most
   * `settleWaitMs`, instead of answering 401 at once.
   */
  settling?: () => boolean
  /** @default 10000 */
  settleWaitMs?: number
}

/** How often an unknown token is looked up again while the node is settling */
const SETTLE_RETRY_MS = 250

export interface UserInfo {
  user: string
  role: string
  revoked: boolean
  revokedAt: string | null
}

interface Lookup { expires: number, result: Promise<Principal> }

/**
 * Users and their tokens, kept in the global `users` table (every node holds
 * a copy): a token is stored only as its SHA-256. Lookups are cached for
 * `cacheMs`, so a revoke made on any node bites everywhere within that time
 * plus replication; a token the local copy does not know yet is looked up
 * across the network (a list of a global table asks every member).
 */
export class UserDirectory {
  private readonly db: Database
  private readonly cacheMs: number
  private readonly maxCached: number
  private readonly now: () => number
  private readonly settling: () => boolean
  private readonly settleWaitMs: number
  private readonly cache = new Map<string, Lookup>()
  private roles?: { expires: number, byId: Promise<Map<number, string>> }

  constructor (components: UserDirectoryComponents, init: UserDirectoryInit = {}) {
    this.db = components.db
    this.cacheMs = init.cacheMs ?? DEFAULT_CACHE_MS
    this.maxCached = init.maxCached ?? DEFAULT_MAX_CACHED
    this.now = init.now ?? Date.now
    this.settling = init.settling ?? (() => false)
    this.settleWaitMs = init.settleWaitMs ?? 10_000
  }

  /** The principal a bearer token stands for; UnauthorizedError when it is missing, unknown or revoked */
  async authenticate (token: string | undefined): Promise<Principal> {
    if (token === undefined || token === '') {
      throw new UnauthorizedError('This request needs a token: Authorization: Bearer <token> (the CLI reads --token, $NTSOEKHE_TOKEN, then <home>/admin.token)')
    }
    const hash = hashToken(token)
    const now = this.now()
    const cached = this.cache.get(hash)
    if (cached !== undefined && cached.expires > now) return await cached.result
    if (this.cache.size >= this.maxCached) this.cache.clear()
    const result = this.lookup(hash)
    // A failed read (the network is down) is not an answer to keep.
    result.catch(err => { if (!(err instanceof UnauthorizedError)) this.cache.delete(hash) })
    this.cache.set(hash, { expires: now + this.cacheMs, result })
    return await result
  }

  private async lookup (hash: string): Promise<Principal> {
    const row = await this.findUser(hash)
    if (row === undefined) throw new UnauthorizedError('Unknown token')
    if (row.revoked_at != null) throw new UnauthorizedError(`The token of user ${String(row.user_name)} was revoked`)
    const role = await this.roleName(Number(row.role_id))
    return { user: String(row.user_name), role }
  }

  /** The user row holding this token hash; while the node is settling, an absent one is looked for again (bounded) */
  private async findUser (hash: string): Promise<Row | undefined> {
    const until = Date.now() + this.settleWaitMs
    for (;;) {
      const { rows } = await this.db.list('users', { token_hash: hash }, { limit: 1 })
      if (rows[0] !== undefined || !this.settling() || Date.now() >= until) return rows[0]
      await new Promise(resolve => setTimeout(resolve, SETTLE_RETRY_MS))
    }
  }

  /** Forgets every cached lookup (after a revoke made here) */
  invalidate (): void {
    this.cache.clear()
    this.roles = undefined
  }

  private async roleMap (): Promise<Map<number, string>> {
    const now = this.now()
    if (this.roles === undefined || this.roles.expires <= now) {
      const byId = this.readRoles()
      byId.catch(() => { this.roles = undefined })
      this.roles = { expires: now + this.cacheMs, byId }
    }
    return await this.roles.byId
  }

  private async readRoles (): Promise<Map<number, string>> {
    const rows = await this.all('user_roles')
    return new Map(rows.map(r => [Number(r.role_id), String(r.role_name)]))
  }

  private async roleName (id: number): Promise<string> {
    let name = (await this.roleMap()).get(id)
    if (name === undefined) {
      // A role made elsewhere moments ago: read again once rather than refuse.
      this.roles = undefined
      name = (await this.roleMap()).get(id)
    }
    if (name === undefined) throw new UnauthorizedError(`The user's role ${id} is unknown`)
    return name
  }

  private async roleId (name: string): Promise<number> {
    for (const [id, n] of await this.roleMap()) {
      if (n === name) return id
    }
    this.roles = undefined
    const map = await this.roleMap()
    for (const [id, n] of map) {
      if (n === name) return id
    }
    throw new ValidationError(`Unknown role ${name}; the roles are ${[...map.values()].join(', ')}`, { column: 'role' })
  }

  /** Makes a user with a new token; the token is returned here and never again */
  async add (name: string, role: string): Promise<{ user: string, role: string, token: string }> {
    if (typeof name !== 'string' || name === '') throw new ValidationError('A user needs a name', { column: 'user' })
    if (typeof role !== 'string' || role === '') throw new ValidationError('A user needs a role', { column: 'role' })
    const roleId = await this.roleId(role)
    const token = newToken()
    await this.db.insert('users', { user_name: name, role_id: roleId, token_hash: hashToken(token), revoked_at: null })
    return { user: name, role, token }
  }

  async list (): Promise<UserInfo[]> {
    const roles = await this.roleMap()
    const rows = await this.all('users')
    return rows.map(r => ({
      user: String(r.user_name),
      role: roles.get(Number(r.role_id)) ?? String(r.role_id),
      revoked: r.revoked_at != null,
      revokedAt: r.revoked_at == null ? null : String(r.revoked_at)
    })).sort((a, b) => a.user < b.user ? -1 : a.user > b.user ? 1 : 0)
  }

  /**
   * Revokes a user's token: a new version of its row, which reaches every
   * node as any write does. The last admin with a working token is kept, so
   * a network cannot be locked out of its own users.
   */
  async revoke (name: string): Promise<UserInfo> {
    const { rows } = await this.db.list('users', { user_name: name }, { limit: 1 })
    const row = rows[0]
    if (row === undefined) throw new NotFoundError(`No user named ${name}`)
    const role = await this.roleName(Number(row.role_id))
    if (row.revoked_at == null) {
      if (role === 'admin') {
        const admins = (await this.list()).filter(u => u.role === 'admin' && !u.revoked)
        if (admins.length <= 1) throw new ConflictError(`${name} is the last admin; add another admin before revoking it`)
      }
      const r = await this.db.patch('users', String(row.user_id), { revoked_at: new Date().toISOString() })
      row.revoked_at = r.row?.revoked_at ?? null
    }
    this.invalidate()
    return { user: name, role, revoked: true, revokedAt: String(row.revoked_at) }
  }

  /** Creates the default roles that do not exist yet (a network being created) */
  async ensureRoles (): Promise<void> {
    const existing = new Set((await this.readRoles()).values())
    for (const { id, name } of DEFAULT_ROLES) {
      if (existing.has(name)) continue
      try {
        await this.db.insert('user_roles', { role_id: id, role_name: name })
      } catch (err) {
        // The id was taken by a role of another name: let the database draw one.
        if (!(err instanceof ConflictError) || err.column !== undefined) throw err
        await this.db.insert('user_roles', { role_name: name })
      }
    }
    this.roles = undefined
  }

  /**
   * On a node that creates a network: the roles, and the first admin unless
   * some user already has a token. The admin's token is `<home>/admin.token`
   * (written by `init`, or here); returns whether an admin was made.
   */
  async createFirstAdmin (home: string): Promise<boolean> {
    await this.ensureRoles()
    const users = await this.all('users')
    if (users.some(u => u.token_hash != null)) return false
    let token = await readAdminToken(home)
    if (token === undefined) {
      token = newToken()
      await writeAdminToken(home, token)
    }
    await this.db.insert('users', { user_name: FIRST_ADMIN, role_id: await this.roleId('admin'), token_hash: hashToken(token), revoked_at: null })
    return true
  }

  private async all (table: string): Promise<Row[]> {
    const out: Row[] = []
    let cursor: string | undefined
    do {
      const page = await this.db.list(table, {}, { limit: PAGE, ...(cursor === undefined ? {} : { cursor }) })
      out.push(...page.rows)
      cursor = page.next ?? undefined
    } while (cursor !== undefined)
    return out
  }
}
