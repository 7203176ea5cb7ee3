/**
 * The two plain-HTTP listeners a daemon may open besides its socket, each
 * only when asked for and only on the host:port given:
 *
 * - `--metrics-listen <host:port>`: `GET /metrics` (Prometheus text) and
 *   nothing else, without a token (a scraper has none; metrics carry no
 *   patient data). A non-loopback address is allowed, with a warning.
 * - `--console <host:port>`: the web console (console/ in the package) and
 *   `GET /api/v1/...`, a read-only window onto a few socket routes. Each data
 *   request is handed to the socket API itself (`inject`) with the caller's
 *   token, so the same authentication, rights and audit apply: the console
 *   shows nothing its user's role may not read. It serves patient rows over
 *   plain HTTP, so a non-loopback address is refused unless
 *   `monitoring.consoleRemote` (`--console-remote`) says otherwise.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { readFile } from 'node:fs/promises'
import type { FastifyInstance } from 'fastify'
import { NtsoekheError, ValidationError } from '../errors/index.js'
import type { NodeMetrics } from './metrics.js'
import { isLoopback, type HostPort } from './address.js'

/** How a listener was configured: its flag and config key, named in errors */
export interface ListenerNames { flag: string, key: string }

/** Listens on exactly host:port; a port in use is a one-line error naming the flag and config key that change it */
async function listen (server: Server, at: HostPort, names: ListenerNames): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      server.off('listening', onListening)
      const where = `${at.host}:${at.port}`
      if (err.code === 'EADDRINUSE') reject(new NtsoekheError('UNAVAILABLE', `port ${at.port} (${where}, ${names.flag} / ${names.key}) is already in use: choose another with ${names.flag} <host:port> or ${names.key} in config.json`))
      else if (err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') reject(new ValidationError(`${names.flag} ${where}: no such address on this machine (${names.key})`))
      else if (err.code === 'EACCES') reject(new NtsoekheError('UNAVAILABLE', `${names.flag} ${where}: not allowed to listen on port ${at.port} (${names.key}); ports below 1024 need privileges`))
      else reject(err)
    }
    const onListening = (): void => { server.off('error', onError); resolve() }
    server.once('error', onError)
    server.once('listening', onListening)
    server.listen(at.port, at.host)
  })
}

async function close (server: Server): Promise<void> {
  server.closeAllConnections()
  await new Promise<void>(resolve => { server.close(() => { resolve() }) })
}

/** A running listener */
export interface HttpListener {
  /** `http://host:port` as bound */
  url: string
  close: () => Promise<void>
}

function urlOf (at: HostPort): string {
  return `http://${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}`
}

/** What a listener answers while the node behind it is still starting */
const STARTING = 'The node is still starting: try again in a moment'

/**
 * Starts the `--metrics-listen` listener: `GET /metrics`, nothing else.
 * It is bound first thing in a start, so a port in use stops the start
 * before the node joins a network; `metrics` gives undefined until the node
 * has them, and a scrape meanwhile gets 503.
 */
export async function startMetricsServer (at: HostPort, metrics: () => NodeMetrics | undefined): Promise<HttpListener> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (path !== '/metrics') { plain(res, 404, 'Not found: this listener serves GET /metrics only\n'); return }
    if (req.method !== 'GET' && req.method !== 'HEAD') { plain(res, 405, 'Only GET\n', { allow: 'GET, HEAD' }); return }
    const m = metrics()
    if (m === undefined) { plain(res, 503, `${STARTING}\n`, { 'retry-after': '1' }); return }
    m.text().then(text => {
      res.writeHead(200, { 'content-type': m.contentType, 'cache-control': 'no-store' })
      res.end(req.method === 'HEAD' ? undefined : text)
    }, (err: unknown) => { plain(res, 500, `metrics failed: ${(err as Error).message}\n`) })
  })
  await listen(server, at, { flag: '--metrics-listen', key: 'monitoring.metricsListen' })
  return { url: urlOf(at), close: async () => { await close(server) } }
}

/** Socket routes the console may read: GET only, and only these */
const CONSOLE_ROUTES = [/^\/v1\/(status|peers|ring|tables|metrics\/series)$/, /^\/v1\/tables\/[a-z_][a-z0-9_]{0,62}\/rows$/]
/** Query parameters passed on to the socket (the first rows of a table: `limit`) */
const CONSOLE_QUERY = ['limit']
/** Rows the console's table view asks for at most */
export const CONSOLE_MAX_ROWS = 100

/** What the page is made of, read from the package's console/ directory */
const ASSETS: Record<string, { file: string, type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/console.js': { file: 'console.js', type: 'text/javascript; charset=utf-8' },
  '/console.css': { file: 'console.css', type: 'text/css; charset=utf-8' }
}

/** Scripts, styles and data from this origin only: no CDN, no inline script, no framing */
const PAGE_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cache-control': 'no-store'
}

/**
 * Starts the `--console` listener over `api` (the socket's own fastify
 * instance). Bound first thing in a start, as the metrics listener is:
 * `api` gives undefined until the socket API serves, and the console's
 * data requests get 503 meanwhile.
 */
export async function startConsoleServer (at: HostPort, api: () => FastifyInstance | undefined): Promise<HttpListener> {
  const assets = new Map<string, { body: Buffer, type: string }>()
  const dir = new URL('../../console/', import.meta.url)
  for (const [path, a] of Object.entries(ASSETS)) assets.set(path, { body: await readFile(new URL(a.file, dir)), type: a.type })

  const loopback = isLoopback(at.host)
  const server = createServer((req, res) => {
    // A page of another site whose name was pointed at 127.0.0.1 (DNS rebinding) names its own host: refused.
    if (loopback && !loopbackHost(req.headers.host)) {
      plain(res, 421, 'The console answers to localhost, 127.0.0.1 and [::1] only\n')
      return
    }
    serveConsole(req, res, api, assets).catch((err: unknown) => { plain(res, 500, `console failed: ${(err as Error).message}\n`) })
  })
  await listen(server, at, { flag: '--console', key: 'monitoring.console' })
  return { url: urlOf(at), close: async () => { await close(server) } }
}

async function serveConsole (req: IncomingMessage, res: ServerResponse, serving: () => FastifyInstance | undefined, assets: Map<string, { body: Buffer, type: string }>): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://console.invalid')
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    // Read-only: nothing the console serves changes anything.
    plain(res, 405, 'The console is read-only: GET only\n', { allow: 'GET, HEAD' })
    return
  }
  const asset = assets.get(url.pathname === '/index.html' ? '/' : url.pathname)
  if (asset !== undefined) {
    res.writeHead(200, { ...PAGE_HEADERS, 'content-type': asset.type, 'content-length': asset.body.length })
    res.end(req.method === 'HEAD' ? undefined : asset.body)
    return
  }
  if (!url.pathname.startsWith('/api/')) { plain(res, 404, 'Not found\n'); return }
  const path = url.pathname.slice('/api'.length)
  if (!CONSOLE_ROUTES.some(r => r.test(path))) {
    json(res, 404, { error: { code: 'NOT_FOUND', message: `The console does not serve ${path}` } })
    return
  }
  const api = serving()
  if (api === undefined) {
    json(res, 503, { error: { code: 'UNAVAILABLE', message: STARTING } })
    return
  }
  const query = new URLSearchParams()
  for (const k of CONSOLE_QUERY) {
    const v = url.searchParams.get(k)
    if (v !== null) query.set(k, v)
  }
  const authorization = req.headers.authorization
  // The socket API answers as it would on the socket: 401 without a valid token, 403 past the role's rights.
  const answer = await api.inject({
    method: 'GET',
    url: path + (query.size > 0 ? `?${query.toString()}` : ''),
    headers: authorization === undefined ? {} : { authorization }
  })
  res.writeHead(answer.statusCode, { ...PAGE_HEADERS, 'content-type': String(answer.headers['content-type'] ?? 'application/json; charset=utf-8') })
  res.end(req.method === 'HEAD' ? undefined : answer.rawPayload)
}

/** Whether a Host header names this machine by a loopback name or address (any port: an SSH tunnel may forward another) */
function loopbackHost (host: string | undefined): boolean {
  if (host === undefined) return false
  const name = host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.replace(/:\d+$/, '')
  return isLoopback(name.toLowerCase())
}

function plain (res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  if (res.headersSent) { res.destroy(); return }
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'x-content-type-options': 'nosniff', ...headers })
  res.end(text)
}

function json (res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { ...PAGE_HEADERS, 'content-type': 'application/json; charset=utf-8' })
  res.end(JSON.stringify(body))
}
