import { mkdir, open, readdir, readFile, rename, rm, rmdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fromString, toString } from 'uint8arrays'
import { ValidationError } from '../errors/index.js'
import type { WholeRecord } from '../storage/store.js'
import { BackupDamagedError, BackupKeyError, chunkName, deriveKey, keyCheck, mac, macMatches, newSalt, openChunk, sealChunk, sha256 } from './chunk.js'
import { BACKUP_FORMAT, BACKUP_FORMAT_VERSION, checkManifest, macText, MANIFEST_FILE, type ChunkEntry, type Manifest, type TableCounts } from './manifest.js'
import { isLive, parseBackupRecord, versionSpan, type PageSummary } from './record.js'

/** NDJSON bytes per chunk before compression. @default 8 MiB */
export const CHUNK_TEXT_BYTES = 8 * 1024 * 1024

export interface BackupWriterInit {
  dir: string
  /** The node that reads the network's data, for the manifest */
  node: string
  /** The key file's bytes: the chunks are encrypted under a key derived from them */
  keyFile?: Uint8Array
  /** See CHUNK_TEXT_BYTES */
  chunkTextBytes?: number
}

/**
 * Writes a backup directory: record lines go into chunks as they come (one
 * chunk compressed while the next fills), and `manifest.json` is written last
 * (through a temporary file and a rename), so a directory without one is a
 * backup that did not finish. Files are 0600, the directory 0700.
 */
export class BackupWriter {
  private readonly dir: string
  private readonly key?: Uint8Array
  private readonly salt?: Uint8Array
  private readonly chunkTextBytes: number
  private readonly manifest: Manifest
  private text: string[] = []
  private textBytes = 0
  private pending: { records: number, versions: number } = { records: 0, versions: 0 }
  private writing: Promise<void> = Promise.resolve()
  private readonly written: string[] = []
  private from = Infinity
  private to = -Infinity
  private createdDir = false

  private constructor (init: BackupWriterInit) {
    this.dir = init.dir
    this.chunkTextBytes = init.chunkTextBytes ?? CHUNK_TEXT_BYTES
    if (init.keyFile !== undefined) {
      this.salt = newSalt()
      this.key = deriveKey(init.keyFile, this.salt)
    }
    const now = new Date().toISOString()
    this.manifest = {
      format: BACKUP_FORMAT,
      version: BACKUP_FORMAT_VERSION,
      startedAt: now,
      finishedAt: now,
      node: init.node,
      compression: 'gzip',
      encryption: this.key === undefined || this.salt === undefined ? null : { algorithm: 'AES-256-GCM', kdf: 'HKDF-SHA256', salt: toString(this.salt, 'base16'), keyCheck: keyCheck(this.key) },
      records: 0,
      rows: 0,
      versions: 0,
      bytes: 0,
      tables: {},
      span: { from: null, to: null },
      chunks: []
    }
  }

  /** A writer on a new (or empty) directory; a directory with anything in it is refused (a ValidationError) */
  static async create (init: BackupWriterInit): Promise<BackupWriter> {
    const writer = new BackupWriter(init)
    try {
      await mkdir(init.dir, { mode: 0o700 })
      writer.createdDir = true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new ValidationError(`cannot create ${init.dir}: ${(err as Error).message}`, { cause: err })
      const entries = await readdir(init.dir).catch(e => { throw new ValidationError(`${init.dir} is not a directory: ${(e as Error).message}`) })
      if (entries.length > 0) throw new ValidationError(`${init.dir} is not empty; a backup goes into a new or empty directory`)
    }
    return writer
  }

  /**
   * Adds a page of record lines (BackupRecords as JSON, without newlines)
   * and what they hold; a page goes whole into one chunk
   */
  async addPage (summary: PageSummary, lines: readonly string[]): Promise<void> {
    if (lines.length !== summary.records) throw new ValidationError(`a page of ${lines.length} records says it holds ${summary.records}`)
    const m = this.manifest
    for (const [name, c] of Object.entries(summary.tables)) {
      const t = m.tables[name] ?? (m.tables[name] = { records: 0, rows: 0, versions: 0 })
      t.records += c.records
      t.rows += c.rows
      t.versions += c.versions
    }
    m.records += summary.records
    m.rows += summary.rows
    m.versions += summary.versions
    if (summary.from !== null && summary.from < this.from) this.from = summary.from
    if (summary.to !== null && summary.to > this.to) this.to = summary.to
    this.pending.records += summary.records
    this.pending.versions += summary.versions
    for (const line of lines) {
      this.text.push(line)
      this.textBytes += line.length + 1
    }
    if (this.textBytes >= this.chunkTextBytes) await this.cut()
  }

  /** Counts so far */
  get counts (): { records: number, versions: number, bytes: number } {
    return { records: this.manifest.records, versions: this.manifest.versions, bytes: this.manifest.bytes }
  }

  /** Starts writing the lines gathered as one chunk, once the chunk before is on disk */
  private async cut (): Promise<void> {
    if (this.text.length === 0) return
    const text = this.text.join('\n') + '\n'
    const counts = this.pending
    this.text = []
    this.textBytes = 0
    this.pending = { records: 0, versions: 0 }
    const file = chunkName(this.manifest.chunks.length + 1, this.key !== undefined)
    const entry: ChunkEntry = { file, records: counts.records, versions: counts.versions, bytes: 0, sha256: '' }
    this.manifest.chunks.push(entry)
    const before = this.writing
    const sealing = sealChunk(text, file, this.key)
    sealing.catch(() => {})
    this.writing = (async () => {
      await before
      const bytes = await sealing
      entry.bytes = bytes.length
      entry.sha256 = sha256(bytes)
      this.written.push(file)
      await writeDurably(join(this.dir, file), bytes)
      this.manifest.bytes += bytes.length
    })()
    // One chunk in flight while the next fills: wait for the one before it.
    await before
  }

  /** Writes the last chunk and the manifest; the backup is complete */
  async finish (): Promise<Manifest> {
    await this.cut()
    await this.writing
    const m = this.manifest
    m.finishedAt = new Date().toISOString()
    m.tables = Object.fromEntries(Object.entries(m.tables).sort((a, b) => a[0] < b[0] ? -1 : 1))
    m.span = Number.isFinite(this.from) ? { from: new Date(this.from).toISOString(), to: new Date(this.to).toISOString() } : { from: null, to: null }
    if (this.key !== undefined) m.mac = mac(this.key, macText(m))
    const tmp = join(this.dir, `${MANIFEST_FILE}.tmp`)
    this.written.push(`${MANIFEST_FILE}.tmp`)
    await writeDurably(tmp, fromString(JSON.stringify(m, null, 2) + '\n', 'utf8'))
    await rename(tmp, join(this.dir, MANIFEST_FILE))
    await syncDir(this.dir)
    return m
  }

  /** Removes what was written: a backup cut short is not left looking like part of one */
  async discard (): Promise<void> {
    await this.writing.catch(() => {})
    for (const f of this.written) await rm(join(this.dir, f), { force: true })
    if (this.createdDir) await rmdir(this.dir).catch(() => {})
  }
}

/** Writes a new file (never over one) with mode 0600 and syncs it before it counts as written */
export async function writeDurably (path: string, bytes: Uint8Array): Promise<void> {
  const fh = await open(path, 'wx', 0o600)
  try {
    await fh.writeFile(bytes)
    await fh.sync()
  } finally {
    await fh.close()
  }
}

async function syncDir (dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** A backup's manifest, checked, and its key when it is encrypted */
export interface OpenedBackup {
  dir: string
  manifest: Manifest
  key?: Uint8Array
}

/**
 * Reads and checks `manifest.json`, and derives the key of an encrypted
 * backup from the key file: a wrong key, or none for an encrypted backup, is
 * a BackupKeyError; a damaged manifest a BackupDamagedError.
 */
export async function openBackup (dir: string, keyFile?: Uint8Array): Promise<OpenedBackup> {
  let text: string
  try {
    text = await readFile(join(dir, MANIFEST_FILE), 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new BackupDamagedError(MANIFEST_FILE, code === 'ENOENT' ? `missing: ${dir} holds no finished backup` : (err as Error).message, { cause: err })
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new BackupDamagedError(MANIFEST_FILE, `not JSON (${(err as Error).message})`, { cause: err })
  }
  const manifest = checkManifest(parsed)
  if (manifest.encryption === null) {
    if (keyFile !== undefined) throw new BackupKeyError('unexpected', 'this backup is not encrypted: give no --key for it')
    return { dir, manifest }
  }
  if (keyFile === undefined) throw new BackupKeyError('missing', 'this backup is encrypted: give its key file with --key <file>')
  const key = deriveKey(keyFile, fromString(manifest.encryption.salt, 'base16'))
  if (keyCheck(key) !== manifest.encryption.keyCheck) throw new BackupKeyError('wrong', 'wrong key: this backup was encrypted with another key file')
  if (!macMatches(key, macText(manifest), manifest.mac as string)) throw new BackupDamagedError(MANIFEST_FILE, 'does not authenticate under the key (altered)')
  return { dir, manifest, key }
}

/** One chunk's text, read and checked against the manifest (size, checksum, decryption, decompression) */
export async function readChunk (backup: OpenedBackup, entry: ChunkEntry): Promise<string> {
  let bytes: Buffer
  try {
    bytes = await readFile(join(backup.dir, entry.file))
  } catch (err) {
    throw new BackupDamagedError(entry.file, (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : (err as Error).message, { cause: err })
  }
  if (bytes.length !== entry.bytes) throw new BackupDamagedError(entry.file, `${bytes.length < entry.bytes ? 'truncated' : 'too long'}: ${bytes.length} bytes where the manifest says ${entry.bytes}`)
  if (sha256(bytes) !== entry.sha256) throw new BackupDamagedError(entry.file, 'checksum mismatch (the file was changed or damaged)')
  return await openChunk(bytes, entry.file, backup.key)
}

/**
 * Refuses a file in the backup directory that its manifest does not list:
 * a chunk left out of the list (or one of another backup copied in) would
 * otherwise be skipped unseen. The first such file is named.
 */
async function checkNoStrayFiles (backup: OpenedBackup): Promise<void> {
  const listed = new Set([MANIFEST_FILE, ...backup.manifest.chunks.map(c => c.file)])
  const entries = await readdir(backup.dir)
  const stray = entries.filter(name => !listed.has(name)).sort()[0]
  if (stray !== undefined) throw new BackupDamagedError(stray, `not part of this backup (${MANIFEST_FILE} does not list it): move it out of ${backup.dir}`)
}

/** The record lines of a chunk's text, checked against the chunk's counts */
export function chunkLines (text: string, entry: ChunkEntry): string[] {
  if (text.length > 0 && !text.endsWith('\n')) throw new BackupDamagedError(entry.file, 'its last line is cut off')
  const lines = text === '' ? [] : text.slice(0, -1).split('\n')
  if (lines.length !== entry.records) throw new BackupDamagedError(entry.file, `${lines.length} records where the manifest says ${entry.records}`)
  return lines
}

export interface VerifyReport {
  dir: string
  encrypted: boolean
  chunks: number
  tables: Record<string, TableCounts>
  records: number
  rows: number
  versions: number
  bytes: number
  span: Manifest['span']
}

/**
 * Checks a whole backup without restoring it: the manifest, then every
 * chunk (present, its size and checksum, decryption, decompression) and
 * every record in it (checked as a restore would check it), and the counts
 * against the manifest's. The first problem found is a BackupDamagedError
 * naming its chunk.
 */
export async function verifyBackup (backup: OpenedBackup, onChunk?: (done: number, total: number) => void): Promise<VerifyReport> {
  const { manifest } = backup
  await checkNoStrayFiles(backup)
  const tables: Record<string, TableCounts> = {}
  let from = Infinity
  let to = -Infinity
  let done = 0
  for (const entry of manifest.chunks) {
    const lines = chunkLines(await readChunk(backup, entry), entry)
    let versions = 0
    for (const [i, line] of lines.entries()) {
      let record: WholeRecord
      try {
        record = parseBackupRecord(JSON.parse(line))
      } catch (err) {
        throw new BackupDamagedError(entry.file, `record ${i + 1}: ${(err as Error).message}`, { cause: err })
      }
      const t = tables[record.state.table] ?? (tables[record.state.table] = { records: 0, rows: 0, versions: 0 })
      t.records++
      t.versions += record.versions.length
      if (isLive(record)) t.rows++
      versions += record.versions.length
      const span = versionSpan(record.versions)
      if (span.from < from) from = span.from
      if (span.to > to) to = span.to
    }
    if (versions !== entry.versions) throw new BackupDamagedError(entry.file, `${versions} versions where the manifest says ${entry.versions}`)
    onChunk?.(++done, manifest.chunks.length)
  }
  for (const name of new Set([...Object.keys(tables), ...Object.keys(manifest.tables)])) {
    const a = tables[name]
    const b = manifest.tables[name]
    if (a?.records !== b?.records || a?.rows !== b?.rows || a?.versions !== b?.versions) {
      throw new BackupDamagedError(MANIFEST_FILE, `its counts for table ${name} do not match the chunks`)
    }
  }
  // The span is what --as-of is checked against: it must be the versions' own.
  const span = Number.isFinite(from) ? { from: new Date(from).toISOString(), to: new Date(to).toISOString() } : { from: null, to: null }
  if (span.from !== manifest.span.from || span.to !== manifest.span.to) {
    throw new BackupDamagedError(MANIFEST_FILE, `its span (${String(manifest.span.from)} to ${String(manifest.span.to)}) is not the versions' (${String(span.from)} to ${String(span.to)})`)
  }
  return {
    dir: backup.dir,
    encrypted: manifest.encryption !== null,
    chunks: manifest.chunks.length,
    tables: Object.fromEntries(Object.entries(tables).sort((a, b) => a[0] < b[0] ? -1 : 1)),
    records: manifest.records,
    rows: manifest.rows,
    versions: manifest.versions,
    bytes: manifest.bytes,
    span: manifest.span
  }
}
