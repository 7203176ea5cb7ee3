import { BackupDamagedError } from './chunk.js'

/** The manifest's file name in a backup directory */
export const MANIFEST_FILE = 'manifest.json'
export const BACKUP_FORMAT = 'ntsoekhe-backup'
export const BACKUP_FORMAT_VERSION = 1

/** What the manifest says of one table */
export interface TableCounts {
  /** Records of the table, deleted ones (tombstones, kept with their history) included */
  records: number
  /** Of those, live rows */
  rows: number
  /** Versions of those records */
  versions: number
}

export interface ChunkEntry {
  file: string
  records: number
  versions: number
  /** The file's size, bytes */
  bytes: number
  /** SHA-256 of the file's bytes, hex */
  sha256: string
}

/**
 * `manifest.json`: what a backup holds and how to check it. Written last, so
 * a directory without one is no backup. For an encrypted backup, `mac` is an
 * HMAC-SHA256 under the backup's key over the manifest without it.
 */
export interface Manifest {
  format: typeof BACKUP_FORMAT
  version: typeof BACKUP_FORMAT_VERSION
  /** When the backup started and finished (ISO 8601, UTC) */
  startedAt: string
  finishedAt: string
  /** The node that read the network's data */
  node: string
  compression: 'gzip'
  encryption: null | { algorithm: 'AES-256-GCM', kdf: 'HKDF-SHA256', salt: string, keyCheck: string }
  records: number
  rows: number
  versions: number
  /** Bytes of every chunk */
  bytes: number
  tables: Record<string, TableCounts>
  /** The time span the versions cover: the oldest and the newest version's time (null in an empty backup) */
  span: { from: string | null, to: string | null }
  chunks: ChunkEntry[]
  mac?: string
}

const CHUNK_FILE_RE = /^chunk-\d{6}\.ndjson\.gz(\.enc)?$/
const HEX64_RE = /^[0-9a-f]{64}$/

/** The manifest text that a MAC covers: the manifest without its `mac` */
export function macText (manifest: Manifest): string {
  const { mac: _, ...rest } = manifest
  return JSON.stringify(rest)
}

/** Checks a parsed manifest's shape; anything wrong is a BackupDamagedError naming manifest.json */
export function checkManifest (value: unknown): Manifest {
  const m = value as Partial<Manifest> | null
  const bad = (problem: string): never => { throw new BackupDamagedError(MANIFEST_FILE, problem) }
  if (m === null || typeof m !== 'object' || Array.isArray(m)) bad('not a JSON object')
  const ok = m as Partial<Manifest>
  if (ok.format !== BACKUP_FORMAT) bad(`not an ntsoekhe backup manifest (format ${JSON.stringify(ok.format)})`)
  if (ok.version !== BACKUP_FORMAT_VERSION) bad(`backup format version ${String(ok.version)}; this version reads ${BACKUP_FORMAT_VERSION}`)
  if (ok.compression !== 'gzip') bad('unknown compression')
  const enc = ok.encryption
  if (enc !== null && (typeof enc !== 'object' || enc === undefined || enc.algorithm !== 'AES-256-GCM' || enc.kdf !== 'HKDF-SHA256' ||
    typeof enc.salt !== 'string' || !/^[0-9a-f]{32}$/.test(enc.salt) || typeof enc.keyCheck !== 'string' || !/^[0-9a-f]{32}$/.test(enc.keyCheck))) bad('malformed encryption')
  for (const k of ['records', 'rows', 'versions', 'bytes'] as const) if (!isCount(ok[k])) bad(`malformed ${k}`)
  if (!isTime(ok.startedAt) || !isTime(ok.finishedAt) || ok.startedAt > ok.finishedAt) bad('malformed startedAt or finishedAt (ISO 8601 times in UTC, the start first)')
  if (typeof ok.node !== 'string') bad('malformed node')
  if (ok.tables === null || typeof ok.tables !== 'object' || Array.isArray(ok.tables)) bad('malformed tables')
  const sum = { records: 0, rows: 0, versions: 0 }
  for (const t of Object.values(ok.tables as object) as TableCounts[]) {
    if (t === null || typeof t !== 'object' || !isCount(t.records) || !isCount(t.rows) || !isCount(t.versions) || t.rows > t.records) bad('malformed table counts')
    sum.records += t.records
    sum.rows += t.rows
    sum.versions += t.versions
  }
  if (sum.records !== ok.records || sum.rows !== ok.rows || sum.versions !== ok.versions) bad('the tables\' counts do not add up to the totals')
  const span = ok.span
  if (span === null || typeof span !== 'object' || !((span.from === null && span.to === null) || (isTime(span.from) && isTime(span.to) && span.from <= span.to))) {
    bad('malformed span (from and to: ISO 8601 times in UTC, from first, or both null)')
  }
  if (!Array.isArray(ok.chunks)) bad('malformed chunks')
  const files = new Set<string>()
  for (const c of ok.chunks as ChunkEntry[]) {
    if (c === null || typeof c !== 'object' || typeof c.file !== 'string' || !CHUNK_FILE_RE.test(c.file) || files.has(c.file) ||
      !isCount(c.records) || !isCount(c.versions) || !isCount(c.bytes) || typeof c.sha256 !== 'string' || !HEX64_RE.test(c.sha256)) bad('malformed chunk list')
    if (c.file.endsWith('.enc') !== (enc !== null)) bad(`${c.file}: its name does not match the backup's encryption`)
    files.add(c.file)
  }
  const chunks = ok.chunks as ChunkEntry[]
  if (chunks.reduce((n, c) => n + c.records, 0) !== ok.records || chunks.reduce((n, c) => n + c.versions, 0) !== ok.versions) bad('chunk counts do not add up to the totals')
  if (chunks.reduce((n, c) => n + c.bytes, 0) !== ok.bytes) bad('chunk sizes do not add up to its bytes')
  if (ok.mac !== undefined && (typeof ok.mac !== 'string' || !HEX64_RE.test(ok.mac))) bad('malformed mac')
  if (enc !== null && ok.mac === undefined) bad('an encrypted backup without its mac')
  return ok as Manifest
}

/** A time as the writer writes it (Date#toISOString): compared as text, such times sort as instants */
function isTime (t: unknown): t is string {
  return typeof t === 'string' && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/.test(t) && !Number.isNaN(Date.parse(t)) && new Date(t).toISOString() === t
}

function isCount (n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0
}
