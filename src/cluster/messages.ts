import { checkCondition } from '../schema/condition.js'
import type { RowPage, RowQuery } from '../storage/ordered.js'
import { checkFragment, type Fragment } from '../query/fragment.js'
import { InvalidMessageError } from '../errors/index.js'
import { findTable, rowId, shardValue, validateRow, type Row } from '../schema/index.js'
import type { RecordState, VersionEntry, WholeRecord } from '../storage/store.js'
import { isVersion } from '../storage/version.js'
import { AUDIT_ID_RE, auditRowProblem, auditShard, type AuditRow } from '../security/audit-entry.js'
import { CONSISTENCY_LEVELS, type Consistency, type Mutation } from './coordinator.js'
import { tokenOf } from './token.js'

/** Internal table of key locators (row key -> shard); see query/database.ts */
export const LOCATOR_TABLE = '_locator'
/** Internal table of unique-value claims (`<table>.<column>.<hash of value>` -> the row holding it); see query/database.ts */
export const UNIQUE_TABLE = '_unique'
/**
 * Internal table of audit entries (`<peer id>.<seq>` -> the entry); see
 * security/audit.ts. Placed by the row (the patient's shard, else the
 * writing node's), never by the id; written once, never replaced or deleted.
 */
export const AUDIT_TABLE = '_audit'

/** Bounds on what one peer message may carry */
export const MAX_ENTRIES = 10_000
export const MAX_PARENTS = 64
export const MAX_SCAN_LIMIT = 1000
/** Record states in one hand-off or repair message */
export const MAX_STATES = 1000
/** Token ranges one `count` message may name (a member's share of the ring's ranges, with those of silent members it stands in for; more go in several messages) */
export const MAX_COUNT_RANGES = 4096
/** Versions a record state may list as seen or replaced */
export const MAX_KNOWN_VERSIONS = 1_000_000

export type ReplicaMessage =
  /** Live rows per table in these `[from, to)` token ranges (HashRing.ranges), counted by the asker's ring */
  | { type: 'count', ranges: Array<[string, string]> }
  | { type: 'write', mutations: Mutation[], consistency?: Consistency, retry?: boolean }
  | { type: 'writeGroups', groups: Mutation[][], consistency?: Consistency }
  | { type: 'apply', groups: VersionEntry[][] }
  | { type: 'merge', states: RecordState[] }
  /** Whole records (hand-off, anti-entropy): each record's versions and state, taken in one batch */
  | { type: 'records', records: WholeRecord[] }
  /** Which of these records the replica holds whole (see Store.holds): asked before sending them */
  | { type: 'holds', records: HoldsQuery[] }
  | { type: 'read', table: string, id: string, token: string }
  /** A record's head versions only (a quorum read's check that a copy matches the reader's own) */
  | { type: 'heads', table: string, id: string, token: string }
  | { type: 'history', table: string, id: string, token: string }
  | { type: 'scan', table: string, where: Record<string, string | number | null>, after?: string, token?: string, limit: number }
  | ({ type: 'query', table: string } & RowQuery)
  | { type: 'fragment', fragment: Fragment, tokenRanges: Array<[string, string]> }
  | { type: 'purge', table: string, id: string, token: string, version: string }

const TOKEN_RE = /^[0-9a-f]{16}$/
const ID_RE = /^-?\d+(:-?\d+)*$/
const LOCATOR_ID_RE = /^[a-z_]{1,40}\.-?\d+(:-?\d+)*$/
const UNIQUE_ID_RE = /^[a-z_]{1,40}\.[a-z_]{1,40}\.[0-9a-f]{32}$/

/** The shard-key value that places an internal record, by table */
export function internalShard (table: string, id: string): string | undefined {
  if (table === LOCATOR_TABLE) return `key:${id}`
  if (table === UNIQUE_TABLE) return `unique:${id}`
  return undefined
}

function bad (message: string): never {
  throw new InvalidMessageError(`replica: ${message}`)
}

function checkTable (table: unknown): string {
  if (typeof table !== 'string') bad('table must be a string')
  if (table !== LOCATOR_TABLE && table !== UNIQUE_TABLE && table !== AUDIT_TABLE && findTable(table) === undefined) bad(`unknown table ${table.slice(0, 64)}`)
  return table
}

/** A record a `holds` question names, with the versions it lists */
export interface HoldsQuery { table: string, token: string, id: string, seen: string[], superseded: string[], versions: string[] }

/** Version ids one `holds` question may list in all */
const MAX_HOLDS_VERSIONS = 200_000

function checkHoldsQuery (r: unknown): HoldsQuery {
  const x = r as Record<string, unknown> | null
  if (x === null || typeof x !== 'object') bad('malformed holds record')
  const table = checkTable(x.table)
  const id = checkId(table, x.id)
  if (typeof x.token !== 'string' || !TOKEN_RE.test(x.token)) bad('malformed token')
  const list = (v: unknown): string[] => {
    if (!Array.isArray(v) || !v.every(isVersion)) bad('malformed version list')
    return v
  }
  return { table, token: x.token, id, seen: list(x.seen), superseded: list(x.superseded), versions: list(x.versions) }
}

/** A record sent whole: its state, and versions (its history) all of that record */
function checkWholeRecord (r: unknown, fail: (message: string) => never): WholeRecord {
  const x = r as { state?: unknown, versions?: unknown } | null
  if (x === null || typeof x !== 'object' || !Array.isArray(x.versions) || x.versions.length > MAX_ENTRIES) fail('malformed whole record')
  const state = checkState(x.state)
  const versions = (x.versions as unknown[]).map(checkEntry)
  if (!versions.every(v => v.table === state.table && v.id === state.id && v.token === state.token)) fail('versions of another record')
  return { state, versions }
}

function checkId (table: string, id: unknown): string {
  if (typeof id !== 'string' || id.length > 200) bad('id must be a short string')
  if (!(table === LOCATOR_TABLE ? LOCATOR_ID_RE : table === UNIQUE_TABLE ? UNIQUE_ID_RE : table === AUDIT_TABLE ? AUDIT_ID_RE : ID_RE).test(id)) bad(`malformed id for ${table}`)
  return id
}

/** The stored form of a row as a peer sent it: validated against the schema, key and shard checked */
function checkRow (table: string, id: string, row: unknown): { row: Row, shard: string } {
  if (table === LOCATOR_TABLE) {
    const r = row as { shard?: unknown }
    if (r === null || typeof r !== 'object' || typeof r.shard !== 'string' || r.shard.length > 200 || Object.keys(r).length !== 1) bad('malformed locator row')
    return { row: { shard: r.shard }, shard: internalShard(table, id) as string }
  }
  if (table === UNIQUE_TABLE) {
    const r = row as { owner?: unknown }
    if (r === null || typeof r !== 'object' || typeof r.owner !== 'string' || !ID_RE.test(r.owner) || r.owner.length > 200 || Object.keys(r).length !== 1) bad('malformed unique-value claim')
    return { row: { owner: r.owner }, shard: internalShard(table, id) as string }
  }
  if (table === AUDIT_TABLE) {
    const problem = auditRowProblem(id, row)
    if (problem !== undefined) bad(problem)
    const r = row as AuditRow
    return { row: { ...r }, shard: auditShard(r) }
  }
  const def = findTable(table)
  if (def === undefined) bad(`unknown table ${table}`)
  let valid: Row
  try {
    // Kept as the member stored it: a version written before TIMESTAMPs were canonical still replicates unchanged.
    valid = validateRow(def, row, 'full', { stored: true })
  } catch (err) {
    throw new InvalidMessageError(`replica: invalid ${table} row: ${(err as Error).message}`, { cause: err })
  }
  if (rowId(def, valid) !== id) bad(`row key ${rowId(def, valid)} does not match id ${id}`)
  return { row: valid, shard: shardValue(def, valid) }
}

export function checkEntry (e: unknown): VersionEntry {
  const x = e as Record<string, unknown>
  if (x === null || typeof x !== 'object') bad('entry must be an object')
  const table = checkTable(x.table)
  const id = checkId(table, x.id)
  if (typeof x.token !== 'string' || !TOKEN_RE.test(x.token)) bad('malformed token')
  if (!isVersion(x.version)) bad('malformed version')
  if (!Array.isArray(x.parents) || x.parents.length > MAX_PARENTS || !x.parents.every(isVersion)) bad('malformed parents')
  if (table === AUDIT_TABLE && (x.row === null || x.parents.length > 0)) bad('an audit entry has one version and is never deleted')
  let row: Row | null = null
  if (x.row !== null) {
    const checked = checkRow(table, id, x.row)
    if (tokenOf(checked.shard) !== x.token) bad(`token does not match the row's shard key for ${table} ${id}`)
    row = checked.row
  }
  const internal = internalShard(table, id)
  if (internal !== undefined && tokenOf(internal) !== x.token) bad(`${table} token mismatch`)
  const entry: VersionEntry = { table, id, token: x.token, version: x.version, parents: x.parents as string[], row }
  if (x.writeId !== undefined) entry.writeId = checkWriteId(x.writeId)
  return entry
}

const WRITE_ID_RE = /^[0-9a-f]{16}$/

function checkWriteId (w: unknown): string {
  if (typeof w !== 'string' || !WRITE_ID_RE.test(w)) bad('malformed writeId')
  return w
}

export function checkMutation (m: unknown): Mutation {
  const x = m as Record<string, unknown>
  if (x === null || typeof x !== 'object') bad('mutation must be an object')
  if (x.op !== 'insert' && x.op !== 'put' && x.op !== 'delete') bad('unknown op')
  const table = checkTable(x.table)
  if (table === AUDIT_TABLE && x.op !== 'insert') bad('an audit entry is only ever inserted')
  const id = checkId(table, x.id)
  if (typeof x.shard !== 'string' || x.shard.length > 200) bad('malformed shard')
  const internal = internalShard(table, id)
  if (internal !== undefined && x.shard !== internal) bad(`shard ${x.shard.slice(0, 64)} is not the place of ${table} ${id}`)
  const out: Mutation = { op: x.op, table, id, shard: x.shard }
  if (x.op !== 'delete') {
    const checked = checkRow(table, id, x.row)
    if (checked.shard !== x.shard) bad(`shard ${x.shard} does not match the row`)
    out.row = checked.row
  }
  if (x.ifMatch !== undefined) {
    if (!Array.isArray(x.ifMatch) || x.ifMatch.length > MAX_PARENTS || !x.ifMatch.every(isVersion)) bad('malformed ifMatch')
    out.ifMatch = x.ifMatch as string[]
  }
  if (x.writeId !== undefined) out.writeId = checkWriteId(x.writeId)
  if (x.changed !== undefined) {
    const columns = findTable(table)?.columns.map(c => c.name) ?? []
    if (x.op !== 'put' || x.ifMatch !== undefined || !Array.isArray(x.changed) || x.changed.length === 0 || x.changed.length > columns.length ||
      !x.changed.every(c => typeof c === 'string' && columns.includes(c))) bad('changed names columns of a put without ifMatch')
    out.changed = x.changed as string[]
  }
  if (x.keyed !== undefined) {
    if (x.keyed !== true || out.writeId === undefined) bad('keyed must be true and come with a writeId')
    out.keyed = true
  }
  return out
}

/** Non-empty groups, at most MAX_ENTRIES items in all, each checked by `check` */
function checkGroups<T> (groups: unknown, check: (group: unknown[]) => T): T[] {
  if (!Array.isArray(groups) || groups.length === 0) bad('needs a non-empty groups array')
  let total = 0
  return groups.map(g => {
    if (!Array.isArray(g) || g.length === 0) bad('each group must be a non-empty array')
    total += g.length
    if (total > MAX_ENTRIES) bad(`more than ${MAX_ENTRIES} items`)
    return check(g)
  })
}

function oneShard (mutations: Mutation[]): Mutation[] {
  if (new Set(mutations.map(x => x.shard)).size !== 1) bad('mutations written together must share one shard key')
  return mutations
}

/** A bound of a `[from, to)` token range: '' (an end of the token space), a token, or a token and NUL (just after it) */
function isRangeBound (b: unknown): b is string {
  return typeof b === 'string' && (b === '' || TOKEN_RE.test(b.endsWith('\u0000') ? b.slice(0, -1) : b))
}

function withConsistency<M extends { type: 'write' | 'writeGroups' }> (msg: M, consistency: unknown): M & { consistency?: Consistency } {
  if (consistency === undefined) return msg
  if (!CONSISTENCY_LEVELS.includes(consistency as Consistency)) bad('unknown consistency')
  return { ...msg, consistency: consistency as Consistency }
}

/** Checks a replica-protocol message's shape and every row in it; anything else is an InvalidMessageError */
export function parseReplicaMessage (msg: unknown): ReplicaMessage {
  const m = msg as Record<string, unknown>
  if (m === null || typeof m !== 'object') bad('message must be an object')
  switch (m.type) {
    case 'count': {
      if (!Array.isArray(m.ranges) || m.ranges.length > MAX_COUNT_RANGES) bad(`count needs at most ${MAX_COUNT_RANGES} ranges`)
      const ranges = m.ranges.map(r => {
        if (!Array.isArray(r) || r.length !== 2 || !r.every(isRangeBound)) bad('malformed count range')
        const [from, to] = r as [string, string]
        if (from !== '' && to !== '' && from >= to) bad('malformed count range')
        return [from, to] as [string, string]
      })
      return { type: 'count', ranges }
    }
    case 'write': {
      if (!Array.isArray(m.mutations) || m.mutations.length === 0 || m.mutations.length > MAX_ENTRIES) bad('write needs 1 to 10000 mutations')
      const mutations = oneShard(m.mutations.map(checkMutation))
      if (m.retry !== undefined && typeof m.retry !== 'boolean') bad('retry must be a boolean')
      return withConsistency({ type: 'write', mutations, ...(m.retry === true ? { retry: true } : {}) }, m.consistency)
    }
    case 'writeGroups':
      return withConsistency({ type: 'writeGroups', groups: checkGroups(m.groups, g => oneShard(g.map(checkMutation))) }, m.consistency)
    case 'apply':
      return { type: 'apply', groups: checkGroups(m.groups, g => g.map(checkEntry)) }
    case 'merge': {
      if (!Array.isArray(m.states) || m.states.length === 0 || m.states.length > MAX_STATES) bad(`merge needs 1 to ${MAX_STATES} record states`)
      return { type: 'merge', states: m.states.map(x => checkState(x)) }
    }
    case 'records': {
      if (!Array.isArray(m.records) || m.records.length === 0 || m.records.length > MAX_STATES) bad(`records needs 1 to ${MAX_STATES} records`)
      let total = 0
      return {
        type: 'records',
        records: m.records.map(r => {
          const record = checkWholeRecord(r, bad)
          total += record.versions.length + record.state.heads.length
          if (total > MAX_ENTRIES) bad(`more than ${MAX_ENTRIES} versions`)
          return record
        })
      }
    }
    case 'holds': {
      if (!Array.isArray(m.records) || m.records.length === 0 || m.records.length > MAX_STATES) bad(`holds needs 1 to ${MAX_STATES} records`)
      let total = 0
      return {
        type: 'holds',
        records: m.records.map((r: unknown) => {
          const q = checkHoldsQuery(r)
          total += q.seen.length + q.superseded.length + q.versions.length
          if (total > MAX_HOLDS_VERSIONS) bad(`more than ${MAX_HOLDS_VERSIONS} versions`)
          return q
        })
      }
    }
    case 'read':
    case 'heads':
    case 'history': {
      const table = checkTable(m.table)
      const id = checkId(table, m.id)
      if (typeof m.token !== 'string' || !TOKEN_RE.test(m.token)) bad('malformed token')
      return { type: m.type, table, id, token: m.token }
    }
    case 'purge': {
      const table = checkTable(m.table)
      // The audit trail is never erased: a purge of an entry would be a hole no one could see.
      if (table === AUDIT_TABLE) bad('audit entries cannot be purged')
      const id = checkId(table, m.id)
      if (typeof m.token !== 'string' || !TOKEN_RE.test(m.token)) bad('malformed token')
      const internal = internalShard(table, id)
      if (internal !== undefined && tokenOf(internal) !== m.token) bad(`${table} token mismatch`)
      if (!isVersion(m.version)) bad('malformed purge version')
      return { type: 'purge', table, id, token: m.token, version: m.version }
    }
    case 'scan': {
      const table = checkTable(m.table)
      if (!Number.isSafeInteger(m.limit) || (m.limit as number) < 1 || (m.limit as number) > MAX_SCAN_LIMIT + 1) bad('scan limit out of range')
      const where = m.where ?? {}
      if (typeof where !== 'object' || where === null || Array.isArray(where)) bad('where must be an object')
      for (const v of Object.values(where)) {
        if (v !== null && typeof v !== 'string' && typeof v !== 'number') bad('where values must be scalars')
      }
      if (m.after !== undefined && (typeof m.after !== 'string' || m.after.length > 300)) bad('malformed cursor')
      if (m.token !== undefined && (typeof m.token !== 'string' || !TOKEN_RE.test(m.token))) bad('malformed scan token')
      return { type: 'scan', table, where: where as Record<string, string | number | null>, limit: m.limit as number, ...(m.after === undefined ? {} : { after: m.after as string }), ...(m.token === undefined ? {} : { token: m.token as string }) }
    }
    case 'query':
      return { type: 'query', ...checkRowQuery(m) }
    case 'fragment': {
      let fragment: Fragment
      try {
        fragment = checkFragment(m.fragment)
      } catch (err) {
        bad(`fragment: ${(err as Error).message}`)
      }
      if (!Array.isArray(m.tokenRanges) || m.tokenRanges.length === 0 || m.tokenRanges.length > MAX_QUERY_RANGES) bad('malformed fragment ranges')
      const tokenRanges = m.tokenRanges.map((r: unknown) => {
        if (!Array.isArray(r) || r.length !== 2 || !r.every(x => typeof x === 'string' && x.length <= 17)) bad('malformed fragment range')
        return [r[0], r[1]] as [string, string]
      })
      return { type: 'fragment', fragment, tokenRanges }
    }
    default:
      bad(`unknown message type ${JSON.stringify(m.type)?.slice(0, 40)}`)
  }
}

/** A record state a peer sent back (read, scan): every head checked as an entry, all of the same record */
export function checkState (x: unknown, expect?: { table: string, id?: string, token?: string }): RecordState {
  const st = x as Record<string, unknown>
  if (st === null || typeof st !== 'object' || !Array.isArray(st.heads) || st.heads.length === 0 || st.heads.length > MAX_PARENTS) bad('malformed record state')
  if (!Array.isArray(st.seen) || st.seen.length > MAX_KNOWN_VERSIONS || !st.seen.every(isVersion) || !Array.isArray(st.superseded) || st.superseded.length > MAX_KNOWN_VERSIONS || !st.superseded.every(isVersion)) bad('malformed version lists')
  // Every head is a version the sender has seen: a state claiming otherwise is not one a replica could hold.
  const seen = new Set(st.seen as string[])
  const heads = st.heads.map(checkEntry)
  if (!heads.every(h => seen.has(h.version))) bad('a head missing from the seen list')
  // Every version a replica has seen is a head or replaced by one it has seen: no other state is possible.
  const headSet = new Set(heads.map(h => h.version))
  const superseded = new Set(st.superseded as string[])
  if (!(st.seen as string[]).every(v => headSet.has(v) || superseded.has(v))) bad('a seen version that is neither a head nor replaced')
  const first = heads[0] as VersionEntry
  for (const h of heads) {
    if (h.table !== first.table || h.id !== first.id || h.token !== first.token) bad('heads of different records in one state')
  }
  if (expect !== undefined && (first.table !== expect.table || (expect.id !== undefined && first.id !== expect.id) || (expect.token !== undefined && first.token !== expect.token))) {
    bad(`a state for ${first.table} ${first.id} where ${expect.table} ${expect.id ?? ''} was asked for`)
  }
  return { table: first.table, id: first.id, token: first.token, heads, seen: st.seen as string[], superseded: st.superseded as string[] }
}

/** A scan page a peer sent back */
export function checkScanPage (x: unknown, table: string): { rows: Array<{ state: RecordState, position: string }>, next?: string } {
  const p = x as Record<string, unknown>
  if (p === null || typeof p !== 'object' || !Array.isArray(p.rows) || p.rows.length > MAX_SCAN_LIMIT + 1) bad('malformed scan page')
  const rows = p.rows.map((r: any) => {
    if (r === null || typeof r !== 'object' || typeof r.position !== 'string' || r.position.length > 300) bad('malformed scan row')
    const state = checkState(r.state, { table })
    if (r.position !== `${state.token}!${state.id}`) bad('scan row position does not match its record')
    return { state, position: r.position as string }
  })
  if (p.next !== undefined && typeof p.next !== 'string') bad('malformed scan cursor')
  return p.next === undefined ? { rows } : { rows, next: p.next as string }
}

/** Token ranges one query may name */
const MAX_QUERY_RANGES = 100_000

/** An ordered read a peer asks for (see RowQuery): a table of the schema, a checked condition, sane bounds */
function checkRowQuery (m: Record<string, unknown>): { table: string } & RowQuery {
  const def = typeof m.table === 'string' ? findTable(m.table) : undefined
  if (def === undefined) bad('query of an unknown table')
  if (!Number.isSafeInteger(m.limit) || (m.limit as number) < 1 || (m.limit as number) > MAX_SCAN_LIMIT + 1) bad('query limit out of range')
  const out: { table: string } & RowQuery = { table: def.name, limit: m.limit as number }
  if (m.filter !== undefined) {
    try {
      out.filter = checkCondition(def, m.filter)
    } catch (err) {
      bad(`query filter: ${(err as Error).message}`)
    }
  }
  if (m.orderBy !== undefined) {
    if (typeof m.orderBy !== 'string' || !def.columns.some(c => c.name === m.orderBy)) bad('malformed query order')
    out.orderBy = m.orderBy
  }
  if (m.desc !== undefined) {
    if (typeof m.desc !== 'boolean') bad('malformed query direction')
    out.desc = m.desc
  }
  if (m.after !== undefined) {
    if (typeof m.after !== 'string' || m.after.length > 4096) bad('malformed query cursor')
    out.after = m.after
  }
  if (m.tokenRanges !== undefined) {
    if (!Array.isArray(m.tokenRanges) || m.tokenRanges.length > MAX_QUERY_RANGES) bad('malformed query ranges')
    out.tokenRanges = m.tokenRanges.map((r: unknown) => {
      if (!Array.isArray(r) || r.length !== 2 || !r.every(x => typeof x === 'string' && x.length <= 17)) bad('malformed query range')
      return [r[0], r[1]] as [string, string]
    })
  }
  return out
}

/** A query page a peer sent back: its rows' states checked, and each row's key ending with its position */
export function checkQueryPage (x: unknown, table: string): RowPage {
  const p = x as Record<string, unknown>
  if (p === null || typeof p !== 'object' || !Array.isArray(p.rows) || p.rows.length > MAX_SCAN_LIMIT + 1) bad('malformed query page')
  const rows = p.rows.map((r: any) => {
    if (r === null || typeof r !== 'object' || typeof r.key !== 'string' || r.key.length > 4096) bad('malformed query row')
    const state = checkState(r.state, { table })
    if (!(r.key as string).endsWith(`!${state.token}!${state.id}`)) bad('query row key does not match its record')
    return { state, key: r.key as string }
  })
  if (p.next !== undefined && typeof p.next !== 'string') bad('malformed query cursor')
  return p.next === undefined ? { rows } : { rows, next: p.next as string }
}

/** Ranges whose leaf digests one `leaves` request asks for */
export const MAX_SYNC_BUCKETS = 16
/** Record digests in one `digests` page */
export const MAX_SYNC_DIGESTS = 1000
/** Leaves one `digests` request lists (one range's worth) */
export const MAX_SYNC_LEAVES = 256
/** Records asked for in one `fetch` */
export const MAX_SYNC_FETCH = 256
/** Hex digits of a record digest on the wire (128 bits) */
export const SYNC_DIGEST_HEX = 32
const RANGES = 256
const LEAVES_TOTAL = RANGES * 256
const SUMMARY_DIGEST_RE = /^[0-9a-f]{64}$/
const RECORD_DIGEST_RE = /^[0-9a-f]{32}$/

/** The anti-entropy protocol (`/ntsoekhe/sync/1.0.0`); see cluster/anti-entropy.ts */
export type SyncMessage =
  | { type: 'summary' }
  | { type: 'leaves', buckets: number[] }
  | { type: 'digests', leaves: number[], after?: string, limit: number }
  | { type: 'fetch', keys: string[] }

function badSync (message: string): never {
  throw new InvalidMessageError(`sync: ${message}`)
}

/** A record's store key (`<token>!<table>!<id>`), checked part by part */
export function checkRecordKey (key: unknown): { key: string, token: string, table: string, id: string } {
  if (typeof key !== 'string' || key.length > 300) badSync('malformed record key')
  const first = key.indexOf('!')
  const second = key.indexOf('!', first + 1)
  if (first < 0 || second < 0) badSync('malformed record key')
  const token = key.slice(0, first)
  if (!TOKEN_RE.test(token)) badSync('malformed token in record key')
  const table = checkTable(key.slice(first + 1, second))
  const id = checkId(table, key.slice(second + 1))
  const internal = internalShard(table, id)
  if (internal !== undefined && tokenOf(internal) !== token) badSync(`${table} token mismatch`)
  return { key, token, table, id }
}

function checkLeaf (leaf: unknown): number {
  if (!Number.isSafeInteger(leaf) || (leaf as number) < 0 || (leaf as number) >= LEAVES_TOTAL) badSync('leaf out of range')
  return leaf as number
}

/** Checks a sync-protocol request; anything else is an InvalidMessageError */
export function parseSyncMessage (msg: unknown): SyncMessage {
  const m = msg as Record<string, unknown>
  if (m === null || typeof m !== 'object') badSync('message must be an object')
  switch (m.type) {
    case 'summary':
      return { type: 'summary' }
    case 'leaves': {
      if (!Array.isArray(m.buckets) || m.buckets.length === 0 || m.buckets.length > MAX_SYNC_BUCKETS) badSync(`leaves needs 1 to ${MAX_SYNC_BUCKETS} ranges`)
      if (!m.buckets.every(b => Number.isSafeInteger(b) && b >= 0 && b < RANGES)) badSync('range out of range')
      return { type: 'leaves', buckets: m.buckets as number[] }
    }
    case 'digests': {
      if (!Array.isArray(m.leaves) || m.leaves.length === 0 || m.leaves.length > MAX_SYNC_LEAVES) badSync(`digests needs 1 to ${MAX_SYNC_LEAVES} leaves`)
      const leaves = m.leaves.map(checkLeaf)
      if (!leaves.every((l, i) => i === 0 || l > (leaves[i - 1] as number))) badSync('leaves must be in ascending order')
      if (!Number.isSafeInteger(m.limit) || (m.limit as number) < 1 || (m.limit as number) > MAX_SYNC_DIGESTS) badSync('digests limit out of range')
      const after = m.after === undefined ? undefined : checkRecordKey(m.after).key
      return { type: 'digests', leaves, limit: m.limit as number, ...(after === undefined ? {} : { after }) }
    }
    case 'fetch': {
      if (!Array.isArray(m.keys) || m.keys.length === 0 || m.keys.length > MAX_SYNC_FETCH) badSync(`fetch needs 1 to ${MAX_SYNC_FETCH} record keys`)
      return { type: 'fetch', keys: m.keys.map(k => checkRecordKey(k).key) }
    }
    default:
      badSync(`unknown message type ${JSON.stringify(m.type)?.slice(0, 40)}`)
  }
}

/** A peer's answer to `summary`: the 256 ranges' digests */
export function checkSummaryReply (x: unknown): string[] {
  const b = (x as { buckets?: unknown } | null)?.buckets
  if (!Array.isArray(b) || b.length !== RANGES || !b.every(d => typeof d === 'string' && SUMMARY_DIGEST_RE.test(d))) badSync('malformed summary reply')
  return b as string[]
}

/** A peer's answer to `leaves`: 256 leaf digests for each range asked for */
export function checkLeavesReply (x: unknown, asked: number): string[][] {
  const l = (x as { leaves?: unknown } | null)?.leaves
  if (!Array.isArray(l) || l.length !== asked) badSync('malformed leaves reply')
  for (const leaves of l) {
    if (!Array.isArray(leaves) || leaves.length !== 256 || !leaves.every(d => typeof d === 'string' && SUMMARY_DIGEST_RE.test(d))) badSync('malformed leaves reply')
  }
  return l as string[][]
}

/** A peer's page of record digests, each key in one of the leaves and after the cursor asked for */
export function checkDigestPage (x: unknown, leaves: number[], after?: string): { records: Array<[string, string, string[]?]>, next?: string } {
  const p = x as { records?: unknown, next?: unknown } | null
  if (p === null || typeof p !== 'object' || !Array.isArray(p.records) || p.records.length > MAX_SYNC_DIGESTS) badSync('malformed digests page')
  const asked = new Set(leaves.map(l => l.toString(16).padStart(4, '0')))
  const inLeaves = (key: string): boolean => asked.has(key.slice(0, 4)) && (after === undefined || key > after)
  // Each record: its key and digest, and (from nodes that send them) its head versions.
  const records = p.records.map((r: unknown): [string, string, string[]?] => {
    if (!Array.isArray(r) || (r.length !== 2 && r.length !== 3) || typeof r[1] !== 'string' || !RECORD_DIGEST_RE.test(r[1])) badSync('malformed record digest')
    const { key } = checkRecordKey(r[0])
    if (!inLeaves(key)) badSync('a record digest outside the leaves asked for')
    if (r.length === 2) return [key, r[1]]
    const heads: unknown = r[2]
    if (!Array.isArray(heads) || heads.length > MAX_PARENTS || !heads.every(isVersion)) badSync('malformed record heads')
    return [key, r[1], heads]
  })
  if (p.next === undefined) return { records }
  const next = checkRecordKey(p.next).key
  if (!inLeaves(next)) badSync('a digests cursor that does not move forward')
  return { records, next }
}

/** A peer's answer to `fetch`: whole states (with every version) of records asked for, and those it does not hold */
export function checkFetchReply (x: unknown, asked: string[]): { records: Array<{ state: RecordState, versions: VersionEntry[] }>, missing: string[] } {
  const p = x as { records?: unknown, missing?: unknown } | null
  if (p === null || typeof p !== 'object' || !Array.isArray(p.records) || !Array.isArray(p.missing)) badSync('malformed fetch reply')
  const wanted = new Set(asked)
  const records = p.records.map((r: unknown) => {
    const record = checkWholeRecord(r, badSync)
    const key = `${record.state.token}!${record.state.table}!${record.state.id}`
    if (!wanted.has(key)) badSync('a fetched record that was not asked for')
    wanted.delete(key)
    return record
  })
  const missing = p.missing.map((k: unknown) => {
    if (typeof k !== 'string' || !wanted.has(k)) badSync('a missing record that was not asked for')
    return k
  })
  return { records, missing }
}
