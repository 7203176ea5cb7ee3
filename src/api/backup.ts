import { Readable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { NtsoekheError, ValidationError } from '../errors/index.js'
import { pageSummary, parseBackupRecord, toBackupRecord } from '../backup/record.js'
import type { WholeRecord } from '../storage/store.js'
import { splitLines } from './import.js'
import { ROUTE_SCHEMAS } from './schemas.js'

/**
 * `GET /v1/backup` streams every record of the network once, with its whole
 * history, as NDJSON: pages, each a `{"page": PageSummary}` line followed by
 * its records, one BackupRecord a line (rows in the clear); `POST
 * /v1/restore` takes such lines and writes each record on all of its owners.
 * Both are for admins (they declare no right) and audited. The CLI makes
 * the chunks, the manifest and the encryption (src/backup/).
 */
export const BACKUP_ROUTE = '/v1/backup'
export const RESTORE_ROUTE = '/v1/restore'
/** Headers of a backup's answer: the node reading it, and the records it expects (for a progress bar) */
export const BACKUP_NODE_HEADER = 'x-backup-node'
export const BACKUP_ESTIMATE_HEADER = 'x-backup-estimate'
/** Records written to their owners at once */
export const RESTORE_BATCH = 2000
/** Longest restore line: one record with every version it has had */
export const MAX_RESTORE_LINE_BYTES = 64 * 1024 * 1024

/** What the routes use: the node's BackupService */
export interface BackupSource {
  readonly node: string
  /** Refuses a backup that cannot read every range now (a range with no live owner) */
  checkReadable: () => void
  records: (signal?: AbortSignal) => AsyncGenerator<WholeRecord[]>
  estimate: () => Promise<number>
  checkOwnersUp: () => void
  restore: (records: WholeRecord[]) => Promise<{ changed: number }>
}

export interface RestoreResult {
  records: number
  versions: number
  /** Records that changed something on some owner (0 when the network held all of it already) */
  changed: number
  seconds: number
}

export function backupRoutes (app: FastifyInstance, backup: BackupSource): void {
  app.get(BACKUP_ROUTE, { schema: ROUTE_SCHEMAS.backup }, async (req, reply) => {
    req.accessNote = { action: 'backup', reason: 'backup of every table, with history' }
    // Before the answer starts: once it has, a refusal can only cut the stream off.
    backup.checkReadable()
    const estimate = await backup.estimate()
    const abort = new AbortController()
    req.raw.once('close', () => { abort.abort() })
    void reply.type('application/x-ndjson').header(BACKUP_NODE_HEADER, backup.node).header(BACKUP_ESTIMATE_HEADER, String(estimate))
    return Readable.from(backupLines(backup, abort.signal, err => {
      const note = req.accessNote
      if (note !== undefined) note.reason = `${note.reason ?? 'backup'}; cut off: ${err instanceof NtsoekheError ? err.code : 'INTERNAL'}`
      req.log.warn({ err }, 'backup cut off')
    }), { objectMode: false })
  })

  app.post(RESTORE_ROUTE, { schema: ROUTE_SCHEMAS.restore }, async req => {
    req.accessNote = { action: 'restore', reason: 'restore of a backup' }
    const type = (String(req.headers['content-type'] ?? '').split(';')[0] ?? '').trim().toLowerCase()
    if (type !== 'application/x-ndjson' && type !== 'application/ndjson') {
      (req.body as { resume?: () => void } | undefined)?.resume?.()
      throw new NtsoekheError('UNSUPPORTED_MEDIA_TYPE', 'A restore takes application/x-ndjson: the record lines of a backup')
    }
    backup.checkOwnersUp()
    const started = Date.now()
    const result: RestoreResult = { records: 0, versions: 0, changed: 0, seconds: 0 }
    let batch: WholeRecord[] = []
    // One batch is written while the next is read and checked.
    let writing: Promise<void> = Promise.resolve()
    const flush = async (): Promise<void> => {
      await writing
      if (batch.length === 0) return
      const taken = batch
      batch = []
      writing = backup.restore(taken).then(({ changed }) => { result.changed += changed })
      writing.catch(() => {})
    }
    for await (const line of splitLines(req.body as NodeJS.ReadableStream, MAX_RESTORE_LINE_BYTES)) {
      if (line.text === undefined) throw new ValidationError(`line ${line.n}: longer than ${MAX_RESTORE_LINE_BYTES} bytes`)
      if (line.text.trim() === '') continue
      let record: WholeRecord
      try {
        record = parseBackupRecord(JSON.parse(line.text))
      } catch (err) {
        throw new ValidationError(`line ${line.n}: ${(err as Error).message}`, { cause: err })
      }
      batch.push(record)
      result.records++
      result.versions += record.versions.length
      if (batch.length >= RESTORE_BATCH) await flush()
    }
    await flush()
    await writing
    result.seconds = (Date.now() - started) / 1000
    req.accessNote.reason = `restore of a backup: ${result.records} records, ${result.changed} changed`
    return result
  })
}

async function * backupLines (backup: BackupSource, signal: AbortSignal, onCutOff: (err: unknown) => void): AsyncGenerator<string> {
  try {
    for await (const page of backup.records(signal)) {
      // Each page is led by what it holds: the CLI counts without parsing every line again.
      let chunk = JSON.stringify({ page: pageSummary(page) }) + '\n'
      for (const r of page) chunk += JSON.stringify(toBackupRecord(r)) + '\n'
      yield chunk
    }
  } catch (err) {
    onCutOff(err)
    throw err
  }
}
