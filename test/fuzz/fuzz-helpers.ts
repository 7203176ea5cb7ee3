/**
 * What the fuzz suites share: raw HTTP over a daemon's socket (no client
 * checks in the way), RSS sampling from /proc, a bounded-concurrency runner,
 * and the schema check of every stored row.
 */
import { readFileSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { connect } from 'node:net'
import { TABLES, validateRow } from '../../src/schema/index.js'

export interface RawRequest {
  method: string
  path: string
  headers?: Record<string, string>
  body?: string | Buffer
  /** What the generator meant to send: printed when the answer is wrong */
  label: string
}

export interface RawResponse {
  status: number
  body: string
}

/** How long one request may take before it counts as a hang, ms */
const REQUEST_TIMEOUT = 20_000
/** Bytes of an answer kept: enough for any error body, bounded for huge lists */
const MAX_ANSWER = 4 * 1024 * 1024

/** Sends one request as-is; rejects on a socket error or a timeout (both are failures of the caller to judge) */
export async function rawRequest (socketPath: string, req: RawRequest, agent?: Agent): Promise<RawResponse> {
  return await new Promise((resolve, reject) => {
    // Always framed by a length: Node sends a DELETE's body unframed otherwise, which is a malformed request of the client's making.
    const headers = req.body === undefined ? req.headers : { ...req.headers, 'content-length': String(Buffer.byteLength(req.body)) }
    const r = request({ socketPath, path: req.path, method: req.method, headers, timeout: REQUEST_TIMEOUT, agent: agent ?? false }, res => {
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (c: Buffer) => { if (size < MAX_ANSWER) { chunks.push(c); size += c.length } })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }) })
      res.on('error', reject)
    })
    r.on('timeout', () => { r.destroy(new Error(`no answer within ${REQUEST_TIMEOUT} ms`)) })
    r.on('error', reject)
    // A daemon that refuses a huge body early may close the socket while it is still being written.
    r.end(req.body)
  })
}

/** Writes bytes that need not be HTTP on a connection of their own and reads what comes back until it closes (bounded in time) */
export async function sendRaw (socketPath: string, bytes: Uint8Array, ms = 5_000): Promise<void> {
  await new Promise<void>(resolve => {
    const s = connect(socketPath)
    const timer = setTimeout(() => { s.destroy() }, ms)
    s.on('error', () => {})
    s.on('close', () => { clearTimeout(timer); resolve() })
    s.on('data', () => {})
    s.end(bytes)
  })
}

/** A daemon process's resident set, MB (VmRSS in /proc/<pid>/status) */
export function rssMb (pid: number): number {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (m === null) throw new Error(`no VmRSS for process ${pid}`)
  return Math.round(Number(m[1]) / 1024)
}

/** Samples the RSS of `pids` every `everyMs` until stopped; `max()` is the largest seen per pid */
export function rssSampler (pids: number[], everyMs = 200): { max: () => number, stop: () => void } {
  let max = 0
  const sample = (): void => {
    for (const pid of pids) {
      try { max = Math.max(max, rssMb(pid)) } catch { /* the process is gone: the liveness check says so */ }
    }
  }
  sample()
  const timer = setInterval(sample, everyMs)
  return { max: () => { sample(); return max }, stop: () => { clearInterval(timer) } }
}

/** Runs `fn` over `items` with at most `limit` at once */
export async function runBounded<T> (items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      await fn(items[i] as T, i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}

/** Adds one to `counts[key]` */
export function bump (counts: Record<string, number>, key: string | number): void {
  counts[key] = (counts[key] ?? 0) + 1
}

/**
 * Reads every table through the API as `token` (an admin) and checks each
 * row against the schema; returns how many rows were read and the ones that
 * break it.
 */
export async function rowsBreakingSchema (socketPath: string, token: string): Promise<{ rows: number, broken: Array<{ table: string, row: unknown, error: string }> }> {
  const broken: Array<{ table: string, row: unknown, error: string }> = []
  let rows = 0
  const agent = new Agent({ keepAlive: true, maxSockets: 1 })
  try {
    for (const table of TABLES) {
      let cursor: string | undefined
      // Bounded: 1000 pages of 1000 rows is far more than any fuzz run writes.
      for (let page = 0; page < 1000; page++) {
        const path = `/v1/tables/${table.name}/rows?limit=1000${cursor === undefined ? '' : `&cursor=${encodeURIComponent(cursor)}`}`
        const res = await rawRequest(socketPath, { method: 'GET', path, headers: { authorization: `Bearer ${token}` }, label: 'list' }, agent)
        if (res.status !== 200) throw new Error(`listing ${table.name} answered ${res.status}: ${res.body.slice(0, 300)}`)
        const body = JSON.parse(res.body) as { rows: unknown[], next?: string | null }
        for (const row of body.rows) {
          rows++
          try {
            validateRow(table, row, 'full')
          } catch (err) {
            broken.push({ table: table.name, row, error: (err as Error).message })
          }
        }
        if (body.next === undefined || body.next === null) break
        cursor = body.next
      }
    }
  } finally {
    agent.destroy()
  }
  return { rows, broken }
}

/** `{a: 1, b: 2}` as `{a: 1, b: 2}` sorted by key, for one printed line */
export function sorted (counts: Record<string, number>): string {
  return `{${Object.keys(counts).sort().map(k => `${k}: ${counts[k]}`).join(', ')}}`
}
