import { InvalidMessageError } from '../errors/index.js'
import { checkEntry, MAX_KNOWN_VERSIONS, MAX_PARENTS } from '../cluster/messages.js'
import type { Row } from '../schema/index.js'
import type { RecordState, VersionEntry, WholeRecord } from '../storage/store.js'
import { winner } from '../storage/store.js'
import { compareVersions, isVersion, parseVersion } from '../storage/version.js'

/**
 * One record as a backup holds it, one NDJSON line: its place, its state
 * (which versions are heads, which it has seen and knows replaced) and every
 * version it has had, oldest first, rows in the clear. The same line goes
 * from the daemon to the CLI, into a chunk, and back to a daemon on restore.
 */
export interface BackupRecord {
  table: string
  id: string
  token: string
  /** The head versions, newest first (more than one is a conflict) */
  heads: string[]
  seen: string[]
  superseded: string[]
  versions: Array<{ version: string, parents: string[], row: Row | null, writeId?: string }>
}

/** Versions one record of a backup may have: ten times a peer message's (a row updated for years), and its line under the restore route's 64 MiB */
export const MAX_RECORD_VERSIONS = 100_000

/** A record whole, as a line of a backup */
export function toBackupRecord ({ state, versions }: WholeRecord): BackupRecord {
  return {
    table: state.table,
    id: state.id,
    token: state.token,
    heads: state.heads.map(h => h.version),
    seen: state.seen,
    superseded: state.superseded,
    versions: versions.map(v => ({ version: v.version, parents: v.parents, row: v.row, ...(v.writeId === undefined ? {} : { writeId: v.writeId }) }))
  }
}

/**
 * A backup line checked as a peer's message is (every version's row against
 * the schema, its key and token; the state's lists against its heads) and
 * turned back into a whole record. Anything else is an InvalidMessageError.
 */
export function parseBackupRecord (value: unknown): WholeRecord {
  const x = value as Partial<BackupRecord> | null
  if (x === null || typeof x !== 'object' || Array.isArray(x)) bad('a record must be an object')
  if (!Array.isArray(x.versions) || x.versions.length === 0 || x.versions.length > MAX_RECORD_VERSIONS) bad(`a record has 1 to ${MAX_RECORD_VERSIONS} versions`)
  if (!Array.isArray(x.heads) || !Array.isArray(x.seen) || !Array.isArray(x.superseded) || x.seen.length > MAX_KNOWN_VERSIONS || x.superseded.length > MAX_KNOWN_VERSIONS) bad('malformed record state')
  const versions = x.versions.map(v => checkEntry({ ...(v as object), table: x.table, id: x.id, token: x.token }))
  const byVersion = new Map(versions.map(v => [v.version, v]))
  if (byVersion.size !== versions.length) bad(`${String(x.table)} ${String(x.id)}: a version listed twice`)
  for (let i = 1; i < versions.length; i++) {
    if (compareVersions((versions[i - 1] as VersionEntry).version, (versions[i] as VersionEntry).version) >= 0) bad(`${String(x.table)} ${String(x.id)}: versions out of order`)
  }
  const what = `${String(x.table)} ${String(x.id)}`
  if (x.heads.length === 0 || x.heads.length > MAX_PARENTS) bad(`${what}: 1 to ${MAX_PARENTS} heads`)
  const heads = x.heads.map(h => {
    const entry = typeof h === 'string' ? byVersion.get(h) : undefined
    if (entry === undefined) bad(`${what}: a head that is not among its versions`)
    return entry
  })
  // The checks of checkState, on versions already checked one by one above.
  if (!x.seen.every(isVersion) || !x.superseded.every(isVersion)) bad(`${what}: malformed version lists`)
  const seen = new Set(x.seen)
  if (!heads.every(h => seen.has(h.version))) bad(`${what}: a head missing from the seen list`)
  const headSet = new Set(x.heads)
  const superseded = new Set(x.superseded)
  if (!x.seen.every(v => headSet.has(v) || superseded.has(v))) bad(`${what}: a seen version that is neither a head nor replaced`)
  const first = versions[0] as VersionEntry
  const state: RecordState = { table: first.table, id: first.id, token: first.token, heads: heads.sort((a, b) => compareVersions(b.version, a.version)), seen: x.seen, superseded: x.superseded }
  return { state, versions }
}

/**
 * The record as it was at `time` (ms since the epoch): only the versions
 * written at or before it (a version's hybrid clock carries its wall time),
 * with the heads they make; undefined when the record did not exist yet.
 * A version replaced later is a head again; one deleted later lives again.
 */
export function recordAsOf (record: WholeRecord, time: number): WholeRecord | undefined {
  const versions = record.versions.filter(v => (parseVersion(v.version)?.wall ?? Infinity) <= time)
  if (versions.length === 0) return undefined
  if (versions.length === record.versions.length) return record
  const superseded = new Set(versions.flatMap(v => v.parents))
  const heads = versions.filter(v => !superseded.has(v.version)).sort((a, b) => compareVersions(b.version, a.version))
  const state: RecordState = {
    table: record.state.table,
    id: record.state.id,
    token: record.state.token,
    heads,
    seen: versions.map(v => v.version),
    superseded: [...superseded]
  }
  return { state, versions }
}

/** Whether the record is a live row (its winning head is not a delete) */
export function isLive (record: WholeRecord): boolean {
  return (winner(record.state)?.row ?? null) !== null
}

/** The wall-clock span of versions, ms since the epoch (Infinity to -Infinity for none) */
export function versionSpan (versions: ReadonlyArray<{ version: string }>): { from: number, to: number } {
  let from = Infinity
  let to = -Infinity
  for (const v of versions) {
    const wall = parseVersion(v.version)?.wall
    if (wall === undefined) continue
    if (wall < from) from = wall
    if (wall > to) to = wall
  }
  return { from, to }
}

function bad (message: string): never {
  throw new InvalidMessageError(`backup record: ${message}`)
}

/**
 * What a page of records holds, counted where the records are objects
 * already (the daemon), so the CLI writing them does not parse each line
 * again: records, live rows and versions, per table and in all, and the
 * time span of their versions (ms since the epoch, null for none).
 */
export interface PageSummary {
  records: number
  rows: number
  versions: number
  tables: Record<string, { records: number, rows: number, versions: number }>
  from: number | null
  to: number | null
}

export function pageSummary (records: readonly WholeRecord[]): PageSummary {
  const out: PageSummary = { records: 0, rows: 0, versions: 0, tables: {}, from: null, to: null }
  for (const r of records) {
    const live = isLive(r) ? 1 : 0
    const t = out.tables[r.state.table] ?? (out.tables[r.state.table] = { records: 0, rows: 0, versions: 0 })
    t.records++
    t.rows += live
    t.versions += r.versions.length
    out.records++
    out.rows += live
    out.versions += r.versions.length
    const span = versionSpan(r.versions)
    if (Number.isFinite(span.from) && (out.from === null || span.from < out.from)) out.from = span.from
    if (Number.isFinite(span.to) && (out.to === null || span.to > out.to)) out.to = span.to
  }
  return out
}

/** A page summary a daemon sent, checked */
export function checkPageSummary (value: unknown): PageSummary {
  const p = value as PageSummary | null
  const count = (n: unknown): boolean => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0
  const time = (n: unknown): boolean => n === null || (typeof n === 'number' && Number.isSafeInteger(n))
  if (p === null || typeof p !== 'object' || !count(p.records) || !count(p.rows) || !count(p.versions) || !time(p.from) || !time(p.to) ||
    p.tables === null || typeof p.tables !== 'object' || !Object.values(p.tables).every(t => t !== null && typeof t === 'object' && count(t.records) && count(t.rows) && count(t.versions))) {
    throw new InvalidMessageError('backup: malformed page summary')
  }
  return p
}
