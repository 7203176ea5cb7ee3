import { statfs } from 'node:fs/promises'
import { Level } from 'level'
import type { AbstractLevel, AbstractSublevel } from 'abstract-level'
import { DataKeyError, HomeLockedError, IntegrityError, NtsoekheError, StorageFullError } from '../errors/index.js'
import { findTable, sensitiveColumns, type Row, type TableDef, type Value } from '../schema/index.js'
import { FieldCipher, isHashedIndexValue, SEALED_KEY } from './field-cipher.js'
import { compareVersions } from './version.js'
import { GroupCommitter, type BatchOp } from './group-commit.js'
import { RangeCache } from './range-cache.js'
import { KeyedMutex } from './keyed-mutex.js'
import { LEAVES, leafOf } from './range-summary.js'
import { encodeIndexValue, recordKey, SEP } from './keys.js'
import { leafPrefix, RangeSummary, recordDigest } from './range-summary.js'
import { REAL_ENV, type Environment } from '../util/env.js'
import { decodeVersionLists, encodeVersionLists, type StoredVersionLists } from './version-list.js'
import { evaluate } from '../schema/condition.js'
import { indexName, inRanges, orderColumns, orderedEntries, orderedEntry, orderedSignature, planRows, sortedKey, type RowPage, type RowPlan, type RowQuery } from './ordered.js'

type Sub = AbstractSublevel<any, any, string, any>

/** One version of one record: the unit that is stored, replicated and kept in history */
export interface VersionEntry {
  table: string
  id: string
  /** Ring token of the row's shard key (16 hex digits) */
  token: string
  version: string
  /** The versions this one replaces */
  parents: string[]
  /** The row, or null for a tombstone (delete) */
  row: Row | null
  /** Random id of the client write that made this version: a retry of that write recognises it */
  writeId?: string
}

/** A record's current state: its heads, newest first. More than one head is a conflict */
export interface RecordState {
  table: string
  id: string
  token: string
  heads: VersionEntry[]
  /**
   * Every version this replica has stored for the record, newer than `horizon`,
   * and every head whatever its age
   */
  seen: string[]
  /** Versions newer than `horizon` that some stored version replaces: never a head again */
  superseded: string[]
  /**
   * The newest version whose ancestry this replica keeps outside the record
   * (since format 4): what it has seen or knows replaced up to here is looked up in
   * the store, one key per version, not listed. Absent while the lists are
   * short; a state without it lists everything.
   */
  horizon?: string
}

/** A hint kept for a peer: versions it missed, or (with `entries` empty) a purge it missed */
export interface Hint {
  key: string
  entries: VersionEntry[]
  purge?: PurgeMarker
}

export interface ScanOptions {
  /** Equality filters; at most one should be on an indexed column to use the index */
  where?: Record<string, Value>
  /** Columns of the table that have a secondary index */
  indexed?: string[]
  /** Resume after this position (`<token>!<id>`) */
  after?: string
  /** Only rows of this ring token (the rows of one shard-key value, and any that share its token) */
  token?: string
  limit: number
}

export interface ScanResult {
  rows: Array<{ state: RecordState, position: string }>
  /** Position to resume from, when more rows may follow */
  next?: string
}

export interface StoreInit {
  /** Directory of the LevelDB database */
  path: string
  /**
   * fsync each group commit, so an acknowledged write survives power loss.
   * @default true
   */
  sync?: boolean
  /**
   * LevelDB's write buffer (memtable). Each time it fills, it is written out
   * as a table file, and that burst of writes makes the commits' fsyncs
   * meanwhile slow (tens of ms on an ext4 disk): the larger it is, the rarer
   * those stalls, at the cost of memory and a longer log replay at start.
   * @default 16 MiB (LevelDB's own default is 4 MiB)
   */
  writeBufferBytes?: number
  /** Columns with a secondary index, per table */
  indexes?: Record<string, string[]>
  /**
   * The node's data key (32 bytes, `<home>/data.key`). Sensitive columns
   * (see Column.sensitive) are stored AES-256-GCM-sealed under keys derived
   * from it, and indexed as keyed hashes. A store written without one
   * (before encryption existed) is encrypted in place when opened with one.
   * Required unless `plaintext`.
   */
  dataKey?: Uint8Array
  /**
   * Store sensitive columns in the clear: only for measuring what
   * encryption costs. Refused on a store that is encrypted.
   * @default false
   */
  plaintext?: boolean
  /** Progress of a migration at open (a format-3 or format-4 store rewritten as format 5) */
  log?: (message: string) => void
  /**
   * The database to use instead of LevelDB at `path`: an abstract-level
   * database with string keys and values (the simulation's in-memory one,
   * which loses unsynced writes when its node crashes)
   */
  db?: AbstractLevel<any, any, any>
  /** The clock (hint keys) and deferred work (group commit). @default REAL_ENV */
  env?: Environment
  /**
   * Index keys kept in memory for the ranges queries read (see
   * range-cache.ts); 0 reads every range from LevelDB.
   * @default 100000
   */
  rangeCacheKeys?: number
}

/** `purged`: a version of a record erased here, refused (see Store.purge) */
export type ApplyOutcome = 'applied' | 'duplicate' | 'history' | 'purged'

/**
 * What is kept of an erased record: no row data, only what it was and up to
 * which version it was erased, so copies of it that arrive late (hints,
 * hand-offs, read repair from a replica that had not erased it yet) are
 * refused. A version newer than `version` is a new record and is taken.
 */
export interface PurgeMarker {
  table: string
  id: string
  token: string
  /** The purge's own version: every version up to it was erased */
  version: string
  /** When it was erased here, ms since the epoch */
  time: number
}

/** A record as it travels whole between replicas: its state, and its other versions (history) */
export interface WholeRecord {
  state: RecordState
  /** Versions besides the heads (a head listed here too is taken once) */
  versions: VersionEntry[]
}

/** What `merge` did with a peer's state: took something new from it, or already knew all of it */
export type MergeOutcome = 'merged' | 'known'

/**
 * A record's state after one more version: the version is seen, its parents
 * are superseded, and the heads are what no stored version replaces, newest
 * first. `replaced` are the heads this version took the place of.
 */
export function nextState (before: RecordState | undefined, entry: VersionEntry, knownReplaced = false): { after: RecordState, isHead: boolean, replaced: VersionEntry[] } {
  const seen = [...(before?.seen ?? []), entry.version]
  const superseded = [...new Set([...(before?.superseded ?? []), ...entry.parents])]
  const gone = new Set(superseded)
  // `knownReplaced`: the store knows the version replaced from what it keeps below the record's horizon.
  const isHead = !gone.has(entry.version) && !knownReplaced
  const heads: VersionEntry[] = isHead ? [entry] : []
  const replaced: VersionEntry[] = []
  for (const h of before?.heads ?? []) (gone.has(h.version) ? replaced : heads).push(h)
  heads.sort((a, b) => compareVersions(b.version, a.version))
  const after: RecordState = { table: entry.table, id: entry.id, token: entry.token, heads, seen, superseded }
  if (before?.horizon !== undefined) after.horizon = before.horizon
  return { after, isHead, replaced }
}

/**
 * Merges what several replicas hold of one record: the union of their heads,
 * less any head that some replica knows to be replaced. Two heads that
 * survive are a real conflict; none is dropped.
 */
export function mergeStates (states: Array<RecordState | undefined>): RecordState | undefined {
  const present = states.filter((s): s is RecordState => s !== undefined)
  const first = present[0]
  if (first === undefined) return undefined
  const superseded = new Set(present.flatMap(s => s.superseded))
  const heads = new Map<string, VersionEntry>()
  for (const s of present) {
    for (const h of s.heads) {
      if (!superseded.has(h.version)) heads.set(h.version, h)
    }
  }
  const merged: RecordState = {
    table: first.table,
    id: first.id,
    token: first.token,
    heads: [...heads.values()].sort((a, b) => compareVersions(b.version, a.version)),
    seen: [...new Set(present.flatMap(s => s.seen))],
    superseded: [...superseded]
  }
  // Below the newest horizon some replica's lists are incomplete.
  for (const s of present) if (s.horizon !== undefined && (merged.horizon === undefined || s.horizon > merged.horizon)) merged.horizon = s.horizon
  return merged
}

/** The winning head: the highest version */
export function winner (state: RecordState | undefined): VersionEntry | undefined {
  if (state === undefined) return undefined
  // A delete concurrent with an update does not hide the update: the newest live head wins,
  // and the tombstone is reported as a conflict beside it.
  return state.heads.find(h => h.row !== null) ?? state.heads[0]
}

/**
 * The node's shard in LevelDB. Rows are keyed by ring token first, so a token
 * range is one contiguous scan; index entries live in their own sublevel and
 * are written in the same batch as the row they point at.
 */
export class Store {
  private readonly db: Level<string, any>
  private readonly records: Sub
  private readonly history: Sub
  private readonly tables: Sub
  private readonly index: Sub
  /** Ordered-index entries (see TableDef.ordered): key `<table>!<columns>!<sortable values>!<token>!<id>`, value 1 */
  private readonly ordered: Sub
  private readonly meta: Sub
  private readonly hints: Sub
  private readonly purges: Sub
  /**
   * A record's ancestry below its horizon (since format 4): key `<record key>!<version>`,
   * value 1 for a version seen here (and replaced), 0 for one only known replaced
   */
  private readonly known: Sub
  private readonly log?: (message: string) => void
  /** Purge markers by record key (few: purges are rare), consulted on every apply and merge */
  private readonly purged = new Map<string, PurgeMarker>()
  private hintSeq = 0
  private readonly hintCounts = new Map<string, number>()
  /** Live rows per table, counted once at open and kept up to date by every commit */
  private readonly rowCounts = new Map<string, number>()
  /** Live rows per table per leaf of the token space (1/65536 of it): a count over token ranges sums whole leaves and reads only its edges */
  private readonly leafCounts = new Map<string, Int32Array>()
  /** Hash summary of every record's heads by token range, for anti-entropy: kept up to date by every commit */
  private rangeSummary = new RangeSummary()
  private readonly mutex = new KeyedMutex()
  private readonly committer: GroupCommitter
  /** Index ranges queries read, in memory; every batch passes it before LevelDB sees it */
  private readonly rangeCache?: RangeCache
  private readonly indexes: Record<string, string[]>
  private readonly cipher?: FieldCipher
  private readonly plaintext: boolean
  private readonly sync: boolean
  private readonly env: Environment
  private state: 'new' | 'opening' | 'open' | 'closing' | 'closed' = 'new'
  /** The last commit failed for want of disk space (see assertWritable) */
  private diskFull = false
  /** A reopen after a full disk under way (see reopenAfterDiskFull) */
  private reopening?: Promise<boolean>
  private lastReopen = 0
  /** Every sublevel of the database: a reopen opens each again */
  private readonly sublevels: Sub[] = []
  private opening?: Promise<void>
  private closing?: Promise<void>

  constructor (init: StoreInit) {
    // Before the database exists: a malformed key leaves nothing open behind.
    if (init.dataKey !== undefined) this.cipher = new FieldCipher(init.dataKey)
    this.db = init.db === undefined
      ? new Level<string, any>(init.path, { valueEncoding: 'json', writeBufferSize: init.writeBufferBytes ?? DEFAULT_WRITE_BUFFER })
      : init.db as unknown as Level<string, any>
    this.env = init.env ?? REAL_ENV
    const sublevel = (name: string): Sub => {
      const sub = this.db.sublevel<string, any>(name, { valueEncoding: 'json' }) as Sub
      this.sublevels.push(sub)
      return sub
    }
    this.records = sublevel('r')
    this.history = sublevel('h')
    this.tables = sublevel('t')
    this.index = sublevel('i')
    this.ordered = sublevel('o')
    this.meta = sublevel('m')
    this.hints = sublevel('x')
    this.purges = sublevel('p')
    this.known = sublevel('k')
    if (init.log !== undefined) this.log = init.log
    this.indexes = init.indexes ?? {}
    this.plaintext = init.plaintext === true
    this.sync = init.sync ?? true
    const cacheKeys = init.rangeCacheKeys ?? DEFAULT_RANGE_CACHE_KEYS
    if (cacheKeys > 0) this.rangeCache = new RangeCache({ watched: [this.ordered.prefix, this.index.prefix], maxKeys: cacheKeys })
    this.committer = new GroupCommitter(async (ops, sync) => {
      // The index ranges the batch changes are dropped before LevelDB sees it and stay uncached until it is durable.
      const written = this.rangeCache?.writing(ops)
      try {
        await writeBatch(this.db, ops, sync)
      } catch (err) {
        if (!isDiskFull(err)) throw err
        // Space may be back while LevelDB still holds its failed background write: reopened, it writes again.
        const retry = await this.reopenAfterDiskFull() ? await writeBatch(this.db, ops, sync).then(() => undefined, (e: unknown) => e) : err
        if (retry !== undefined) {
          if (!isDiskFull(retry)) throw retry
          this.diskFull = true
          throw new StorageFullError(`This node's disk is full (${(retry as Error).message}): it takes no writes until space is freed; reads go on`, { cause: retry })
        }
      } finally {
        written?.()
      }
      this.diskFull = false
      this.countTableOps(ops)
    }, { sync: init.sync ?? true, defer: this.env.defer })
  }

  get status (): string {
    return this.state
  }

  /**
   * Refuses with a StorageFullError while the disk is full, before a write is
   * ordered or sent anywhere: once a commit failed for want of space, a small
   * probe commit must pass first (it clears the state when space is back).
   */
  async assertWritable (): Promise<void> {
    this.checkOpen()
    if (!this.diskFull) return
    await this.committer.commit([put(this.meta, 'node:writable-probe', this.env.now())])
  }

  /**
   * LevelDB keeps a failed background write (a flush or compaction that ran
   * out of space) as an error every later write gets, until the database is
   * opened again: so once space is back (statfs says so), the database is
   * closed and opened, and writes go on without a restart of the daemon.
   * Returns whether it reopened. One at a time, at most one every
   * REOPEN_EVERY_MS; a read that meets the closed database in that moment fails
   * and may be asked again.
   */
  private async reopenAfterDiskFull (): Promise<boolean> {
    this.reopening ??= (async () => {
      if (!(this.db instanceof Level) || this.env.now() - this.lastReopen < REOPEN_EVERY_MS) return false
      this.lastReopen = this.env.now()
      const free = await statfs(this.db.location).then(st => st.bavail * st.bsize, () => 0)
      if (free < REOPEN_FREE_BYTES) return false
      this.log?.(`store: reopening ${this.db.location} after a full disk (${Math.round(free / 1024 / 1024)} MiB free now)`)
      await this.db.close()
      await this.db.open()
      // A sublevel stays closed when its parent closes: each is opened again.
      await Promise.all(this.sublevels.map(async sub => { await sub.open() }))
      this.rangeCache?.clear()
      return true
    })().finally(() => { this.reopening = undefined })
    return await this.reopening
  }

  /** Opens the database; a database held by another process is a HomeLockedError */
  async open (): Promise<void> {
    this.opening ??= this._open()
    await this.opening
  }

  private async _open (): Promise<void> {
    this.state = 'opening'
    if ((this.cipher === undefined) === !this.plaintext) {
      // abstract-level opens itself on the next tick: close it, or it keeps the lock.
      await this.db.close()
      this.state = 'closed'
      throw new DataKeyError(this.plaintext
        ? 'A store is given a data key or told to store in plaintext, not both'
        : `The store at ${this.db.location} needs the node's data key (StoreInit.dataKey, from <home>/data.key)`)
    }
    try {
      await this.db.open()
    } catch (err: any) {
      this.state = 'closed'
      if (err?.code === 'LEVEL_DATABASE_NOT_OPEN' && err?.cause?.code === 'LEVEL_LOCKED') {
        throw new HomeLockedError(`The store at ${this.db.location} is in use by another process (is a daemon already running on this home?)`, { cause: err })
      }
      throw err
    }
    const format = await this.meta.get('format')
    if (format === undefined) {
      await this.meta.put('format', STORE_FORMAT)
    } else if (format !== STORE_FORMAT && format !== 3 && format !== 4) {
      await this.db.close()
      this.state = 'closed'
      throw new NtsoekheError('INTERNAL', `The store at ${this.db.location} has format ${String(format)}; this version reads format ${STORE_FORMAT}`)
    }
    try {
      await this.openFieldEncryption()
      if (format === 3 || format === 4) await this.migrateFormat(format)
      await this.openOrderedIndexes()
    } catch (err) {
      await this.db.close()
      this.state = 'closed'
      throw err
    }
    for await (const k of this.hints.keys()) {
      const peer = k.slice(0, k.indexOf(SEP))
      this.hintCounts.set(peer, (this.hintCounts.get(peer) ?? 0) + 1)
    }
    for await (const [k, marker] of this.purges.iterator()) this.purged.set(k, marker)
    for await (const k of this.tables.keys()) {
      const table = k.slice(0, k.indexOf(SEP))
      this.rowCounts.set(table, (this.rowCounts.get(table) ?? 0) + 1)
      this.countLeaf(table, k.slice(table.length + 1), 1)
    }
    await this.openSummary()
    // Migrations and rebuilds at open wrote indexes past the cache.
    this.rangeCache?.clear()
    this.state = 'open'
  }

  async close (): Promise<void> {
    this.closing ??= this._close()
    await this.closing
  }

  private async _close (): Promise<void> {
    if (this.opening !== undefined) await this.opening.catch(() => {})
    const wasOpen = this.state === 'open'
    this.state = 'closing'
    // Saved only at a clean close, and removed again at open: after a crash it is rebuilt from the records.
    if (wasOpen && this.db.status === 'open') await writeBatch(this.db, [put(this.meta, SUMMARY_KEY, this.rangeSummary.toJSON())], true)
    await this.db.close()
    this.state = 'closed'
  }

  private checkOpen (): void {
    if (this.state !== 'open') throw new NtsoekheError('UNAVAILABLE', `The store is ${this.state}`)
  }

  async get (table: string, token: string, id: string): Promise<RecordState | undefined> {
    this.checkOpen()
    return this._get(table, token, id)
  }

  private _get (table: string, token: string, id: string): RecordState | undefined {
    // A synchronous read: LevelDB answers from its memtable or block cache in a few microseconds,
    // where the async path costs a thread-pool round trip (~50 µs) per record.
    const value = this.records.getSync(recordKey(token, table, id))
    if (value === undefined) return undefined
    return this.decodeRecord(table, token, id, value)
  }

  /** Every version the record has had, oldest first */
  async versions (table: string, token: string, id: string): Promise<VersionEntry[]> {
    this.checkOpen()
    const prefix = recordKey(token, table, id) + SEP
    // Current heads live in the record; history holds the versions they replaced.
    const out: VersionEntry[] = [...this._get(table, token, id)?.heads ?? []]
    for await (const value of this.history.values({ gt: prefix, lt: prefix + '\xff' })) out.push(this.openEntry(value))
    return out.sort((a, b) => compareVersions(a.version, b.version))
  }

  /**
   * What this replica knows of one version of a record: whether it has seen
   * it (stored it, or learned it from a peer's state) and whether some version
   * it knows replaces it. A version below the record's horizon costs one
   * LevelDB read.
   */
  async knows (table: string, token: string, id: string, version: string): Promise<{ seen: boolean, replaced: boolean }> {
    this.checkOpen()
    const state = this._get(table, token, id)
    const old = this.oldKnown(recordKey(token, table, id), state, version)
    return {
      seen: state?.seen.includes(version) === true || old === 1,
      replaced: state?.superseded.includes(version) === true || old !== undefined
    }
  }

  /**
   * Applies replicated versions atomically: every entry or none. Applying a
   * version twice changes nothing; a version older than a known descendant
   * goes to history only.
   */
  async apply (entries: VersionEntry[]): Promise<ApplyOutcome[]> {
    return await this.transact(entries.map(e => ({ table: e.table, token: e.token, id: e.id })), async () => entries)
  }

  /**
   * Read-modify-write on a set of records under their locks: `build` sees the
   * current states and returns the versions to write (or throws to write
   * nothing). All of it lands in one atomic, durable batch.
   */
  async transact (
    keys: Array<{ table: string, token: string, id: string }>,
    build: (states: Map<string, RecordState | undefined>) => Promise<VersionEntry[]> | VersionEntry[]
  ): Promise<ApplyOutcome[]> {
    this.checkOpen()
    const release = await this.mutex.lock(keys.map(k => recordKey(k.token, k.table, k.id)))
    try {
      const states = new Map<string, RecordState | undefined>()
      for (const k of keys) {
        const key = recordKey(k.token, k.table, k.id)
        if (!states.has(key)) states.set(key, this._get(k.table, k.token, k.id))
      }
      const entries = await build(states)
      const ops: BatchOp[] = []
      const touched: SummaryChange[] = []
      const outcomes: ApplyOutcome[] = []
      for (const entry of entries) {
        const key = recordKey(entry.token, entry.table, entry.id)
        if (!states.has(key)) throw new Error(`transact: ${key} was not locked`)
        outcomes.push(this.stage(entry, states, ops, touched))
      }
      await this.committer.commit(ops)
      this.applySummary(touched)
      return outcomes
    } finally {
      release()
    }
  }

  /**
   * Stores first versions of records that are written once and never
   * changed (audit entries): each entry has no parents and a version its
   * writer fixed once, so writing it again (a retry, a second copy from a
   * peer) stores the same bytes. A record that is new here, the usual case,
   * is put as its one-version state without being decoded or merged; one
   * already held (or erased here) goes the ordinary way, so a second,
   * different version is kept beside the first, for verification to find.
   *
   * `own`: the entries are the writer's own, with ids unique by construction
   * and versions fixed once, so nothing is read first: a copy already here
   * can only be the same version, and putting it again changes nothing.
   */
  async insertOnce (entries: VersionEntry[], options: { own?: boolean } = {}): Promise<ApplyOutcome[]> {
    this.checkOpen()
    const keys = entries.map(e => recordKey(e.token, e.table, e.id))
    const release = await this.mutex.lock(keys)
    try {
      const ops: BatchOp[] = []
      const touched: SummaryChange[] = []
      const states = new Map<string, RecordState | undefined>()
      const fresh = new Set<string>()
      const recordPrefix = this.records.prefix
      const outcomes = entries.map((entry, i): ApplyOutcome => {
        const key = keys[i] as string
        if (entry.parents.length > 0 || entry.row === null) throw new Error(`insertOnce: ${key} is not a first version`)
        if (!fresh.has(key) && !states.has(key) && !this.purged.has(key) && (options.own === true || this.records.getSync(key) === undefined)) {
          fresh.add(key)
          // The summary needs what the put replaces: an own entry is written without a read, and may be a retry.
          this.noteHeads(touched, key, entry.token, options.own === true ? this.storedHeads(key) : undefined, [entry.version])
          ops.push({ type: 'put', key: recordPrefix + key, value: this.encodeFirstVersion(entry) })
          this.stageLive(entry, ops)
          return 'applied'
        }
        if (fresh.has(key)) {
          // A second entry for a record put by this batch: it is now held, as a one-version state.
          const first = entries[keys.indexOf(key)] as VersionEntry
          states.set(key, { table: first.table, id: first.id, token: first.token, heads: [first], seen: [first.version], superseded: [] })
          fresh.delete(key)
        }
        if (!states.has(key)) states.set(key, this._get(entry.table, entry.token, entry.id))
        return this.stage(entry, states, ops, touched)
      })
      await this.committer.commit(ops)
      this.applySummary(touched)
      return outcomes
    } finally {
      release()
    }
  }

  /** The stored form of a record's only version, as encodeRecord would make it */
  private encodeFirstVersion (entry: VersionEntry): string {
    const row = JSON.stringify(this.sealRow(entry.table, entry.id, entry.version, entry.row))
    const version = JSON.stringify(entry.version)
    const writeId = entry.writeId === undefined ? '' : `,"writeId":${JSON.stringify(entry.writeId)}`
    const lists = JSON.stringify(encodeVersionLists([entry.version], [])).slice(1)
    return `{"heads":[{"version":${version},"parents":[],"row":${row}${writeId}}],${lists}`
  }

  /**
   * Merges whole record states from peers (hand-off, read repair, a primary
   * catching up): heads, and what each replica knows to be replaced, so a
   * late older version can never come back as a head. Atomic and durable.
   */
  async merge (incoming: RecordState[]): Promise<MergeOutcome[]> {
    this.checkOpen()
    const keys = incoming.map(s => recordKey(s.token, s.table, s.id))
    const release = await this.mutex.lock(keys)
    try {
      const states = new Map<string, RecordState | undefined>()
      const ops: BatchOp[] = []
      const touched: SummaryChange[] = []
      const outcomes = incoming.map((s, i) => this.stageMerge(s, keys[i] as string, states, ops, touched))
      if (ops.length > 0) await this.committer.commit(ops)
      this.applySummary(touched)
      return outcomes
    } finally {
      release()
    }
  }

  /**
   * Takes whole records from a peer (hand-off, anti-entropy): each record's
   * versions, as `apply` would, then its state, as `merge` would, all of
   * them in one atomic, durable batch. A record this replica already holds
   * entirely (every version stored, every version the peer knows of known
   * here) is recognised from its stored lists and keys, without opening its
   * rows or writing anything.
   */
  async receive (records: WholeRecord[]): Promise<MergeOutcome[]> {
    this.checkOpen()
    const keys = records.map(r => recordKey(r.state.token, r.state.table, r.state.id))
    const release = await this.mutex.lock(keys)
    try {
      const states = new Map<string, RecordState | undefined>()
      const ops: BatchOp[] = []
      const touched: SummaryChange[] = []
      const outcomes = records.map((r, i): MergeOutcome => {
        const key = keys[i] as string
        const { table, token, id } = r.state
        const versions = new Map<string, VersionEntry>()
        for (const e of [...r.versions, ...r.state.heads]) {
          if (e.table !== table || e.id !== id || e.token !== token) throw new Error(`receive: a version of another record than ${key}`)
          versions.set(e.version, e)
        }
        if (!states.has(key)) {
          // One read of the stored record serves both questions: is it new here, or held here whole?
          const stored = this.records.getSync(key) as StoredRecord | undefined
          if (stored === undefined) {
            if (this.stageFirst(key, r.state, versions, states, ops, touched)) return 'merged'
          } else if (this.holdsStored(key, stored, r.state, [...versions.keys()])) return 'known'
          states.set(key, stored === undefined ? undefined : this.decodeRecord(table, token, id, stored))
        }
        let changed = false
        // Parents before children: a version sorts above its parents (see HybridClock.tickAfter).
        for (const v of [...versions.keys()].sort(compareVersions)) {
          const outcome = this.stage(versions.get(v) as VersionEntry, states, ops, touched)
          if (outcome === 'applied' || outcome === 'history') changed = true
        }
        return this.stageMerge(r.state, key, states, ops, touched) === 'merged' || changed ? 'merged' : 'known'
      })
      if (ops.length > 0) await this.committer.commit(ops)
      this.applySummary(touched)
      return outcomes
    } finally {
      release()
    }
  }

  /**
   * A record new here that has had one version only (the usual record a
   * hand-off carries) staged as insertOnce stages one: put as its
   * one-version state, without building it version by version. Returns
   * false, staging nothing, for any other record.
   */
  private stageFirst (key: string, state: RecordState, versions: Map<string, VersionEntry>, states: Map<string, RecordState | undefined>, ops: BatchOp[], touched: SummaryChange[]): boolean {
    const head = state.heads[0]
    if (head === undefined || state.heads.length !== 1 || versions.size !== 1 || head.parents.length > 0 || head.row === null) return false
    if (state.superseded.length > 0 || state.seen.length !== 1 || state.seen[0] !== head.version || this.purged.has(key)) return false
    ops.push({ type: 'put', key: this.records.prefix + key, value: this.encodeFirstVersion(head) })
    this.stageLive(head, ops)
    this.noteHeads(touched, key, head.token, undefined, [head.version])
    states.set(key, { table: head.table, id: head.id, token: head.token, heads: [head], seen: [head.version], superseded: [] })
    return true
  }

  /**
   * Whether this replica holds a record whole, as a peer describes it (by
   * version ids only): every version in `versions` stored, every one in
   * `seen` seen and every one in `superseded` known replaced here. A peer
   * asks before it sends a record it must know to be here (see `holds` in
   * the replica protocol).
   */
  holds (record: { table: string, token: string, id: string, seen: string[], superseded: string[], versions: string[] }): boolean {
    this.checkOpen()
    return this.holdsWhole(recordKey(record.token, record.table, record.id), record, record.versions)
  }

  /**
   * Whether this replica already holds all of a peer's record: every version
   * stored (as a head or in history) and everything the peer knows seen or
   * replaced known here. Read from the stored record without opening its rows.
   */
  private holdsWhole (key: string, state: Pick<RecordState, 'seen' | 'superseded'>, versions: string[]): boolean {
    const stored = this.records.getSync(key) as StoredRecord | undefined
    return stored !== undefined && this.holdsStored(key, stored, state, versions)
  }

  /** holdsWhole of a stored record already read */
  private holdsStored (key: string, stored: StoredRecord, state: Pick<RecordState, 'seen' | 'superseded'>, versions: string[]): boolean {
    if (this.purged.has(key)) return false
    const lists = storedLists(stored)
    const at = stored.horizon === undefined ? undefined : { horizon: stored.horizon } as unknown as RecordState
    const seenList = new Set(lists.seen)
    const replacedList = new Set(lists.superseded)
    const heads = new Set(stored.heads.map(h => h.version))
    const seen = (v: string): boolean => seenList.has(v) || this.oldKnown(key, at, v) === 1
    const replaced = (v: string): boolean => replacedList.has(v) || this.oldKnown(key, at, v) !== undefined
    return state.seen.every(seen) && state.superseded.every(replaced) &&
      versions.every(v => heads.has(v) || (seen(v) && this.history.getSync(key + SEP + v) !== undefined))
  }

  /** One record state from a peer merged into `states` and the batch being built (see merge) */
  private stageMerge (s: RecordState, key: string, states: Map<string, RecordState | undefined>, ops: BatchOp[], touched: SummaryChange[]): MergeOutcome {
    const marker = this.purged.get(key)
    if (marker !== undefined) {
      const heads = s.heads.filter(h => h.version > marker.version && !h.parents.some(p => p <= marker.version))
      if (heads.length === 0) return 'known'
      s = { ...s, heads, seen: s.seen.filter(v => v > marker.version), superseded: s.superseded.filter(v => v > marker.version) }
    }
    const before = states.has(key) ? states.get(key) : this._get(s.table, s.token, s.id)
    const seenList = new Set(before?.seen ?? [])
    const known = new Set(before?.superseded ?? [])
    // Versions below the record's horizon are looked up where the store keeps them.
    const seen = (v: string): boolean => seenList.has(v) || this.oldKnown(key, before, v, ops) === 1
    const replacedHere = (v: string): boolean => known.has(v) || this.oldKnown(key, before, v, ops) !== undefined
    if (s.seen.every(seen) && s.superseded.every(replacedHere) && s.heads.every(h => seen(h.version))) {
      states.set(key, before)
      return 'known'
    }
    const after = mergeStates([before, s]) as RecordState
    const mine = new Set(before?.heads.map(h => h.version))
    after.heads = after.heads.filter(h => mine.has(h.version) || !replacedHere(h.version))
    if (before?.horizon === undefined) delete after.horizon
    else after.horizon = before.horizon
    this.compactKnown(key, before?.horizon, after, ops)
    const kept = new Set(after.heads.map(h => h.version))
    // Local heads the peer knows replaced, and the peer's heads this replica knows replaced, become history.
    for (const h of before?.heads ?? []) if (!kept.has(h.version)) ops.push(put(this.history, key + SEP + h.version, this.sealEntry(h)))
    for (const h of s.heads) if (!kept.has(h.version) && !seen(h.version)) ops.push(put(this.history, key + SEP + h.version, this.sealEntry(h)))
    states.set(key, after)
    ops.push(put(this.records, key, this.encodeRecord(after)))
    this.stageIndexes(before, after, ops)
    this.noteHeads(touched, key, after.token, before?.heads.map(h => h.version), after.heads.map(h => h.version))
    return 'merged'
  }

  /**
   * The versions of a record besides its heads (its history), for sending it
   * whole: none, without a look, when the record lists no other version and
   * keeps none below a horizon (history holds only versions it has seen).
   */
  async historyOf (state: RecordState): Promise<VersionEntry[]> {
    this.checkOpen()
    if (state.horizon === undefined && state.seen.length <= state.heads.length) {
      const heads = new Set(state.heads.map(h => h.version))
      if (state.seen.every(v => heads.has(v))) return []
    }
    const prefix = recordKey(state.token, state.table, state.id) + SEP
    const out: VersionEntry[] = []
    for await (const value of this.history.values({ gt: prefix, lt: prefix + '\xff' })) out.push(this.openEntry(value))
    return out
  }

  /**
   * Removes this replica's copy of a record (its row, history and index
   * entries) once the record's owners hold it, but only if nothing arrived
   * since `expected` was read: a copy that changed meanwhile is kept.
   */
  async drop (expected: RecordState): Promise<boolean> {
    return (await this.dropMany([expected]))[0] === true
  }

  /** drop() of many records in one atomic, durable batch; says which were dropped */
  async dropMany (expected: RecordState[]): Promise<boolean[]> {
    this.checkOpen()
    const keys = expected.map(e => recordKey(e.token, e.table, e.id))
    const release = await this.mutex.lock(keys)
    try {
      const ops: BatchOp[] = []
      const touched: SummaryChange[] = []
      const done = new Set<string>()
      const dropped: boolean[] = []
      for (const [i, e] of expected.entries()) {
        const key = keys[i] as string
        const current = done.has(key) ? undefined : this.unchanged(key, e)
        if (current === undefined) { dropped.push(false); continue }
        ops.push(...(await this.erasure(key, current.table, current.token, current.id, current.heads, true, current)).ops)
        this.noteHeads(touched, key, current.token, current.heads.map(h => h.version), undefined)
        done.add(key)
        dropped.push(true)
      }
      if (ops.length > 0) await this.committer.commit(ops)
      this.applySummary(touched)
      return dropped
    } finally {
      release()
    }
  }

  /**
   * The record as stored, if it is still as `expected` was read (the same
   * versions seen, the same heads), told from its stored lists without
   * opening its rows again; undefined if it changed or is gone
   */
  private unchanged (key: string, expected: RecordState): RecordState | undefined {
    const stored = this.records.getSync(key) as StoredRecord | undefined
    if (stored === undefined) return undefined
    const { seen, superseded } = storedLists(stored)
    const was = new Set(expected.seen)
    if (seen.length !== was.size || !seen.every(v => was.has(v))) return undefined
    const heads = stored.heads.map(h => h.version)
    if (heads.length !== expected.heads.length || !expected.heads.every(h => heads.includes(h.version))) return undefined
    return { ...expected, seen, superseded, ...(stored.horizon === undefined ? {} : { horizon: stored.horizon }) }
  }

  /**
   * Erases a record: its current row, every version in history, its index
   * and table-list entries, and every hint holding a version of it (LevelDB
   * deletes, then a compaction of those keys, so the bytes leave the files
   * too). Keeps `marker`, so that no version up to the purge comes back.
   * Returns whether this node held a copy.
   */
  async purge (marker: PurgeMarker): Promise<boolean> {
    this.checkOpen()
    const key = recordKey(marker.token, marker.table, marker.id)
    const release = await this.mutex.lock([key])
    try {
      const current = this._getForPurge(marker.table, marker.token, marker.id)
      const held = current !== undefined
      const touched = this.noteHeads([], key, marker.token, this.storedHeads(key), undefined)
      const { ops, history } = await this.erasure(key, marker.table, marker.token, marker.id, current?.heads ?? [], held)
      // Hints name their records in the clear: only the entries of this record are dropped.
      const hintChanges: Array<{ key: string, left: number }> = []
      for await (const [k, v] of this.hints.iterator()) {
        if (!Array.isArray(v)) continue
        const entries = v as StoredEntry[]
        const left = entries.filter(e => !(e.table === marker.table && e.id === marker.id && e.token === marker.token))
        if (left.length === entries.length) continue
        ops.push(left.length === 0 ? del(this.hints, k) : put(this.hints, k, left))
        if (left.length === 0) hintChanges.push({ key: k, left: 0 })
      }
      const kept = this.purged.get(key)
      const newest = kept === undefined || marker.version > kept.version ? marker : kept
      const erased = ops.map(op => op.key)
      // LevelDB drops a deleted value only when a compaction merges the delete with it, and a
      // compaction never rewrites the deepest level on its own: the values go to table files first,
      // so the deletes land on a level above them, and the second compaction carries them down.
      await compactKeys(this.db, erased)
      ops.push(put(this.purges, key, newest))
      await this.committer.commit(ops)
      this.applySummary(touched)
      this.purged.set(key, newest)
      this.forgetHints(hintChanges.map(h => h.key))
      await compactKeys(this.db, erased)
      return held || history > 0
    } finally {
      release()
    }
  }

  /**
   * The deletes that take a record out of this store (drop, purge): its row
   * (when `held`), every version in history, its known-version keys, its
   * table-list entry and the index entries of its heads' rows. Hints are the
   * caller's.
   */
  private async erasure (key: string, table: string, token: string, id: string, heads: VersionEntry[], held = true, state?: RecordState): Promise<{ ops: BatchOp[], history: number }> {
    const ops: BatchOp[] = held ? [del(this.records, key)] : []
    let history = 0
    // A record that lists no version besides its heads and has no horizon has no history and no known keys.
    const single = state !== undefined && state.horizon === undefined && state.seen.every(v => state.heads.some(h => h.version === v))
    if (!single) {
      for await (const k of this.history.keys({ gt: key + SEP, lt: key + SEP + '\xff' })) { ops.push(del(this.history, k)); history++ }
      for await (const k of this.known.keys({ gt: key + SEP, lt: key + SEP + '\xff' })) ops.push(del(this.known, k))
    }
    const pos = token + SEP + id
    if (this.tables.getSync(table + SEP + pos) !== undefined) ops.push(del(this.tables, table + SEP + pos))
    const indexKeys = new Set<string>()
    for (const h of heads) {
      for (const col of this.indexes[table] ?? []) {
        const v = h.row?.[col]
        if (v !== null && v !== undefined) indexKeys.add(this.indexKey(table, col, v, pos))
      }
    }
    for (const k of indexKeys) ops.push(del(this.index, k))
    const orderedKeys = new Set<string>()
    for (const h of heads) if (h.row !== null) for (const k of this.orderedKeys(table, h.row, token, id)) orderedKeys.add(k)
    for (const k of orderedKeys) ops.push(del(this.ordered, k))
    return { ops, history }
  }

  /** The record as stored, if any, even if it does not open (a damaged record is erased too) */
  private _getForPurge (table: string, token: string, id: string): RecordState | undefined {
    try {
      return this._get(table, token, id)
    } catch (err) {
      if (!(err instanceof IntegrityError)) throw err
      const value = this.records.getSync(recordKey(token, table, id)) as StoredRecord
      return { table, id, token, heads: [], ...storedLists(value) }
    }
  }

  /** The purge marker of a record, if it was erased here */
  purgeMarker (table: string, token: string, id: string): PurgeMarker | undefined {
    return this.purged.get(recordKey(token, table, id))
  }

  /** Keeps a purge for a peer that was down when it ran; handed to it like a hint */
  async addPurgeHint (peerId: string, marker: PurgeMarker): Promise<void> {
    this.checkOpen()
    this.hintSeq = (this.hintSeq + 1) % 1_000_000
    const key = peerId + SEP + String(this.env.now()).padStart(15, '0') + String(this.hintSeq).padStart(6, '0')
    await this.committer.commit([put(this.hints, key, { purge: marker })])
    this.hintCounts.set(peerId, (this.hintCounts.get(peerId) ?? 0) + 1)
  }

  private stage (entry: VersionEntry, states: Map<string, RecordState | undefined>, ops: BatchOp[], touched: SummaryChange[]): ApplyOutcome {
    const key = recordKey(entry.token, entry.table, entry.id)
    const marker = this.purged.get(key)
    // A version up to the purge is gone for good; so is a later one that builds on one of them (a
    // write that read the row before the purge): only a new row, with no parents, comes after it.
    if (marker !== undefined && (entry.version <= marker.version || entry.parents.some(p => p <= marker.version))) return 'purged'
    const before = states.get(key)
    const old = this.oldKnown(key, before, entry.version, ops)
    if (before?.seen.includes(entry.version) === true || old === 1) {
      // Known, but perhaps only by id (a state merged from a peer): keep the version itself in history.
      if (before?.heads.some(h => h.version === entry.version) === true) return 'duplicate'
      const historyKey = key + SEP + entry.version
      const stored = this.history.getSync(historyKey) !== undefined || ops.some(op => op.key === this.history.prefix + historyKey)
      if (!stored) ops.push(put(this.history, historyKey, this.sealEntry(entry)))
      // A version known by id only came with no parents: a head it replaces is replaced all the same.
      const replacedHead = this.replaceKnownParents(key, before, entry, states, ops, touched)
      return stored && !replacedHead ? 'duplicate' : 'history'
    }

    const { after, isHead, replaced } = nextState(before, entry, old !== undefined)
    this.compactKnown(key, before?.horizon, after, ops)
    // A version that a stored version already replaces is history, not a head;
    // a head this version replaces moves from the record to history.
    for (const h of isHead ? replaced : [entry, ...replaced]) ops.push(put(this.history, key + SEP + h.version, this.sealEntry(h)))
    states.set(key, after)
    ops.push(put(this.records, key, this.encodeRecord(after)))
    this.stageIndexes(before, after, ops)
    this.noteHeads(touched, key, entry.token, before?.heads.map(h => h.version), after.heads.map(h => h.version))
    return isHead ? 'applied' : 'history'
  }

  /**
   * A version this replica knew only by id (merged from a peer whose lists no
   * longer reach back that far) arrives with its parents: any head among them
   * is replaced and moves to history. Without this, a replica that missed more
   * updates than a record's lists keep would hold its stale head beside the
   * newest for good, a conflict no other replica sees, which anti-entropy
   * could never settle. A head is dropped only when another one stays.
   */
  private replaceKnownParents (key: string, before: RecordState | undefined, entry: VersionEntry, states: Map<string, RecordState | undefined>, ops: BatchOp[], touched: SummaryChange[]): boolean {
    if (before === undefined || entry.parents.length === 0) return false
    const parents = new Set(entry.parents)
    const replaced = before.heads.filter(h => parents.has(h.version))
    if (replaced.length === 0 || replaced.length === before.heads.length) return false
    const after: RecordState = { ...before, heads: before.heads.filter(h => !parents.has(h.version)), superseded: [...new Set([...before.superseded, ...replaced.map(h => h.version)])] }
    this.compactKnown(key, before.horizon, after, ops)
    for (const h of replaced) ops.push(put(this.history, key + SEP + h.version, this.sealEntry(h)))
    states.set(key, after)
    ops.push(put(this.records, key, this.encodeRecord(after)))
    this.stageIndexes(before, after, ops)
    this.noteHeads(touched, key, entry.token, before.heads.map(h => h.version), after.heads.map(h => h.version))
    return true
  }

  /**
   * What stageIndexes does for a record that becomes live with its first
   * version, without building its state: its table-list entry, its equality
   * index entries and its ordered index entries
   */
  private stageLive (first: VersionEntry, ops: BatchOp[]): void {
    const row = first.row as Row
    const pos = first.token + SEP + first.id
    ops.push({ type: 'put', key: this.tables.prefix + first.table + SEP + pos, value: '1' })
    for (const col of this.indexes[first.table] ?? []) {
      const v = row[col]
      if (v !== null && v !== undefined) ops.push(put(this.index, this.indexKey(first.table, col, v, pos), 1))
    }
    for (const k of this.orderedKeys(first.table, row, first.token, first.id)) ops.push(put(this.ordered, k, 1))
  }

  private stageIndexes (before: RecordState | undefined, after: RecordState, ops: BatchOp[]): void {
    const oldRow = winner(before)?.row ?? null
    const newRow = winner(after)?.row ?? null
    const pos = after.token + SEP + after.id
    const tableKey = after.table + SEP + pos
    if (oldRow === null && newRow !== null) ops.push(put(this.tables, tableKey, 1))
    if (oldRow !== null && newRow === null) ops.push(del(this.tables, tableKey))
    for (const col of this.indexes[after.table] ?? []) {
      const oldV = oldRow?.[col]
      const newV = newRow?.[col]
      if (oldRow !== null && oldV !== null && oldV !== undefined && (newRow === null || oldV !== newV)) {
        ops.push(del(this.index, this.indexKey(after.table, col, oldV, pos)))
      }
      if (newRow !== null && newV !== null && newV !== undefined && (oldRow === null || oldV !== newV)) {
        ops.push(put(this.index, this.indexKey(after.table, col, newV, pos), 1))
      }
    }
    // Ordered entries follow the winner too: those of the old row that the new one does not have go.
    const oldKeys = oldRow === null ? [] : this.orderedKeys(after.table, oldRow, after.token, after.id)
    const newKeys = newRow === null ? [] : this.orderedKeys(after.table, newRow, after.token, after.id)
    for (const k of oldKeys) if (!newKeys.includes(k)) ops.push(del(this.ordered, k))
    for (const k of newKeys) if (!oldKeys.includes(k)) ops.push(put(this.ordered, k, 1))
  }

  /** The ordered-index entry keys of a row (none for internal tables) */
  private orderedKeys (table: string, row: Row, token: string, id: string): string[] {
    const def = findTable(table)
    return def === undefined ? [] : orderedEntries(def, row, token, id)
  }

  /**
   * Reads a table's live rows in order (see RowQuery and planRows): through
   * an ordered index that gives the order, stopping after `limit`, or from
   * the narrowest candidates with the best `limit` kept. Every row is
   * checked against the filter as it is now, so an entry that lags its row
   * never answers wrongly.
   */
  async query (table: string, query: RowQuery): Promise<RowPage & { plan: RowPlan }> {
    this.checkOpen()
    const def = findTable(table)
    if (def === undefined) throw new NtsoekheError('UNKNOWN_TABLE', `Unknown table: ${table}`)
    const plan = planRows(def, query, this.indexes[table] ?? [])
    const page = plan.kind === 'ordered' ? await this.queryOrdered(def, query, plan) : await this.querySorted(def, query, plan)
    return { ...page, plan }
  }

  /**
   * Every live row of a table that passes `filter` (within `tokenRanges`),
   * in no particular order: what a query fragment reads (see
   * query/fragment.ts). The narrowest index the filter allows is used.
   */
  async * rows (table: string, filter: RowQuery['filter'], tokenRanges?: Array<[string, string]>): AsyncGenerator<RecordState> {
    this.checkOpen()
    const def = findTable(table)
    if (def === undefined) throw new NtsoekheError('UNKNOWN_TABLE', `Unknown table: ${table}`)
    const plan = planRows(def, { ...(filter === undefined ? {} : { filter }), limit: 1 }, this.indexes[table] ?? [])
    const source: Extract<RowPlan, { kind: 'sorted' }>['source'] = plan.kind === 'ordered'
      ? { type: 'range', index: plan.index, prefix: plan.prefix, lowerInclusive: true, upperInclusive: false, ...(plan.lower === undefined ? {} : { lower: plan.lower }), ...(plan.upper === undefined ? {} : { upper: plan.upper }) }
      : plan.source
    // An entry that lags its row (the row's winner changed since) may list a row twice.
    const seen = new Set<string>()
    for await (const { token, id } of this.candidates(def, source, tokenRanges)) {
      if (!inRanges(token, tokenRanges)) continue
      const pos = token + SEP + id
      if (seen.has(pos)) continue
      seen.add(pos)
      const state = this._get(table, token, id)
      const row = winner(state)?.row ?? null
      if (state === undefined || row === null) continue
      if (filter !== undefined && evaluate(def, filter, row) !== true) continue
      yield state
    }
  }

  private async queryOrdered (def: TableDef, query: RowQuery, plan: Extract<RowPlan, { kind: 'ordered' }>): Promise<RowPage> {
    const desc = query.desc === true
    let gte = plan.lower ?? plan.prefix
    let lt = plan.upper ?? plan.prefix + '\xff'
    if (query.after !== undefined) {
      const resume = plan.prefix + query.after
      if (desc) { if (resume < lt) lt = resume } else if (resume + '\u0000' > gte) gte = resume + '\u0000'
    }
    const rows: RowPage['rows'] = []
    let more = false
    if (gte >= lt) return { rows }
    // A range whose leading columns are fixed (one doctor's entries) may be held in memory; else
    // keys a batch at a time: one thread-pool round trip per batch, not per key.
    const held = plan.prefix.length > def.name.length + indexName(plan.index).length + 2 ? await this.cachedRange(this.ordered, plan.prefix) : undefined
    const keys = held !== undefined ? between(held, gte, lt, desc) : keysOf(this.ordered, { gte, lt, reverse: desc }, Math.min(query.limit + 1, KEY_BATCH))
    try {
      for await (const k of keys) {
        const { token, id } = positionOf(k)
        if (!inRanges(token, query.tokenRanges)) continue
        const state = this._get(def.name, token, id)
        const row = winner(state)?.row ?? null
        if (state === undefined || row === null) continue
        // An entry of a version that is no longer the winner is skipped: the winner's own entry lists it.
        if (orderedEntry(def, plan.index, row, token, id) !== k) continue
        if (query.filter !== undefined && evaluate(def, query.filter, row) !== true) continue
        if (rows.length >= query.limit) { more = true; break }
        rows.push({ state, key: k.slice(plan.prefix.length) })
      }
    } finally {
      if (!Array.isArray(keys)) await (keys as AsyncGenerator<string>).return(undefined)
    }
    const last = rows[rows.length - 1]
    return more && last !== undefined ? { rows, next: last.key } : { rows }
  }

  private async querySorted (def: TableDef, query: RowQuery, plan: Extract<RowPlan, { kind: 'sorted' }>): Promise<RowPage> {
    const desc = query.desc === true
    const order = orderColumns(def, query.orderBy)
    const before = (a: string, b: string): boolean => desc ? a > b : a < b
    // The best limit + 1 so far, in order: one more than asked says whether more follow.
    const best: Array<{ state: RecordState, key: string }> = []
    const keep = query.limit + 1
    const seen = new Set<string>()
    for await (const { token, id } of this.candidates(def, plan.source, query.tokenRanges)) {
      if (!inRanges(token, query.tokenRanges)) continue
      const pos = token + SEP + id
      if (seen.has(pos)) continue
      seen.add(pos)
      const state = this._get(def.name, token, id)
      const row = winner(state)?.row ?? null
      if (state === undefined || row === null) continue
      if (query.filter !== undefined && evaluate(def, query.filter, row) !== true) continue
      const key = sortedKey(def, order, row, token, id)
      if (query.after !== undefined && !before(query.after, key)) continue
      if (best.length >= keep && !before(key, (best[best.length - 1] as { key: string }).key)) continue
      let lo = 0
      let hi = best.length
      while (lo < hi) {
        const mid = (lo + hi) >>> 1
        if (before((best[mid] as { key: string }).key, key)) lo = mid + 1
        else hi = mid
      }
      best.splice(lo, 0, { state, key })
      if (best.length > keep) best.pop()
    }
    if (best.length <= query.limit) return { rows: best }
    const rows = best.slice(0, query.limit)
    return { rows, next: (rows[rows.length - 1] as { key: string }).key }
  }

  /** The positions a 'sorted' plan looks at (possibly more than once: the caller drops repeats) */
  private async * candidates (def: TableDef, source: Extract<RowPlan, { kind: 'sorted' }>['source'], ranges: Array<[string, string]> | undefined): AsyncGenerator<{ token: string, id: string }> {
    if (source.type === 'equality') {
      const base = this.indexKey(def.name, source.column, source.value, '')
      for await (const k of await this.cachedRange(this.index, base) ?? keysOf(this.index, { gt: base, lt: base + '\xff' })) {
        const pos = k.slice(base.length)
        const sep = pos.indexOf(SEP)
        yield { token: pos.slice(0, sep), id: pos.slice(sep + 1) }
      }
      return
    }
    if (source.type === 'range') {
      const gte = source.lower ?? source.prefix
      const lt = source.upper ?? source.prefix + '\xff'
      // Only a prefix that fixes the first column is one small range worth holding.
      const held = source.prefix.length > def.name.length + indexName(source.index).length + 2 ? await this.cachedRange(this.ordered, source.prefix) : undefined
      for await (const k of held !== undefined ? between(held, gte, lt, false) : keysOf(this.ordered, { gte, lt })) yield positionOf(k)
      return
    }
    // The whole table, one token range at a time: the table list is in token order.
    const base = def.name + SEP
    for (const [from, to] of ranges ?? [['', '']]) {
      for await (const k of keysOf(this.tables, { gte: base + from, lt: to === '' ? base + '\xff' : base + to })) {
        const pos = k.slice(base.length)
        const sep = pos.indexOf(SEP)
        yield { token: pos.slice(0, sep), id: pos.slice(sep + 1) }
      }
    }
  }

  /**
   * Every key of `sub` under `prefix`, from the range cache (read once from
   * LevelDB when not held), or undefined when the range is too large to
   * hold or there is no cache: the caller reads LevelDB itself.
   */
  private async cachedRange (sub: Sub, prefix: string): Promise<readonly string[] | undefined> {
    if (this.rangeCache === undefined) return undefined
    return await this.rangeCache.keys(sub.prefix + prefix, async limit => await sub.keys({ gt: prefix, lt: prefix + '\xff', limit }).all())
  }

  /**
   * Rebuilds a table's index entries (equality and ordered) from its rows,
   * while it keeps serving: each row's entries are put under its lock, then
   * entries that no row accounts for are deleted. `progress` hears how many
   * rows of how many are done.
   */
  async reindex (table: string, progress?: (done: number, total: number) => void): Promise<{ rows: number, added: number, removed: number }> {
    this.checkOpen()
    const def = findTable(table)
    if (def === undefined) throw new NtsoekheError('UNKNOWN_TABLE', `Unknown table: ${table}`)
    const total = this.rowCounts.get(table) ?? 0
    let done = 0
    let added = 0
    let removed = 0
    const base = table + SEP
    let positions: string[] = []
    const flush = async (): Promise<void> => {
      if (positions.length === 0) return
      const keys = positions.map(p => { const sep = p.indexOf(SEP); return recordKey(p.slice(0, sep), table, p.slice(sep + 1)) })
      const release = await this.mutex.lock(keys)
      try {
        const ops: BatchOp[] = []
        for (const p of positions) {
          const sep = p.indexOf(SEP)
          const token = p.slice(0, sep)
          const id = p.slice(sep + 1)
          const row = winner(this._get(table, token, id))?.row ?? null
          if (row === null) continue
          for (const k of this.entriesOf(def, row, token, id)) {
            if ((k.ordered ? this.ordered : this.index).getSync(k.key) === undefined) { ops.push(put(k.ordered ? this.ordered : this.index, k.key, 1)); added++ }
          }
        }
        if (ops.length > 0) await this.committer.commit(ops)
      } finally {
        release()
      }
      done += positions.length
      positions = []
      progress?.(done, Math.max(done, total))
    }
    for await (const k of this.tables.keys({ gt: base, lt: base + '\xff' })) {
      positions.push(k.slice(base.length))
      if (positions.length >= REINDEX_BATCH) await flush()
    }
    await flush()
    // Entries no live row accounts for (a lost delete, a changed index definition) go.
    for (const [sub, ordered] of [[this.index, false], [this.ordered, true]] as const) {
      let stale: string[] = []
      const drop = async (): Promise<void> => {
        if (stale.length === 0) return
        const keys = stale.map(k => { const { token, id } = positionOf(k); return recordKey(token, table, id) })
        const release = await this.mutex.lock(keys)
        try {
          const ops: BatchOp[] = []
          for (const k of stale) {
            const { token, id } = positionOf(k)
            const row = winner(this._get(table, token, id))?.row ?? null
            if (row === null || !this.entriesOf(def, row, token, id).some(e => e.ordered === ordered && e.key === k)) { ops.push(del(sub, k)); removed++ }
          }
          if (ops.length > 0) await this.committer.commit(ops)
        } finally {
          release()
        }
        stale = []
      }
      for await (const k of sub.keys({ gt: base, lt: base + '\xff' })) {
        stale.push(k)
        if (stale.length >= REINDEX_BATCH) await drop()
      }
      await drop()
    }
    return { rows: done, added, removed }
  }

  /** Every index entry a row should have here: equality entries (keyed hashes for sensitive columns) and ordered ones */
  private entriesOf (def: TableDef, row: Row, token: string, id: string): Array<{ ordered: boolean, key: string }> {
    const pos = token + SEP + id
    const out: Array<{ ordered: boolean, key: string }> = []
    for (const col of this.indexes[def.name] ?? []) {
      const v = row[col]
      if (v !== null && v !== undefined) out.push({ ordered: false, key: this.indexKey(def.name, col, v, pos) })
    }
    for (const key of orderedEntries(def, row, token, id)) out.push({ ordered: true, key })
    return out
  }

  /**
   * Builds the ordered indexes when the store was written without them (an
   * older version) or with other definitions: at open, before any request,
   * from every live row, then notes their signature.
   */
  private async openOrderedIndexes (): Promise<void> {
    const signature = orderedSignature()
    if (await this.meta.get(ORDERED_KEY) === signature) return
    let ops: BatchOp[] = []
    for await (const k of this.ordered.keys()) {
      ops.push(del(this.ordered, k))
      if (ops.length >= MIGRATE_BATCH) { await writeBatch(this.db, ops, this.sync); ops = [] }
    }
    let rows = 0
    for await (const k of this.tables.keys()) {
      const [table, token, id] = k.split(SEP, 3) as [string, string, string]
      const def = findTable(table)
      if (def === undefined) continue
      const row = winner(this._get(table, token, id))?.row ?? null
      if (row === null) continue
      for (const key of orderedEntries(def, row, token, id)) ops.push(put(this.ordered, key, 1))
      rows++
      if (ops.length >= MIGRATE_BATCH) { await writeBatch(this.db, ops, this.sync); ops = [] }
    }
    ops.push(put(this.meta, ORDERED_KEY, signature))
    await writeBatch(this.db, ops, true)
    if (rows > 0) this.log?.(`store: ordered indexes built for ${rows} rows`)
  }

  /**
   * Lists a table's live rows in (token, id) order, after a position, with
   * equality filters. Uses a secondary index when a filter is on an indexed
   * column, else scans the table.
   */
  async scan (table: string, options: ScanOptions): Promise<ScanResult> {
    this.checkOpen()
    const where = options.where ?? {}
    const indexed = Object.keys(where).find(c => (this.indexes[table] ?? []).includes(c))
    const base = indexed === undefined
      ? table + SEP
      : this.indexKey(table, indexed, where[indexed] as Value, '')
    // One token's rows are one contiguous run of the table list, which is in position (token) order.
    const only = options.token === undefined ? undefined : options.token + SEP
    const prefix = only === undefined || indexed !== undefined ? base : base + only
    const resume = options.after === undefined ? undefined : base + options.after
    const gt = resume !== undefined && resume > prefix ? resume : prefix
    const iterator = (indexed === undefined ? this.tables : this.index).keys({ gt, lt: prefix + '\xff' })
    const rows: ScanResult['rows'] = []
    let more = false
    try {
      for await (const k of iterator) {
        const position = k.slice(base.length)
        if (only !== undefined && !position.startsWith(only)) continue
        const sep = position.indexOf(SEP)
        const token = position.slice(0, sep)
        const id = position.slice(sep + 1)
        const state = this._get(table, token, id)
        const row = winner(state)?.row ?? null
        if (state === undefined || row === null) continue
        if (!matches(row, where)) continue
        if (rows.length >= options.limit) { more = true; break }
        rows.push({ state, position })
      }
    } finally {
      await iterator.close()
    }
    const lastRow = rows[rows.length - 1]
    return more && lastRow !== undefined ? { rows, next: lastRow.position } : { rows }
  }

  /** Live rows per table in this shard (kept in memory: status and ring ask on every call) */
  async countRows (): Promise<Record<string, number>> {
    this.checkOpen()
    const counts: Record<string, number> = {}
    for (const [table, n] of [...this.rowCounts].sort((a, b) => a[0] < b[0] ? -1 : 1)) if (n > 0) counts[table] = n
    return counts
  }

  /**
   * Live rows per table whose token lies in one of `ranges`, `[from, to)`
   * pairs as the ring gives them (see HashRing.ranges: '' for either end of
   * the token space, a token followed by NUL for "after this token"): a count
   * over key ranges of the table list, reading no record. Tables with no row
   * there, and internal tables (named `_…`: locators, unique claims, audit
   * entries), are left out.
   */
  async countRowsIn (ranges: ReadonlyArray<readonly [string, string]>): Promise<Record<string, number>> {
    this.checkOpen()
    const counts: Record<string, number> = {}
    const sorted = [...ranges].sort((a, b) => a[0] < b[0] ? -1 : 1)
    const after = String.fromCharCode(SEP.charCodeAt(0) + 1)
    // A bound as a table-list key: the keys of token t are `<table>!t!<id>`, so "after t" is `<table>!t` + the character after `!`.
    const bound = (table: string, b: string, open: string): string => b === '' ? open : b.endsWith('\u0000') ? table + SEP + b.slice(0, -1) + after : table + SEP + b
    for (const table of [...this.rowCounts.keys()].sort()) {
      const leaves = this.leafCounts.get(table)
      if ((this.rowCounts.get(table) ?? 0) <= 0 || table.startsWith('_') || leaves === undefined) continue
      let n = 0
      // One iterator a table, moved to each edge leaf it reads: far cheaper than an iterator a range.
      const iterator = this.tables.keys({ gte: table + SEP, lt: table + after })
      const keysBetween = async (gte: string, lt: string): Promise<number> => {
        if (gte >= lt) return 0
        iterator.seek(gte)
        let found = 0
        // Small reads first: what is read past the end is wasted.
        for (let size = 16; ; size = Math.min(size * 2, 1024)) {
          const keys = await iterator.nextv(size)
          const inside = keys.findIndex(k => k >= lt)
          found += inside < 0 ? keys.length : inside
          if (inside >= 0 || keys.length === 0) return found
        }
      }
      const leafStart = (leaf: number): string => leaf >= LEAVES ? table + after : table + SEP + leafPrefix(leaf)
      try {
        for (const [from, to] of sorted) {
          const lo = bound(table, from, table + SEP)
          const hi = bound(table, to, table + after)
          const first = from === '' ? 0 : leafOf(from)
          const last = to === '' ? LEAVES - 1 : leafOf(to)
          if (first === last) {
            if ((leaves[first] ?? 0) > 0) n += await keysBetween(lo, hi)
            continue
          }
          // The leaves a range covers whole are summed; the two it cuts are read.
          if ((leaves[first] ?? 0) > 0) n += await keysBetween(lo, leafStart(first + 1))
          for (let leaf = first + 1; leaf < last; leaf++) n += leaves[leaf] ?? 0
          if ((leaves[last] ?? 0) > 0) n += await keysBetween(leafStart(last), hi)
        }
      } finally {
        await iterator.close()
      }
      if (n > 0) counts[table] = n
    }
    return counts
  }

  /** Moves the count of `table`'s leaf that `position` (`<token>!<id>`) falls in */
  private countLeaf (table: string, position: string, delta: number): void {
    // Internal tables are never counted by range (countRowsIn leaves them out).
    if (table.startsWith('_')) return
    let leaves = this.leafCounts.get(table)
    if (leaves === undefined) {
      leaves = new Int32Array(LEAVES)
      this.leafCounts.set(table, leaves)
    }
    const leaf = leafOf(position)
    leaves[leaf] = (leaves[leaf] ?? 0) + delta
  }

  /** A committed batch's table-list entries: a put is a row that became live here, a del one that went */
  private countTableOps (ops: BatchOp[]): void {
    const prefix = this.tables.prefix
    for (const op of ops) {
      if (!op.key.startsWith(prefix)) continue
      const table = op.key.slice(prefix.length, op.key.indexOf(SEP, prefix.length))
      this.rowCounts.set(table, (this.rowCounts.get(table) ?? 0) + (op.type === 'put' ? 1 : -1))
      this.countLeaf(table, op.key.slice(prefix.length + table.length + 1), op.type === 'put' ? 1 : -1)
    }
  }

  /** The hash summary of every record's heads by token range (see RangeSummary) */
  get summary (): RangeSummary {
    return this.rangeSummary
  }

  /** The summary rebuilt from every stored record: what the incrementally kept one must equal */
  async recomputeSummary (): Promise<RangeSummary> {
    this.checkOpen()
    return await this.scanSummary()
  }

  private async scanSummary (): Promise<RangeSummary> {
    const summary = new RangeSummary()
    for await (const [k, v] of this.records.iterator()) {
      summary.toggle(k.slice(0, k.indexOf(SEP)), recordDigest(k, (v as StoredRecord).heads.map(h => h.version)))
    }
    return summary
  }

  /** Takes the summary saved at the last clean close (and removes it, so a crash leaves none), else rebuilds it */
  private async openSummary (): Promise<void> {
    const saved = RangeSummary.fromJSON(await this.meta.get(SUMMARY_KEY))
    if (saved !== undefined) {
      await writeBatch(this.db, [del(this.meta, SUMMARY_KEY)], true)
      this.rangeSummary = saved
    } else {
      this.rangeSummary = await this.scanSummary()
    }
  }

  /**
   * Up to `limit` records of one leaf of the token space (or of the leaves
   * from `leaf` through `through`) after `after` (a record key), each with
   * its digest and head versions
   */
  async recordDigests (leaf: number, options: { after?: string, limit: number, through?: number }): Promise<Array<{ key: string, token: string, table: string, id: string, digest: string, heads: string[] }>> {
    this.checkOpen()
    const prefix = leafPrefix(leaf)
    const end = leafPrefix(options.through ?? leaf) + '\xff'
    const out: Array<{ key: string, token: string, table: string, id: string, digest: string, heads: string[] }> = []
    const range = options.after !== undefined && options.after > prefix ? { gt: options.after } : { gte: prefix }
    for await (const [k, v] of this.records.iterator({ ...range, lt: end, limit: options.limit })) {
      const [token, table, id] = k.split(SEP, 3) as [string, string, string]
      const heads = (v as StoredRecord).heads.map(h => h.version)
      out.push({ key: k, token, table, id, digest: recordDigest(k, heads).toString('hex'), heads })
    }
    return out
  }

  /**
   * Up to `limit` records of the whole store after `after` (a record key), in
   * key order, each with its head versions and digest, without opening their
   * rows: what the chaos suite's checker compares across nodes.
   */
  async recordHeads (options: { after?: string, limit: number }): Promise<Array<{ key: string, token: string, table: string, id: string, heads: string[], digest: string }>> {
    this.checkOpen()
    const out: Array<{ key: string, token: string, table: string, id: string, heads: string[], digest: string }> = []
    for await (const [k, v] of this.records.iterator({ ...(options.after === undefined ? {} : { gt: options.after }), limit: options.limit })) {
      const [token, table, id] = k.split(SEP, 3) as [string, string, string]
      const heads = (v as StoredRecord).heads.map(h => h.version)
      out.push({ key: k, token, table, id, heads, digest: recordDigest(k, heads).toString('hex') })
    }
    return out
  }

  /**
   * Whether this replica holds what a peer's copy of a record has, judged by
   * the peer's heads: every one of them seen here (so stored here, or
   * replaced by a version stored here). Then the peer's copy has nothing
   * this one lacks, and only this one need travel.
   */
  holdsHeads (key: string, heads: readonly string[]): boolean {
    this.checkOpen()
    const stored = this.records.getSync(key) as StoredRecord | undefined
    if (stored === undefined || heads.length === 0) return false
    const seen = new Set(storedLists(stored).seen)
    const at = stored.horizon === undefined ? undefined : { horizon: stored.horizon } as unknown as RecordState
    return heads.every(v => seen.has(v) || this.oldKnown(key, at, v) === 1)
  }

  /**
   * A record's head versions, without opening its rows (no decryption): what
   * a quorum read compares with a peer's copy before it asks for the rows.
   * Undefined when the record is not held.
   */
  headsOf (table: string, token: string, id: string): string[] | undefined {
    this.checkOpen()
    return this.storedHeads(recordKey(token, table, id))
  }

  /** The digest (hex) of one record as recordDigests gives it, by its key; undefined when it is not held */
  digestOf (key: string): string | undefined {
    this.checkOpen()
    const heads = this.storedHeads(key)
    return heads === undefined ? undefined : recordDigest(key, heads).toString('hex')
  }

  /** A record's head versions as stored, without opening its rows */
  private storedHeads (key: string): string[] | undefined {
    const value = this.records.getSync(key) as StoredRecord | undefined
    return value?.heads.map(h => h.version)
  }

  /** Notes that a record's heads change with a commit: the summary takes it once the commit is durable */
  private noteHeads (touched: SummaryChange[], key: string, token: string, before: string[] | undefined, after: string[] | undefined): SummaryChange[] {
    if (before !== undefined && after !== undefined && before.length === after.length && before.every(v => after.includes(v))) return touched
    if (before !== undefined) touched.push({ token, digest: recordDigest(key, before) })
    if (after !== undefined) touched.push({ token, digest: recordDigest(key, after) })
    return touched
  }

  private applySummary (touched: SummaryChange[]): void {
    for (const t of touched) this.rangeSummary.toggle(t.token, t.digest)
  }

  /** Every record state whose token lies in [from, to), for hand-off and anti-entropy */
  async * scanRecords (range: { from?: string, to?: string } = {}): AsyncGenerator<RecordState> {
    for await (const page of this.scanPages(range)) {
      for (const r of page) {
        const state = r.open()
        if (state !== undefined) yield state
      }
    }
  }

  /**
   * Every record whose token lies in [from, to), in key order, a page of
   * keys at a time: its table, token and id, and `open()`, which reads and
   * decodes it (its rows decrypted) only when the caller wants it, as it is
   * then (undefined if it is gone): a rebalance looks at every record and
   * sends a few.
   */
  async * scanPages (range: { from?: string, to?: string } = {}, pageSize = SCAN_PAGE): AsyncGenerator<Array<{ table: string, token: string, id: string, open: () => RecordState | undefined }>> {
    this.checkOpen()
    const opts: { gte?: string, lt?: string } = {}
    if (range.from !== undefined) opts.gte = range.from
    if (range.to !== undefined) opts.lt = range.to
    const iterator = this.records.keys(opts)
    try {
      for (;;) {
        // nextv: a page per call into LevelDB, not a promise per record.
        const keys = await iterator.nextv(pageSize) as string[]
        if (keys.length === 0) return
        yield keys.map(k => {
          const [token, table, id] = k.split(SEP, 3) as [string, string, string]
          return { table, token, id, open: () => this._get(table, token, id) }
        })
      }
    } finally {
      await iterator.close()
    }
  }

  /**
   * Up to `limit` whole records (state and every version) with keys in
   * [from, to), after the record key `after`, in key order, for a backup.
   * The page is read from one LevelDB snapshot: a record written meanwhile
   * is in it as it was before that write or after it, never half of each.
   * A full page goes on to the end of its last record's shard (token), by
   * up to `limit` more records, so the records one batch wrote (one
   * patient's, which share a token and are committed together) come from
   * one snapshot: all in the backup or none.
   * `next` is the key to resume after when more may follow.
   */
  async backupPage (options: { from?: string, to?: string, after?: string, limit: number }): Promise<{ records: WholeRecord[], next?: string }> {
    this.checkOpen()
    const snapshot = this.db.snapshot()
    try {
      const range: { gt?: string, gte?: string, lt?: string } = {}
      if (options.after !== undefined && (options.from === undefined || options.after >= options.from)) range.gt = options.after
      else if (options.from !== undefined) range.gte = options.from
      if (options.to !== undefined) range.lt = options.to
      // all(): the page in a few calls into LevelDB (nextv), not a promise per record.
      const raw = await this.records.iterator({ ...range, limit: options.limit, snapshot }).all() as Array<[string, StoredRecord]>
      const full = raw.length === options.limit
      const cut = raw[raw.length - 1]?.[0]
      if (full && cut !== undefined) {
        // The rest of the last record's shard: keys are `<token>!<table>!<id>`, and '"' follows '!'.
        const shardEnd = cut.slice(0, cut.indexOf(SEP)) + '"'
        const lt = options.to !== undefined && options.to < shardEnd ? options.to : shardEnd
        raw.push(...await this.records.iterator({ gt: cut, lt, limit: options.limit, snapshot }).all() as Array<[string, StoredRecord]>)
      }
      const first = raw[0]?.[0]
      const last = raw[raw.length - 1]?.[0]
      if (first === undefined || last === undefined) return { records: [] }
      // History keys are `<record key>!<version>`: the page's history is one contiguous run, read in the same pass.
      const history = new Map<string, StoredEntry[]>()
      for (const [k, v] of await this.history.iterator({ gt: first + SEP, lt: last + SEP + '\xff', snapshot }).all()) {
        const owner = k.slice(0, k.lastIndexOf(SEP))
        let list = history.get(owner)
        if (list === undefined) { list = []; history.set(owner, list) }
        list.push(v as StoredEntry)
      }
      const records = raw.map(([k, v]): WholeRecord => {
        const [token, table, id] = k.split(SEP, 3) as [string, string, string]
        const state = this.decodeRecord(table, token, id, v)
        const versions = [...state.heads, ...(history.get(k) ?? []).map(e => this.openEntry(e))]
        versions.sort((a, b) => compareVersions(a.version, b.version))
        return { state, versions }
      })
      return full ? { records, next: last } : { records }
    } finally {
      await snapshot.close()
    }
  }

  /** Keeps versions a down replica missed, to hand them off when it returns (hinted handoff) */
  async addHint (peerId: string, entries: VersionEntry[]): Promise<void> {
    this.checkOpen()
    this.hintSeq = (this.hintSeq + 1) % 1_000_000
    const key = peerId + SEP + String(this.env.now()).padStart(15, '0') + String(this.hintSeq).padStart(6, '0')
    await this.committer.commit([put(this.hints, key, entries.map(e => this.sealEntry(e)))])
    this.hintCounts.set(peerId, (this.hintCounts.get(peerId) ?? 0) + 1)
  }

  /** Peers that have hints waiting (kept in memory: asked every handoff round and on every status) */
  async hintedPeers (): Promise<string[]> {
    this.checkOpen()
    return [...this.hintCounts.keys()]
  }

  /** Hints waiting, per peer */
  hintCount (peerId?: string): number {
    if (peerId !== undefined) return this.hintCounts.get(peerId) ?? 0
    let n = 0
    for (const c of this.hintCounts.values()) n += c
    return n
  }

  /** Up to `limit` hints for a peer, oldest first: versions it missed, or a purge (`entries` empty) */
  async hintsFor (peerId: string, limit: number): Promise<Hint[]> {
    this.checkOpen()
    const out: Hint[] = []
    for await (const [key, value] of this.hints.iterator({ gt: peerId + SEP, lt: peerId + SEP + '\xff', limit })) {
      if (Array.isArray(value)) out.push({ key, entries: (value as StoredEntry[]).map(e => this.openEntry(e)) })
      else out.push({ key, entries: [], purge: (value as { purge: PurgeMarker }).purge })
    }
    return out
  }

  async deleteHints (keys: string[]): Promise<void> {
    this.checkOpen()
    await this.committer.commit(keys.map(key => del(this.hints, key)))
    this.forgetHints(keys)
  }

  private forgetHints (keys: string[]): void {
    for (const key of keys) {
      const peer = key.slice(0, key.indexOf(SEP))
      const left = (this.hintCounts.get(peer) ?? 0) - 1
      if (left > 0) this.hintCounts.set(peer, left)
      else this.hintCounts.delete(peer)
    }
  }

  /** Drops every hint kept for a peer (one that left the network for good); returns how many */
  async deleteHintsFor (peerId: string): Promise<number> {
    this.checkOpen()
    let total = 0
    for (;;) {
      const keys: string[] = []
      for await (const key of this.hints.keys({ gt: peerId + SEP, lt: peerId + SEP + '\xff', limit: 1000 })) keys.push(key)
      if (keys.length === 0) return total
      await this.deleteHints(keys)
      total += keys.length
    }
  }

  /** A small piece of node state kept with the data (e.g. the ring the records were last placed for) */
  async getMeta<T> (key: string): Promise<T | undefined> {
    this.checkOpen()
    if (key === 'format') throw new Error('the store format is not node state')
    return await this.meta.get(`node:${key}`) as T | undefined
  }

  /** Saves node state durably, through the group committer */
  async putMeta (key: string, value: unknown): Promise<void> {
    this.checkOpen()
    await this.committer.commit([put(this.meta, `node:${key}`, value)])
  }

  /** Puts and deletes pieces of node state in one durable batch */
  async updateMeta (puts: Array<[string, unknown]>, dels: string[] = []): Promise<void> {
    this.checkOpen()
    const ops = [...puts.map(([k, v]) => put(this.meta, `node:${k}`, v)), ...dels.map(k => del(this.meta, `node:${k}`))]
    if (ops.length > 0) await this.committer.commit(ops)
  }

  /** Node state whose keys start with `prefix`, in key order */
  async metaRange<T> (prefix: string): Promise<Array<[string, T]>> {
    this.checkOpen()
    const out: Array<[string, T]> = []
    for await (const [k, v] of this.meta.iterator({ gte: `node:${prefix}`, lt: `node:${prefix}\xff` })) out.push([(k as string).slice('node:'.length), v as T])
    return out
  }

  /**
   * Checks the store's field encryption against this opening: the same data
   * key (by its check value), or plaintext on a plaintext store. A store
   * that holds plaintext (written before encryption, or in plaintext mode)
   * opened with a key is encrypted in place first.
   */
  private async openFieldEncryption (): Promise<void> {
    const saved = await this.meta.get(FIELD_ENCRYPTION_KEY) as { fields?: unknown, check?: unknown } | undefined
    if (saved !== undefined && saved.fields !== 0 && saved.fields !== 1) {
      throw new NtsoekheError('INTERNAL', `The store at ${this.db.location} has field encryption ${JSON.stringify(saved)}, unknown to this version`)
    }
    if (this.cipher === undefined) {
      if (saved?.fields === 1) throw new DataKeyError(`The store at ${this.db.location} is encrypted: it opens only with its data key`)
      if (saved === undefined) await writeBatch(this.db, [put(this.meta, FIELD_ENCRYPTION_KEY, { fields: 0 })], true)
      return
    }
    if (saved?.fields === 1) {
      if (saved.check !== this.cipher.check) {
        throw new DataKeyError(`The store at ${this.db.location} was encrypted under another data key: restore the data.key that belongs to this home`)
      }
      return
    }
    await this.encryptInPlace()
    await writeBatch(this.db, [put(this.meta, FIELD_ENCRYPTION_KEY, { fields: 1, check: this.cipher.check })], true)
  }

  /**
   * Seals every sensitive value of a plaintext store (records, history,
   * hints) and replaces index entries of sensitive values by keyed hashes,
   * then compacts, so the plaintext leaves the database files too. A run cut
   * short is redone at the next open: sealed values are kept as they are.
   */
  private async encryptInPlace (): Promise<void> {
    // As in purge: plaintext in table files first, so the sealed values written over it land above it.
    await compact(this.db)
    let ops: BatchOp[] = []
    let written = 0
    const flush = async (): Promise<void> => {
      if (ops.length === 0) return
      await writeBatch(this.db, ops, this.sync)
      written += ops.length
      ops = []
    }
    for await (const [k, v] of this.records.iterator()) {
      const [token, table, id] = k.split(SEP, 3) as [string, string, string]
      if (sensitiveColumns(table).length === 0) continue
      ops.push(put(this.records, k, this.encodeRecord(this.decodeRecord(table, token, id, v, true))))
      if (ops.length >= MIGRATE_BATCH) await flush()
    }
    for await (const [k, v] of this.history.iterator()) {
      if (sensitiveColumns((v as StoredEntry).table).length === 0) continue
      ops.push(put(this.history, k, this.sealEntry(this.openEntry(v, true))))
      if (ops.length >= MIGRATE_BATCH) await flush()
    }
    for await (const [k, v] of this.hints.iterator()) {
      if (!Array.isArray(v)) continue
      const entries = v as StoredEntry[]
      if (!entries.some(e => sensitiveColumns(e.table).length > 0)) continue
      ops.push(put(this.hints, k, entries.map(e => this.sealEntry(this.openEntry(e, true)))))
      if (ops.length >= MIGRATE_BATCH) await flush()
    }
    for (const [table, columns] of Object.entries(this.indexes)) {
      for (const column of columns.filter(c => sensitiveColumns(table).includes(c))) {
        const prefix = table + SEP + column + SEP
        for await (const k of this.index.keys({ gt: prefix, lt: prefix + '\xff' })) {
          const rest = k.slice(prefix.length)
          const encoded = rest.slice(0, rest.indexOf(SEP))
          if (isHashedIndexValue(encoded)) continue
          ops.push(del(this.index, k), put(this.index, this.indexKey(table, column, decodeIndexValue(encoded), rest.slice(encoded.length + 1)), 1))
          if (ops.length >= MIGRATE_BATCH) await flush()
        }
      }
    }
    await flush()
    // Overwritten values stay in older table and log files until a compaction drops them.
    if (written > 0) await compact(this.db)
  }

  /**
   * What the store keeps of a version below a record's horizon: 1 seen here
   * (and replaced), 0 only known replaced, undefined neither (or not below
   * the horizon: the record's own lists say). Looks first in `ops`, the batch
   * being built, for what it has just moved there.
   */
  private oldKnown (key: string, state: RecordState | undefined, version: string, ops?: BatchOp[]): 0 | 1 | undefined {
    if (state?.horizon === undefined || version > state.horizon) return undefined
    const k = key + SEP + version
    if (ops !== undefined) {
      const full = this.known.prefix + k
      for (let i = ops.length - 1; i >= 0; i--) {
        const op = ops[i] as BatchOp
        if (op.key === full) return op.type === 'put' ? JSON.parse(op.value as string) as 0 | 1 : undefined
      }
    }
    return this.known.getSync(k) as 0 | 1 | undefined
  }

  /**
   * Keeps a record's lists to its heads and the newest KNOWN_WINDOW other
   * versions: older ones move to the `known` sublevel (in `ops`, the batch
   * that writes the record) and the horizon rises to the newest moved. A
   * version already kept there is not written again, unless it was only
   * known replaced and is now seen.
   */
  private compactKnown (key: string, horizon: string | undefined, state: RecordState, ops: BatchOp[]): boolean {
    const compacted = compactLists(state.heads.map(h => h.version), state.seen, state.superseded, horizon)
    if (compacted === undefined) {
      if (horizon !== undefined) state.horizon = horizon
      return false
    }
    const stateBefore = horizon === undefined ? undefined : { ...state, horizon }
    for (const [v, seen] of compacted.moved) {
      const was = this.oldKnown(key, stateBefore, v, ops)
      if (was !== undefined && was >= seen) continue
      ops.push(put(this.known, key + SEP + v, seen))
    }
    state.seen = compacted.seen
    state.superseded = compacted.superseded
    state.horizon = compacted.horizon
    return true
  }

  /**
   * Rewrites a store of format 3 or 4 as format 5, in place: each record's
   * version lists in their compact form (see version-list.ts) and, coming
   * from format 3, kept to the window (see compactKnown), a record and what
   * it moves in one batch. A run cut short leaves every record whole in one
   * form or the other, both of which read back, and the next open finishes
   * it (a record already rewritten is left as it is). The format marker
   * changes last.
   */
  private async migrateFormat (from: 3 | 4): Promise<void> {
    const started = Date.now()
    this.log?.(`store: migrating ${this.db.location} from format ${from} to format ${STORE_FORMAT} (bounded, compact record metadata)`)
    let ops: BatchOp[] = []
    let read = 0
    let rewritten = 0
    let reported = 0
    for await (const [k, v] of this.records.iterator()) {
      const stored = v as StoredRecord
      read++
      const lists = storedLists(stored)
      const state = { heads: stored.heads, ...lists, ...(stored.horizon === undefined ? {} : { horizon: stored.horizon }) } as unknown as RecordState
      const compacted = from === 3 && this.compactKnown(k, stored.horizon, state, ops)
      if (compacted || !('v' in stored)) {
        const { heads } = stored
        ops.push(put(this.records, k, { heads, ...encodeVersionLists(state.seen, state.superseded), ...(state.horizon === undefined ? {} : { horizon: state.horizon }) }))
        rewritten++
      }
      if (ops.length >= MIGRATE_BATCH) {
        await writeBatch(this.db, ops, true)
        ops = []
      }
      if (read - reported >= MIGRATE_REPORT) {
        reported = read
        this.log?.(`store: format ${STORE_FORMAT} migration: ${read} records read, ${rewritten} rewritten`)
      }
    }
    ops.push(put(this.meta, 'format', STORE_FORMAT))
    await writeBatch(this.db, ops, true)
    this.log?.(`store: format ${STORE_FORMAT} migration done: ${read} records read, ${rewritten} rewritten in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  }

  /** A row version as stored: its sensitive columns sealed together under one key, SEALED_KEY */
  private sealRow (table: string, id: string, version: string, row: Row | null): StoredRow | null {
    const columns = sensitiveColumns(table)
    if (row === null || columns.length === 0 || this.cipher === undefined) return row
    const out: StoredRow = {}
    const secret: Row = {}
    let any = false
    for (const [k, v] of Object.entries(row)) {
      if (columns.includes(k)) { secret[k] = v; any = true } else out[k] = v
    }
    if (!any) return row
    out[SEALED_KEY] = this.cipher.seal(table, id, version, secret)
    return out
  }

  /**
   * A stored row opened, its columns in schema order. Sealed columns that do
   * not authenticate, or a sensitive column in the clear in an encrypted
   * store, are an IntegrityError; `legacy` accepts the clear, for the
   * migration.
   */
  private openRow (table: string, id: string, version: string, row: StoredRow | null, legacy = false): Row | null {
    const columns = sensitiveColumns(table)
    if (row === null || columns.length === 0) return row as Row | null
    const sealed = row[SEALED_KEY]
    if (sealed === undefined) {
      if (this.cipher !== undefined && !legacy && columns.some(c => row[c] !== undefined)) {
        throw new IntegrityError(`${table} ${id}: sensitive columns stored in the clear in an encrypted store`)
      }
      return row as Row
    }
    if (typeof sealed !== 'string') throw new IntegrityError(`${table} ${id}: malformed sealed columns`)
    if (this.cipher === undefined) throw new IntegrityError(`${table} ${id}: its sensitive columns are encrypted and this store has no data key`)
    const secret = this.cipher.open(table, id, version, sealed)
    const out: Row = {}
    for (const c of findTable(table)?.columns ?? []) {
      const v = columns.includes(c.name) ? secret[c.name] : row[c.name]
      if (v !== undefined) out[c.name] = v
    }
    return out
  }

  private encodeRecord (state: RecordState): StoredRecord {
    return {
      heads: state.heads.map(h => ({ version: h.version, parents: h.parents, row: this.sealRow(state.table, state.id, h.version, h.row), ...(h.writeId === undefined ? {} : { writeId: h.writeId }) })),
      ...encodeVersionLists(state.seen, state.superseded),
      ...(state.horizon === undefined ? {} : { horizon: state.horizon })
    }
  }

  private decodeRecord (table: string, token: string, id: string, value: StoredRecord, legacy = false): RecordState {
    return {
      table,
      id,
      token,
      heads: value.heads.map(h => ({ table, id, token, version: h.version, parents: h.parents, row: this.openRow(table, id, h.version, h.row, legacy), ...(h.writeId === undefined ? {} : { writeId: h.writeId }) })),
      ...storedLists(value),
      ...(value.horizon === undefined ? {} : { horizon: value.horizon })
    }
  }

  private sealEntry (entry: VersionEntry): StoredEntry | VersionEntry {
    const row = this.sealRow(entry.table, entry.id, entry.version, entry.row)
    return row === entry.row ? entry : { ...entry, row }
  }

  private openEntry (stored: StoredEntry, legacy = false): VersionEntry {
    const entry = stored as unknown as VersionEntry
    entry.row = this.openRow(stored.table, stored.id, stored.version, stored.row, legacy)
    return entry
  }

  /** An index entry's key; a sensitive value is indexed by its keyed hash */
  private indexKey (table: string, column: string, value: Value, pos: string): string {
    const encoded = this.cipher !== undefined && sensitiveColumns(table).includes(column)
      ? this.cipher.indexValue(table, column, value)
      : encodeIndexValue(value)
    return table + SEP + column + SEP + encoded + SEP + pos
  }

  /** Group-commit counters, for status and benchmarks */
  get commits (): { batches: number, ops: number } {
    return { batches: this.committer.batches, ops: this.committer.opsWritten }
  }
}

/**
 * Writes encoded operations in one atomic batch. Keys and values are already
 * the UTF-8 strings LevelDB stores, so they go straight to classic-level's
 * `_batch` (abstract-level's documented interface for implementations)
 * instead of the public `batch()`, whose per-operation copying and encoding
 * lookups took 13% of a bulk import's CPU for nothing: we use no hooks, no
 * write events, and no encodings but utf8. The store only writes while
 * open, and classic-level makes a close wait for batches under way.
 */
/** Free space a store needs before it reopens after a full disk */
const REOPEN_FREE_BYTES = 8 * 1024 * 1024
/** At most one reopen after a full disk in this long (a disk that fills again at once is not reopened in a loop) */
const REOPEN_EVERY_MS = 5000

/** A LevelDB write that failed for want of disk space */
function isDiskFull (err: unknown): boolean {
  const e = err as { code?: string, message?: string }
  return e?.code === 'ENOSPC' || /No space left on device|ENOSPC/.test(String(e?.message))
}

async function writeBatch (db: Level<string, any>, ops: BatchOp[], sync: boolean): Promise<void> {
  const direct = (db as unknown as { _batch?: (ops: BatchOp[], options: { sync: boolean }) => Promise<void> })._batch
  if (typeof direct === 'function' && db.status === 'open') {
    await direct.call(db, ops, { sync })
  } else {
    await db.batch(ops as any, { sync, keyEncoding: 'utf8', valueEncoding: 'utf8' })
  }
}

/**
 * Compacts the whole database, so overwritten and deleted values leave the
 * files on disk. `level` resolves to classic-level in Node, which has
 * `compactRange` (the browser build does not, and never runs here).
 */
async function compact (db: Level<string, any>): Promise<void> {
  const c = (db as unknown as { compactRange?: (start: string, end: string) => Promise<void> }).compactRange
  if (typeof c !== 'function') throw new Error('this LevelDB binding cannot compact')
  // Every key starts with a sublevel prefix `!<name>!`: '!' to '"' covers them all.
  await c.call(db, '!', '"')
}

/** Compacts the ranges of just-deleted keys (one range per sublevel), so their bytes leave the files on disk */
async function compactKeys (db: Level<string, any>, keys: string[]): Promise<void> {
  const c = (db as unknown as { compactRange?: (start: string, end: string) => Promise<void> }).compactRange
  if (typeof c !== 'function') throw new Error('this LevelDB binding cannot compact')
  const ranges = new Map<string, [string, string]>()
  for (const k of keys) {
    const sublevel = k.slice(0, k.indexOf('!', 1) + 1)
    const r = ranges.get(sublevel)
    if (r === undefined) ranges.set(sublevel, [k, k])
    else ranges.set(sublevel, [k < r[0] ? k : r[0], k > r[1] ? k : r[1]])
  }
  for (const [start, end] of ranges.values()) await c.call(db, start, end + '\xff')
}

const DEFAULT_WRITE_BUFFER = 16 * 1024 * 1024
/** Index keys the range cache holds by default (keys of some tens of bytes: about 10 MiB at most) */
const DEFAULT_RANGE_CACHE_KEYS = 100_000

/** The meta key of the ordered indexes' signature (see openOrderedIndexes) */
const ORDERED_KEY = 'orderedIndexes'
/** Rows per batch of a reindex */
const REINDEX_BATCH = 500

/** Keys read from a sublevel's range per `nextv` call */
const KEY_BATCH = 1000

/** A sublevel's keys in a range, read `size` at a time (one round trip to LevelDB's thread pool per batch) */
async function * keysOf (sub: Sub, range: { gt?: string, gte?: string, lt?: string, reverse?: boolean }, size = KEY_BATCH): AsyncGenerator<string> {
  const iterator = sub.keys(range)
  try {
    for (;;) {
      const batch = await iterator.nextv(size)
      if (batch.length === 0) return
      yield * batch
    }
  } finally {
    await iterator.close()
  }
}

/** The keys of a sorted list in [gte, lt), descending when `desc` */
function between (keys: readonly string[], gte: string, lt: string, desc: boolean): string[] {
  let from = 0
  let hi = keys.length
  while (from < hi) {
    const mid = (from + hi) >>> 1
    if ((keys[mid] as string) < gte) from = mid + 1
    else hi = mid
  }
  let to = from
  hi = keys.length
  while (to < hi) {
    const mid = (to + hi) >>> 1
    if ((keys[mid] as string) < lt) to = mid + 1
    else hi = mid
  }
  const out = keys.slice(from, to)
  return desc ? out.reverse() : out
}

/** The position (token and id) an index entry's key ends with */
function positionOf (key: string): { token: string, id: string } {
  const last = key.lastIndexOf(SEP)
  const before = key.lastIndexOf(SEP, last - 1)
  return { token: key.slice(before + 1, last), id: key.slice(last + 1) }
}

/**
 * Bumped when the on-disk layout changes; a store of another format refuses
 * to open, except formats 3 and 4, which are migrated in place (see
 * migrateFormat). Format 4 kept a record's version lists to a window (see
 * KNOWN_WINDOW); format 5 stores them compact (see version-list.ts).
 */
export const STORE_FORMAT = 5

/**
 * Versions a record lists in `seen` / `superseded` besides its heads; older
 * ones are kept in the `known` sublevel, so a record's size and the cost of a
 * write stay the same however many versions it has had
 */
export const KNOWN_WINDOW = 64

/** A row as stored: sensitive columns sealed together under SEALED_KEY (see FieldCipher) */
type StoredRow = Record<string, Value>

/**
 * A record as stored: heads without the table, id and token its key already
 * carries, and its version lists compact (format 5, see version-list.ts) or,
 * in a store of an older format not yet migrated, as plain arrays
 */
type StoredRecord = {
  heads: Array<{ version: string, parents: string[], row: StoredRow | null, writeId?: string }>
  horizon?: string
} & (StoredVersionLists | FormatFourLists)

/** A record's version lists as formats 3 and 4 stored them */
interface FormatFourLists { seen: string[], superseded: string[] }

/** A stored record's `seen` and `superseded`, whichever form it has */
function storedLists (value: StoredRecord): { seen: string[], superseded: string[] } {
  if ('v' in value) return decodeVersionLists(value)
  return { seen: value.seen, superseded: value.superseded }
}

/** A version as stored in history and hints */
type StoredEntry = Omit<VersionEntry, 'row'> & { row: StoredRow | null }

/** The meta key of the range summary saved at a clean close (see Store.openSummary) */
const SUMMARY_KEY = 'rangeSummary'

/** A record's digest leaving or entering the range summary */
interface SummaryChange { token: string, digest: Buffer }

/** The meta key of the field-encryption format: `{ fields: 0 }` in the clear, `{ fields: 1, check }` AES-256-GCM v1 */
const FIELD_ENCRYPTION_KEY = 'fieldEncryption'
/** Operations per batch while a store is encrypted in place, or migrated to format 5 */
const MIGRATE_BATCH = 1000
/** Records read per LevelDB call when all of them are walked (scanPages) */
const SCAN_PAGE = 256
/** Records between progress lines of a format migration */
const MIGRATE_REPORT = 10_000

/**
 * A record's lists kept to its heads and the newest KNOWN_WINDOW other
 * versions above `horizon`: the rest is `moved` (1 seen, 0 only known
 * replaced), and the horizon is the newest of them. Undefined when nothing
 * moves.
 */
export function compactLists (heads: string[], seen: string[], superseded: string[], horizon: string | undefined): { seen: string[], superseded: string[], horizon: string, moved: Array<[string, 0 | 1]> } | undefined {
  const headSet = new Set(heads)
  const seenSet = new Set(seen)
  const listed = [...new Set([...seen, ...superseded])].filter(v => !headSet.has(v))
  if (listed.length <= KNOWN_WINDOW && (horizon === undefined || listed.every(v => v > horizon))) return undefined
  listed.sort((a, b) => compareVersions(b, a))
  let top = horizon
  let kept = 0
  const moved: Array<[string, 0 | 1]> = []
  for (const v of listed) {
    if (kept < KNOWN_WINDOW && (horizon === undefined || v > horizon)) { kept++; continue }
    moved.push([v, seenSet.has(v) ? 1 : 0])
    if (top === undefined || v > top) top = v
  }
  if (moved.length === 0 || top === undefined) return undefined
  const gone = new Set(moved.map(([v]) => v))
  return { seen: seen.filter(v => !gone.has(v)), superseded: superseded.filter(v => !gone.has(v)), horizon: top, moved }
}

function put (sublevel: Sub, key: string, value: unknown): BatchOp {
  return { type: 'put', key: sublevel.prefix + key, value: JSON.stringify(value) }
}

function del (sublevel: Sub, key: string): BatchOp {
  return { type: 'del', key: sublevel.prefix + key }
}

function decodeIndexValue (encoded: string): Value {
  if (encoded === 'z') return null
  if (encoded.startsWith('n')) return Number(encoded.slice(1))
  return decodeURIComponent(encoded.slice(1))
}

function matches (row: Row, where: Record<string, Value>): boolean {
  for (const [col, v] of Object.entries(where)) {
    if (row[col] !== v) return false
  }
  return true
}

