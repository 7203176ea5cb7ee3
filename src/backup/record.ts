import { InvalidMessageError } from '../errors/index.js'
import { checkEntry, checkState, MAX_ENTRIES, MAX_KNOWN_VERSIONS } from '../cluster/messages.js'
import type { Row } from '../schema/index.js'
import type { RecordState, VersionEntry, WholeRecord } from '../storage/store.js'
import { winner } from '../storage/store.js'
import { compareVersions, parseVersion } from '../storage/version.js'

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
  if (!Array.isArray(x.versions) || x.versions.length === 0 || x.versions.length > MAX_ENTRIES) bad(`a record has 1 to ${MAX_ENTRIES} versions`)
  if (!Array.isArray(x.heads) || !Array.isArray(x.seen) || !Array.isArray(x.superseded) || x.seen.length > MAX_KNOWN_VERSIONS || x.superseded.length > MAX_KNOWN_VERSIONS) bad('malformed record state')
  const versions = x.versions.map(v => checkEntry({ ...(v as object), table: x.table, id: x.id, token: x.token }))
  const byVersion = new Map(versions.map(v => [v.version, v]))
  if (byVersion.size !== versions.length) bad(`${String(x.table)} ${String(x.id)}: a version listed twice`)
  for (let i = 1; i < versions.length; i++) {
    if (compareVersions((versions[i - 1] as VersionEntry).version, (versions[i] as VersionEntry).version) >= 0) bad(`${String(x.table)} ${String(x.id)}: versions out of order`)
  }
  const heads = x.heads.map(h => {
    const entry = typeof h === 'string' ? byVersion.get(h) : undefined
    if (entry === undefined) bad(`${String(x.table)} ${String(x.id)}: a head that is not among its versions`)
    return entry
  })
  const state = checkState({ heads, seen: x.seen, superseded: x.superseded })
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
