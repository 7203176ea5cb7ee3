import { readFile, stat } from 'node:fs/promises'
import { Readable } from 'node:stream'
import { StringDecoder } from 'node:string_decoder'
import type { NtsoekheClient } from '../client/index.js'
import { NtsoekheError, ValidationError } from '../errors/index.js'
import { BackupWriter, chunkLines, openBackup, readChunk, verifyBackup, type OpenedBackup, type VerifyReport } from '../backup/backup-dir.js'
import { BackupDamagedError, BackupKeyError, MIN_KEY_FILE_BYTES } from '../backup/chunk.js'
import type { TableCounts } from '../backup/manifest.js'
import { checkPageSummary, isLive, parseBackupRecord, recordAsOf, toBackupRecord, type PageSummary } from '../backup/record.js'
import type { Io } from './index.js'
import { UsageError } from './usage.js'

export interface BackupFlags {
  key?: string
  json?: boolean
  verify?: boolean
}

export interface RestoreFlags {
  key?: string
  json?: boolean
  asOf?: string
}

/** `backup --json`: what was written */
export interface BackupSummary {
  dir: string
  tables: Record<string, TableCounts>
  records: number
  rows: number
  versions: number
  chunks: number
  bytes: number
  encrypted: boolean
  span: { from: string | null, to: string | null }
  seconds: number
}

/** `restore --json`: what was sent, and what changed */
export interface RestoreSummary {
  dir: string
  asOf: string | null
  records: number
  rows: number
  versions: number
  changed: number
  seconds: number
}

const CLEAR_WARNING = 'warning: this backup is not encrypted: its chunks hold every patient record in the clear. Give --key <file> to encrypt them (AES-256-GCM)\n'

/**
 * `ntsoekhe backup <dir>`: reads every record of the network through the
 * daemon and writes chunks and a manifest into `dir` (new or empty), with a
 * progress bar on stderr. A backup cut off is removed, not left half-made.
 */
export async function runBackup (api: NtsoekheClient, dir: string, flags: BackupFlags, io: Io): Promise<BackupSummary> {
  const started = Date.now()
  const keyFile = flags.key === undefined ? undefined : await readKeyFile(flags.key)
  let writer: BackupWriter | undefined
  // Ctrl-C (or a service manager's SIGTERM) stops the stream and removes what was written, as any cut-off does.
  const interrupt = new AbortController()
  const stopListening = onInterrupt(signal => {
    interrupt.abort(new NtsoekheError('UNAVAILABLE', `The backup was interrupted (${signal}): what it had written in ${dir} is removed`))
  })
  try {
    const status = await api.status()
    writer = await BackupWriter.create({ dir, node: String(status.peerId ?? ''), ...(keyFile === undefined ? {} : { keyFile }) }).catch(err => {
      throw err instanceof ValidationError ? new UsageError(err.message) : err
    })
    // Once a backup is under way: a refused command writes nothing, so it has nothing to warn of.
    if (keyFile === undefined) io.stderr.write(CLEAR_WARNING)
    const { estimate, body } = await api.backup({ signal: interrupt.signal })
    const progress = await bar(io, 'backing up', estimate, 'records')
    try {
      const decoder = new StringDecoder('utf8')
      let rest = ''
      let page: { summary: PageSummary, lines: string[] } | undefined
      for await (const chunk of body) {
        const text = rest + decoder.write(chunk as Buffer)
        const lines = text.split('\n')
        rest = lines.pop() as string
        for (const line of lines) {
          if (page === undefined) {
            page = { summary: checkPageSummary((JSON.parse(line) as { page?: unknown }).page), lines: [] }
          } else {
            page.lines.push(line)
          }
          if (page.lines.length === page.summary.records) {
            await writer.addPage(page.summary, page.lines)
            page = undefined
          }
        }
        progress.update(writer.counts.records)
      }
      rest += decoder.end()
      if (rest !== '' || page !== undefined) throw new NtsoekheError('UNAVAILABLE', 'the backup stream ended in the middle of a page')
      progress.done(writer.counts.records)
    } catch (err) {
      body.destroy()
      throw err instanceof NtsoekheError ? err : new NtsoekheError('UNAVAILABLE', `The backup was cut off: ${(err as Error).message}`, { cause: err })
    } finally {
      progress.stop()
    }
    interrupt.signal.throwIfAborted()
    const m = await writer.finish()
    return { dir, tables: m.tables, records: m.records, rows: m.rows, versions: m.versions, chunks: m.chunks.length, bytes: m.bytes, encrypted: m.encryption !== null, span: m.span, seconds: seconds(started) }
  } catch (err) {
    await writer?.discard()
    throw interrupt.signal.aborted ? interrupt.signal.reason : err
  } finally {
    stopListening()
  }
}

/**
 * Calls `fn` on the first SIGINT or SIGTERM instead of Node's default (dying
 * at once, the files written so far left behind); a second Ctrl-C kills as
 * usual. The function returned stops listening.
 */
function onInterrupt (fn: (signal: NodeJS.Signals) => void): () => void {
  const stop = (): void => {
    process.off('SIGINT', handler)
    process.off('SIGTERM', handler)
  }
  const handler = (signal: NodeJS.Signals): void => {
    stop()
    fn(signal)
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
  return stop
}

/** `backup --verify --json` of a damaged backup: the file at fault and what is wrong with it */
export interface BrokenReport {
  ok: false
  dir: string
  broken: { file: string, problem: string }
}

/** The report of a damaged backup, for an error that says one is (undefined for any other) */
export function brokenReport (dir: string, err: unknown): BrokenReport | undefined {
  return err instanceof BackupDamagedError ? { ok: false, dir, broken: { file: err.chunk, problem: err.problem } } : undefined
}

/** `ntsoekhe backup --verify <dir>`: checks every chunk and record without restoring anything */
export async function runVerify (dir: string, flags: BackupFlags, io: Io): Promise<VerifyReport> {
  const backup = await open(dir, flags.key)
  const progress = await bar(io, 'verifying', backup.manifest.chunks.length, 'chunks')
  try {
    return await verifyBackup(backup, done => { progress.update(done) })
  } finally {
    progress.stop()
  }
}

/** Tables every network holds from its first start (its roles and first admin): not data a restore could meet */
const MADE_AT_START = new Set(['users', 'user_roles'])

/**
 * A restore as of a time merges: into a network that holds rows already, a
 * record changed since that time stays at its later versions (a merge never
 * goes back). Said before anything is sent, as PostgreSQL and CockroachDB
 * restore a point in time only into a new cluster or database.
 */
async function warnIfHoldingRows (api: NtsoekheClient, io: Io): Promise<void> {
  const status = await api.status()
  const tables = (status.networkRows as { tables?: Record<string, number> } | undefined)?.tables ?? {}
  const rows = Object.entries(tables).filter(([t]) => !MADE_AT_START.has(t)).reduce((n, [, c]) => n + (Number(c) || 0), 0)
  if (rows > 0) {
    io.stderr.write(`warning: this network holds ${rows} rows already: records changed after --as-of stay at their later versions (a restore merges, it never goes back); restore into a new network to see the data as it was then\n`)
  }
}

/**
 * `ntsoekhe restore <dir>`: checks the whole backup first (nothing is sent
 * while any chunk is damaged), then streams its records to the daemon,
 * which writes each on all of its owners. With `--as-of`, each record as it
 * was at that time (its versions up to then), and those that did not exist
 * yet are left out.
 */
export async function runRestore (api: NtsoekheClient, dir: string, flags: RestoreFlags, io: Io): Promise<RestoreSummary> {
  const started = Date.now()
  const asOf = flags.asOf === undefined ? undefined : parseTime(flags.asOf)
  const backup = await open(dir, flags.key)
  const { manifest } = backup
  if (asOf !== undefined && manifest.span.from !== null && asOf < Date.parse(manifest.span.from)) {
    // Nothing existed yet then: most likely a mistyped time, and restoring nothing would look like success.
    throw new UsageError(`--as-of ${new Date(asOf).toISOString()} is before the oldest version in the backup: it covers ${manifest.span.from} to ${String(manifest.span.to)}`)
  }
  const checking = await bar(io, 'verifying', manifest.chunks.length, 'chunks')
  try {
    await verifyBackup(backup, done => { checking.update(done) })
  } finally {
    checking.stop()
  }
  if (asOf !== undefined) await warnIfHoldingRows(api, io)
  let rows = asOf === undefined ? manifest.rows : 0
  const progress = await bar(io, 'restoring', manifest.records, 'records')
  let seen = 0
  const lines = async function * (): AsyncGenerator<string> {
    for (const entry of manifest.chunks) {
      // Read (and checked) again: a chunk changed since the check is refused, not sent.
      const chunk = chunkLines(await readChunk(backup, entry), entry)
      if (asOf === undefined) {
        seen += chunk.length
        progress.update(seen)
        if (chunk.length > 0) yield chunk.join('\n') + '\n'
        continue
      }
      let out = ''
      for (const line of chunk) {
        seen++
        const whole = parseBackupRecord(JSON.parse(line))
        const record = recordAsOf(whole, asOf)
        if (record === undefined) continue
        if (isLive(record)) rows++
        out += (record === whole ? line : JSON.stringify(toBackupRecord(record))) + '\n'
      }
      progress.update(seen)
      if (out !== '') yield out
    }
  }
  try {
    const result = await api.restore(Readable.from(lines(), { objectMode: false }))
    return { dir, asOf: asOf === undefined ? null : new Date(asOf).toISOString(), records: result.records, rows, versions: result.versions, changed: result.changed, seconds: seconds(started) }
  } finally {
    progress.stop()
  }
}

/**
 * Opens a backup, telling a problem of the command line (exit 2: no such
 * directory, a key missing or not wanted) from a wrong key or a damaged
 * backup (exit 1)
 */
async function open (dir: string, key: string | undefined): Promise<OpenedBackup> {
  const info = await stat(dir).catch((err: NodeJS.ErrnoException) => {
    throw new UsageError(err.code === 'ENOENT' ? `no such directory: ${dir}` : `cannot read ${dir}: ${err.message}`)
  })
  if (!info.isDirectory()) throw new UsageError(`${dir} is not a directory: a backup is a directory (the one ntsoekhe backup wrote)`)
  const keyFile = key === undefined ? undefined : await readKeyFile(key)
  try {
    return await openBackup(dir, keyFile)
  } catch (err) {
    if (err instanceof BackupKeyError && err.reason !== 'wrong') throw new UsageError(err.message)
    throw err
  }
}

async function readKeyFile (path: string): Promise<Uint8Array> {
  let bytes: Buffer
  try {
    bytes = await readFile(path)
  } catch (err) {
    throw new UsageError(`cannot read the key file ${path}: ${(err as Error).message}`)
  }
  if (bytes.length < MIN_KEY_FILE_BYTES) throw new UsageError(`the key file ${path} holds ${bytes.length} bytes; a backup key holds at least ${MIN_KEY_FILE_BYTES} (make one with: head -c 32 /dev/urandom > ${path})`)
  return bytes
}

const TIME_RE = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(?:Z|[+-](\d{2}):?(\d{2}))$/i

/**
 * `--as-of`: an ISO 8601 time with its zone (`2026-12-02T10:00:00Z`,
 * `…+02:00`), or ms since the epoch. A date that is not in the calendar
 * (`2026-02-30`) is refused: Date.parse would roll it into the next month.
 */
export function parseTime (text: string): number {
  if (/^\d{1,15}$/.test(text)) return Number(text)
  const m = TIME_RE.exec(text)
  if (m === null) {
    throw new UsageError(`--as-of takes an ISO 8601 time with its zone (2026-12-02T10:00:00Z or 2026-12-02T12:00:00+02:00), got ${JSON.stringify(text)}`)
  }
  const [year, month, day, hour, minute, second, zoneHours, zoneMinutes] = m.slice(1).map(p => p === undefined ? 0 : Number(p)) as [number, number, number, number, number, number, number, number]
  const days = new Date(Date.UTC(year, month, 0)).getUTCDate()
  const ms = Date.parse(text.replace(' ', 'T'))
  if (month < 1 || month > 12 || day < 1 || day > days || hour > 23 || minute > 59 || second > 59 || zoneHours > 23 || zoneMinutes > 59 || Number.isNaN(ms)) {
    throw new UsageError(`--as-of: ${JSON.stringify(text)} is not a valid time`)
  }
  return ms
}

function seconds (started: number): number {
  return Math.round(Date.now() - started) / 1000
}

/** A bar on stderr (a terminal only) */
async function bar (io: Io, what: string, total: number, unit: string): Promise<{ update: (n: number) => void, done: (n: number) => void, stop: () => void }> {
  if (io.stderr.isTTY !== true) return { update: () => {}, done: () => {}, stop: () => {} }
  const { SingleBar, Presets } = await import('cli-progress')
  const b = new SingleBar({ format: `${what} [{bar}] {percentage}% | {value}/{total} ${unit}`, stream: io.stderr as NodeJS.WritableStream }, Presets.shades_classic)
  b.start(Math.max(total, 1), 0)
  let stopped = false
  return {
    update: n => { if (n > total) b.setTotal(n); b.update(n) },
    // The total was an estimate (row counts): a finished run ends at 100% of what it did.
    done: n => { b.setTotal(Math.max(n, 1)); b.update(n) },
    stop: () => { if (!stopped) { stopped = true; b.stop() } }
  }
}
