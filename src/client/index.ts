import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http'
import type { Readable } from 'node:stream'
import { concat, fromString, toString } from 'uint8arrays'
import { NtsoekheError, errorFromJSON } from '../errors/index.js'

/** No daemon answers on the socket: not started, or gone */
export class NoDaemonError extends NtsoekheError {
  override name = 'NoDaemonError'
  /** The socket nobody answers on */
  readonly socket: string
  constructor (socket: string, cause: unknown) {
    super('UNAVAILABLE', `No daemon is listening on ${socket}; start one with \`ntsoekhe daemon\``, { cause })
    this.socket = socket
  }
}

export interface ClientInit {
  /** Path of the daemon's Unix socket */
  socket: string
  /** Give up on a request after this long, ms. @default 60000 */
  timeout?: number
  /** Connections kept open to the daemon. @default 64 */
  maxSockets?: number
  /** Bearer token sent with every request (`ntsoekhe user add` prints one; the first admin's is `<home>/admin.token`) */
  token?: string
  /**
   * Times a write whose outcome is unknown (a timeout, or a 503 whose
   * `outcome` is `partial` or `unknown`) is sent again, with the same
   * Idempotency-Key, before its error is reported. @default 3
   */
  writeRetries?: number
  /** Wait before the first resend, ms; it doubles each time. @default 200 */
  retryDelayMs?: number
}

export interface WriteOptions extends RequestOptions {
  /** Sent as `Idempotency-Key`; one is made for each call when none is given, and kept across its resends */
  idempotencyKey?: string
}

export interface RequestOptions {
  consistency?: 'one' | 'quorum' | 'all'
  signal?: AbortSignal
}

export interface ReadOptions extends RequestOptions {
  /** Read outside your role in an emergency, stating why (doctors and nurses; audited): `X-Break-Glass` */
  breakGlass?: string
}

export interface RoleInfo { role: string, tables: Record<string, { read: string[], write: string[] }>, rights: string[], breakGlass: boolean }
export interface UserInfo { user: string, role: string, revoked: boolean, revokedAt: string | null }

export interface RowResult { id: string, version: string, row: Record<string, unknown> | null }
export interface GetResult { row: Record<string, unknown>, version: string, conflicts: Array<{ version: string, row: Record<string, unknown> | null }> }
export interface ListResult { rows: Array<Record<string, unknown>>, next: string | null }

/** Typed client for the socket API: what the CLI uses, exported for programs */
export class NtsoekheClient {
  readonly socket: string
  private readonly timeout: number
  private readonly token?: string
  private readonly writeRetries: number
  private readonly retryDelayMs: number
  /** Keeps connections to the socket open between requests */
  private readonly agent: Agent

  constructor (init: ClientInit) {
    this.socket = init.socket
    this.timeout = init.timeout ?? 60_000
    if (init.token !== undefined) this.token = init.token
    this.writeRetries = init.writeRetries ?? 3
    this.retryDelayMs = init.retryDelayMs ?? 200
    this.agent = new Agent({ keepAlive: true, maxSockets: init.maxSockets ?? 64 })
  }

  /** Closes the kept-alive connections (a process that is done with the client can then exit at once) */
  close (): void {
    this.agent.destroy()
  }

  async status (): Promise<Record<string, any>> { return await this.request('GET', '/v1/status') }
  async tables (): Promise<{ tables: Array<Record<string, any>> }> { return await this.request('GET', '/v1/tables') }
  async peers (): Promise<Record<string, any>> { return await this.request('GET', '/v1/peers') }
  async ring (): Promise<Record<string, any>> { return await this.request('GET', '/v1/ring') }
  /** What a new machine needs to join this network: `{ invite, addresses }` (the invite carries the network key) */
  async invite (): Promise<{ invite: string, addresses: string[] }> { return await this.request('GET', '/v1/invite') }
  /** Declares a down member gone for good: its share and its records pass to the others */
  async removeMember (peerId: string): Promise<Record<string, any>> { return await this.request('DELETE', `/v1/members/${enc(peerId)}`) }
  /** Hands this node's records to their owners and leaves the network; the daemon then stops */
  async leave (): Promise<Record<string, any>> { return await this.request('POST', '/v1/leave', { timeout: 11 * 60_000 }) }
  /** Runs one anti-entropy round now: this node's ranges compared with their co-owners, differing records sent */
  async repair (options: { timeout?: number } = {}): Promise<{ ranges: number, recordsCompared: number, recordsSent: number, seconds: number }> {
    return await this.request('POST', '/v1/repair', { timeout: options.timeout ?? 60 * 60_000 })
  }

  /** Audit entries across the network, oldest first, filtered by patient id, user name and time (ISO 8601) */
  async audit (filter: { patient?: string, user?: string, since?: string } = {}): Promise<{ entries: Array<Record<string, any>>, truncated: boolean }> {
    return await this.request('GET', `/v1/audit${qs(filter)}`)
  }

  /** Walks every node's audit chain this daemon can reach; `broken` names the first broken link */
  async verifyAudit (): Promise<{ ok: boolean, checked: number, nodes: number, broken: { node: string, seq: number, problem: string, message: string } | null }> {
    return await this.request('GET', '/v1/audit?verify=true')
  }
  /** Makes a user; its token is in the answer and never shown again */
  async addUser (user: string, role: string): Promise<{ user: string, role: string, token: string }> { return await this.request('POST', '/v1/users', { body: { user, role } }) }
  async users (): Promise<{ users: UserInfo[] }> { return await this.request('GET', '/v1/users') }
  /** Revokes a user's token on every node */
  async revokeUser (user: string): Promise<UserInfo> { return await this.request('POST', `/v1/users/${enc(user)}/revoke`) }
  /** Each role's rights by table and column */
  async roles (): Promise<{ roles: RoleInfo[] }> { return await this.request('GET', '/v1/roles') }

  async insert (table: string, row: unknown, options: WriteOptions = {}): Promise<RowResult> {
    return await this.write('POST', `/v1/tables/${enc(table)}/rows${qs(options)}`, options, { body: row })
  }

  async get (table: string, id: string | number, options: ReadOptions & { local?: boolean } = {}): Promise<GetResult> {
    return await this.request('GET', `/v1/tables/${enc(table)}/rows/${enc(String(id))}${qs(options)}`, { signal: options.signal, breakGlass: options.breakGlass })
  }

  async replace (table: string, id: string | number, row: unknown, options: WriteOptions & { ifMatch?: string[] } = {}): Promise<RowResult> {
    return await this.write('PUT', `/v1/tables/${enc(table)}/rows/${enc(String(id))}${qs(options)}`, options, { body: row, ifMatch: options.ifMatch })
  }

  async update (table: string, id: string | number, changes: unknown, options: WriteOptions & { ifMatch?: string[] } = {}): Promise<RowResult> {
    return await this.write('PATCH', `/v1/tables/${enc(table)}/rows/${enc(String(id))}${qs(options)}`, options, { body: changes, ifMatch: options.ifMatch })
  }

  async delete (table: string, id: string | number, options: WriteOptions & { ifMatch?: string[], cascade?: boolean } = {}): Promise<{ id: string, version: string, deleted: true, cascaded: number }> {
    return await this.write('DELETE', `/v1/tables/${enc(table)}/rows/${enc(String(id))}${qs(options)}`, options, { ifMatch: options.ifMatch })
  }

  /** Erases a row for good, on every node, history included (admin) */
  async purge (table: string, id: string | number, options: { signal?: AbortSignal } = {}): Promise<{ table: string, id: string, purged: true, replicas: number }> {
    return await this.request('POST', `/v1/tables/${enc(table)}/rows/${enc(String(id))}/purge`, { signal: options.signal })
  }

  async history (table: string, id: string | number, options: ReadOptions = {}): Promise<{ versions: Array<{ version: string, parents: string[], row: Record<string, unknown> | null, deleted: boolean }> }> {
    return await this.request('GET', `/v1/tables/${enc(table)}/rows/${enc(String(id))}/history${qs(options)}`, { signal: options.signal, breakGlass: options.breakGlass })
  }

  /**
   * Lists rows: `where` equality filters; `filters` are `<col><op><value>`
   * comparisons (`date>=2026-01-01`); `orderBy` is `<col>` or `<col>:desc`
   * (default: primary-key order)
   */
  async query (table: string, where: Record<string, string | number> = {}, options: ReadOptions & { limit?: number, cursor?: string, filters?: string[], orderBy?: string } = {}): Promise<ListResult> {
    const { filters = [], orderBy, ...rest } = options
    const extra = [...filters.map(f => `where=${encodeURIComponent(f)}`), ...(orderBy === undefined ? [] : [`order_by=${encodeURIComponent(orderBy)}`])].join('&')
    const base = qs({ ...where, ...rest })
    const query = extra === '' ? base : base === '' ? `?${extra}` : `${base}&${extra}`
    return await this.request('GET', `/v1/tables/${enc(table)}/rows${query}`, { signal: options.signal, breakGlass: options.breakGlass })
  }

  async batch (operations: unknown[], options: WriteOptions = {}): Promise<{ results: RowResult[] }> {
    return await this.write('POST', `/v1/batch${qs(options)}`, options, { body: { operations } })
  }

  /**
   * A write sent with an Idempotency-Key (the caller's, or a random 128-bit
   * one), and sent again with the same key while its outcome is unknown:
   * the daemon answers a repeat of a write that took effect with its first
   * result, so a resend never writes twice. Bounded by `writeRetries`.
   */
  private async write<T> (method: string, path: string, options: WriteOptions, opts: { body?: unknown, ifMatch?: string[] | undefined }): Promise<T> {
    const idempotencyKey = options.idempotencyKey ?? toString(randomBytes(16), 'base16')
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.request<T>(method, path, { ...opts, idempotencyKey, signal: options.signal })
      } catch (err) {
        if (attempt >= this.writeRetries || !outcomeUnknown(err) || options.signal?.aborted === true) throw err
        // Backs off with jitter, so that clients that failed together do not all come back at once.
        await sleep(this.retryDelayMs * 2 ** attempt * (0.5 + Math.random() / 2), undefined, options.signal === undefined ? {} : { signal: options.signal })
      }
    }
  }

  /** Streams NDJSON or CSV into a table */
  /**
   * Streams NDJSON or CSV into a table. Each line is written with a key made
   * of its table, number and content (scoped by `idempotencyKey` when given):
   * the same file imported again writes nothing new.
   */
  async import (table: string, body: Readable | string, format: 'ndjson' | 'csv', options: RequestOptions & { idempotencyKey?: string } = {}): Promise<{ accepted: number, rejected: Array<{ line: number, error: { code: string, message: string, column?: string } }>, rejectedNotShown: number }> {
    const type = format === 'csv' ? 'text/csv' : 'application/x-ndjson'
    return await this.request('POST', `/v1/tables/${enc(table)}/import${qs(options)}`, { raw: body, contentType: type, signal: options.signal, timeout: 0, ...(options.idempotencyKey === undefined ? {} : { idempotencyKey: options.idempotencyKey }) })
  }

  /**
   * Streams an export (`GET /v1/export`): resolves, once the daemon has
   * accepted it, to `tables` (what it holds, in order) and `body`, the NDJSON
   * stream of `{"table","row"}` lines; a refusal rejects as any request does.
   * A body cut off mid-way (the daemon failed or went away) emits an error.
   */
  async export (options: RequestOptions & { tables?: string[], anonymize?: boolean } = {}): Promise<{ tables: string[], body: IncomingMessage }> {
    const params = [
      ...(options.tables ?? []).map(t => `table=${enc(t)}`),
      ...(options.anonymize === true ? ['anonymize=true'] : []),
      ...(options.consistency === undefined ? [] : [`consistency=${enc(options.consistency)}`])
    ]
    const path = `/v1/export${params.length === 0 ? '' : `?${params.join('&')}`}`
    const headers = this.headers({ accept: 'application/x-ndjson' })
    return await new Promise((resolve, reject) => {
      const req = httpRequest({ socketPath: this.socket, agent: this.agent, method: 'GET', path, headers, ...(options.signal === undefined ? {} : { signal: options.signal }) }, res => {
        // The wait for the answer is bounded; reading the body is paced by the reader.
        req.setTimeout(0)
        if ((res.statusCode ?? 500) >= 400) {
          readError(res).then(reject, reject)
          return
        }
        const tables = String(res.headers['x-export-tables'] ?? '').split(',').filter(t => t !== '')
        resolve({ tables, body: res })
      })
      this.armTimeout(req, this.timeout)
      req.on('error', err => { reject(this.connectError(err)) })
      req.end()
    })
  }

  /** Runs one SQL statement (see README, Queries and SQL): `$1`-style parameters are bound by the daemon */
  async sql (sql: string, params: unknown[] = [], options: ReadOptions & { cursor?: string } = {}): Promise<{ columns: string[], rows: unknown[][], next: string | null }> {
    const { cursor, ...rest } = options
    return await this.request('POST', `/v1/sql${qs(rest)}`, { body: { sql, params, ...(cursor === undefined ? {} : { cursor }) }, signal: options.signal, breakGlass: options.breakGlass })
  }

  /**
   * Rebuilds a table's index entries on this node (admin), calling
   * `progress` as rows are done; answers what was added and removed.
   */
  async reindex (table: string, progress: (done: number, total: number) => void = () => {}): Promise<{ rows: number, added: number, removed: number }> {
    const headers = this.headers({ accept: 'application/x-ndjson' })
    return await new Promise((resolve, reject) => {
      const req = httpRequest({ socketPath: this.socket, agent: this.agent, method: 'POST', path: `/v1/tables/${enc(table)}/reindex`, headers }, res => {
        req.setTimeout(0)
        if ((res.statusCode ?? 500) >= 400) {
          readError(res).then(reject, reject)
          return
        }
        let buffered = ''
        let result: { rows: number, added: number, removed: number } | undefined
        let failure: Error | undefined
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => {
          buffered += chunk
          let nl: number
          while ((nl = buffered.indexOf('\n')) >= 0) {
            const line = buffered.slice(0, nl)
            buffered = buffered.slice(nl + 1)
            let msg: any
            try { msg = JSON.parse(line) } catch { failure = new NtsoekheError('INTERNAL', 'The daemon sent a reindex line that is not JSON'); continue }
            if (msg.error !== undefined) failure = errorFromJSON(msg.error)
            else if (typeof msg.rows === 'number') result = msg
            else if (typeof msg.done === 'number') progress(msg.done, msg.total)
          }
        })
        res.on('error', reject)
        res.on('end', () => {
          if (failure !== undefined) reject(failure)
          else if (result === undefined) reject(new NtsoekheError('INTERNAL', 'The reindex answer ended early'))
          else resolve(result)
        })
      })
      this.armTimeout(req, this.timeout)
      req.on('error', err => { reject(this.connectError(err)) })
      req.end()
    })
  }


  /**
   * Streams a backup of the whole network (`GET /v1/backup`, admins): resolves,
   * once the daemon has accepted it, to the node reading it, the records it
   * expects (for a progress bar) and `body`, the NDJSON record lines. A body
   * cut off mid-way emits an error.
   */
  async backup (options: { signal?: AbortSignal } = {}): Promise<{ node: string, estimate: number, body: IncomingMessage }> {
    const headers = this.headers({ accept: 'application/x-ndjson' })
    return await new Promise((resolve, reject) => {
      const req = httpRequest({ socketPath: this.socket, agent: this.agent, method: 'GET', path: '/v1/backup', headers, ...(options.signal === undefined ? {} : { signal: options.signal }) }, res => {
        req.setTimeout(0)
        if ((res.statusCode ?? 500) >= 400) {
          readError(res).then(reject, reject)
          return
        }
        resolve({ node: String(res.headers['x-backup-node'] ?? ''), estimate: Number(res.headers['x-backup-estimate'] ?? 0) || 0, body: res })
      })
      this.armTimeout(req, this.timeout)
      req.on('error', err => { reject(this.connectError(err)) })
      req.end()
    })
  }

  /** Writes a backup's record lines into the network (`POST /v1/restore`, admins): each record on all of its owners */
  async restore (body: Readable | string, options: { signal?: AbortSignal } = {}): Promise<{ records: number, versions: number, changed: number, seconds: number }> {
    return await this.request('POST', '/v1/restore', { raw: body, contentType: 'application/x-ndjson', signal: options.signal, timeout: 0 })
  }

  /** One HTTP request over the socket; an error body becomes a thrown NtsoekheError */
  async request<T = any> (method: string, path: string, opts: { body?: unknown, raw?: Readable | string, contentType?: string, ifMatch?: string[] | undefined, signal?: AbortSignal | undefined, timeout?: number, breakGlass?: string | undefined, idempotencyKey?: string } = {}): Promise<T> {
    const headers = this.headers({ accept: 'application/json' })
    if (opts.idempotencyKey !== undefined) headers['idempotency-key'] = opts.idempotencyKey
    // Percent-encoded: any reason survives an HTTP header, and the daemon decodes it.
    if (opts.breakGlass !== undefined) headers['x-break-glass'] = encodeURIComponent(opts.breakGlass)
    let payload: Uint8Array | undefined
    if (opts.body !== undefined) {
      payload = fromString(JSON.stringify(opts.body), 'utf8')
      headers['content-type'] = 'application/json'
      headers['content-length'] = String(payload.byteLength)
    }
    if (opts.raw !== undefined) headers['content-type'] = opts.contentType ?? 'application/octet-stream'
    if (opts.ifMatch !== undefined && opts.ifMatch.length > 0) headers['if-match'] = opts.ifMatch.map(v => `"${v}"`).join(', ')
    const timeout = opts.timeout ?? this.timeout
    return await new Promise<T>((resolve, reject) => {
      const req = httpRequest({ socketPath: this.socket, agent: this.agent, method, path, headers, ...(opts.signal === undefined ? {} : { signal: opts.signal }) }, res => {
        const chunks: Uint8Array[] = []
        res.on('data', (c: Uint8Array) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () => {
          const text = toString(concat(chunks), 'utf8')
          let json: any
          try {
            json = text === '' ? {} : JSON.parse(text)
          } catch {
            reject(new NtsoekheError('INTERNAL', `The daemon answered ${res.statusCode ?? '?'} with a body that is not JSON`))
            return
          }
          if ((res.statusCode ?? 500) >= 400) {
            reject(errorFromJSON(json?.error ?? { code: 'INTERNAL', message: `HTTP ${res.statusCode ?? '?'}` }))
          } else {
            resolve(json as T)
          }
        })
      })
      this.armTimeout(req, timeout)
      req.on('error', err => { reject(this.connectError(err)) })
      if (opts.raw !== undefined) {
        if (typeof opts.raw === 'string') req.end(opts.raw)
        else opts.raw.pipe(req)
      } else {
        req.end(payload)
      }
    })
  }

  private headers (base: Record<string, string>): Record<string, string> {
    return this.token === undefined ? base : { ...base, authorization: `Bearer ${this.token}` }
  }

  private armTimeout (req: ClientRequest, timeout: number): void {
    if (timeout > 0) {
      req.setTimeout(timeout, () => { req.destroy(new NtsoekheError('TIMEOUT', `No answer from the daemon within ${timeout} ms`)) })
    }
  }

  private connectError (err: NodeJS.ErrnoException): Error {
    return err.code === 'ENOENT' || err.code === 'ECONNREFUSED' || err.code === 'ENOTSOCK' ? new NoDaemonError(this.socket, err) : err
  }
}

/** The NtsoekheError an error answer carries */
async function readError (res: IncomingMessage): Promise<NtsoekheError> {
  const chunks: Uint8Array[] = []
  for await (const c of res) chunks.push(c as Uint8Array)
  try {
    const json = JSON.parse(toString(concat(chunks), 'utf8'))
    return errorFromJSON(json?.error ?? { code: 'INTERNAL', message: `HTTP ${res.statusCode ?? '?'}` })
  } catch {
    return new NtsoekheError('INTERNAL', `The daemon answered ${res.statusCode ?? '?'} with a body that is not JSON`)
  }
}

/** A write that may or may not have taken effect: worth sending again with its key */
function outcomeUnknown (err: unknown): boolean {
  if (!(err instanceof NtsoekheError) || err instanceof NoDaemonError) return false
  return err.code === 'TIMEOUT' || (err.code === 'UNAVAILABLE' && err.outcome !== undefined)
}

function enc (s: string): string {
  return encodeURIComponent(s)
}

function qs (params: object): string {
  const parts: string[] = []
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === false || k === 'signal' || k === 'ifMatch' || k === 'breakGlass' || k === 'idempotencyKey') continue
    parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
  }
  return parts.length === 0 ? '' : `?${parts.join('&')}`
}
