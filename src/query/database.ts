import { ConflictError, NotFoundError, hasCode, PreconditionFailedError, ReferenceError, UnavailableError, UnknownTableError, ValidationError, NtsoekheError } from '../errors/index.js'
import {
  TABLES, checkValue, findTable, parseId, referencingTables, rowId, shardValue, upgradeStoredRow, validateRow,
  type Row, type TableDef, type Value
} from '../schema/index.js'
import type { Coordinator, Consistency, FragmentAnswer, GroupOutcome, Mutation, RequestOptions, WriteResult } from '../cluster/coordinator.js'
import { createHash } from 'node:crypto'
import { fromString, toString } from 'uint8arrays'
import { keyedWriteId } from '../cluster/idempotency.js'
import { LOCATOR_TABLE, UNIQUE_TABLE, internalShard } from '../cluster/messages.js'
import { KeyedMutex } from '../storage/keyed-mutex.js'
import { winner, type RecordState } from '../storage/store.js'
import { parseVersion } from '../storage/version.js'
import { IdSource } from './id-source.js'
import { DEFAULT_LIMIT, MAX_LIMIT } from './limits.js'
import { tokenOf } from '../cluster/token.js'
import type { Fragment } from './fragment.js'
import { allOf, columnOf, type Comparison, type Condition } from '../schema/condition.js'

export { DEFAULT_LIMIT, MAX_LIMIT } from './limits.js'
/** Operations in one all-or-nothing batch */
export const MAX_BATCH = 1000
/** Draws of a fresh id before an insert gives up: a generated id meets an existing key only where a row was keyed by hand with it, or made under the earlier id layout (see ids.ts) */
const ID_ATTEMPTS = 5
/** Retries of a PATCH whose read version was overtaken by a concurrent write */
const PATCH_ATTEMPTS = 5
/**
 * How old a unique-value claim must be before a writer may take it from a
 * row that does not hold the value (its writer failed or crashed between
 * claim and write, or a release was lost). Far longer than any write may
 * take, so a claim whose row is still on its way is never taken.
 */
export const DEFAULT_CLAIM_GRACE_MS = 120_000
/** Looks at a claim that keeps changing under a writer before it gives up with 409 */
const CLAIM_ATTEMPTS = 4

export interface ReadResponse {
  row: Row
  version: string
  /** Other heads that do not descend from the winner: a conflict to resolve */
  conflicts: Array<{ version: string, row: Row | null }>
}

export interface KeyedOptions extends RequestOptions {
  /**
   * The client's Idempotency-Key: the same write sent again with the same key
   * (after a timeout, a lost answer, a 503) answers the first one's result and
   * writes nothing new, on any node. A batch takes one key for all of it.
   */
  idempotencyKey?: string
}

export interface WriteOptions extends KeyedOptions {
  /** Versions the write must replace (HTTP If-Match) */
  ifMatch?: string[]
  /** Columns a replace keeps from the current row when the body leaves them out (columns its caller cannot see) */
  keep?: readonly string[]
}

export interface DeleteOptions extends WriteOptions {
  /** Also delete the rows that reference this one */
  cascade?: boolean
}

/** An ordered, filtered read (see Database.query) */
export interface QueryOptions {
  /** `column op value` filters, values as typed by a user */
  where?: Array<{ column: string, op: Comparison, value: string | number | null }>
  /** A condition with typed values, ANDed with `where` */
  filter?: Condition
  orderBy?: string
  desc?: boolean
  limit?: number
  cursor?: string
}

export interface ListResponse {
  rows: Row[]
  next: string | null
}

export interface BatchOperation {
  op: 'insert' | 'put' | 'patch' | 'delete'
  table: string
  id?: string | number
  row?: unknown
  ifMatch?: string | string[]
}

/** One parsed line of an import: its number (for the report), its value, and its idempotency key if it has one */
export interface ImportRow {
  line: number
  value: unknown
  /**
   * Makes the line's writes recognisable: imported again with the same key,
   * the line is answered with its first row instead of being written twice,
   * and a line without an id gets the id its key derives (importedId).
   */
  key?: string
}

export interface ImportResult {
  accepted: number
  rejected: Array<{ line: number, error: { code: string, message: string, column?: string } }>
}

export interface DatabaseComponents {
  coordinator: Coordinator
  peerId: string
  /** See DEFAULT_CLAIM_GRACE_MS (tests shorten it) */
  claimGraceMs?: number
  /** Where generated ids come from. @default an IdSource for `peerId` that keeps its tag in memory */
  ids?: Pick<IdSource, 'next'>
}

/** What a batch's operations wrote so far, by `<table>|<row id>`: the row (null: deleted) and the operation's index */
type BatchRows = Map<string, { index: number, row: Row | null }>

/** A unique value a write took; `version` is the claim version this write made (what it may give back) */
interface Claim { table: TableDef, column: string, value: Value, owner: string, version?: string }

/**
 * The query layer: validates rows against the schema, checks references and
 * unique columns, makes ids, and turns requests into coordinator mutations.
 * It never knows where a record lives.
 */
export class Database {
  private readonly coordinator: Coordinator
  private readonly ids: Pick<IdSource, 'next'>
  /** Held from the uniqueness check to the write, per table with unique columns (see withUniqueLock) */
  private readonly uniqueLocks = new KeyedMutex()
  private readonly claimGraceMs: number

  constructor (components: DatabaseComponents) {
    this.coordinator = components.coordinator
    this.ids = components.ids ?? new IdSource({ coordinator: components.coordinator, peerId: components.peerId })
    this.claimGraceMs = components.claimGraceMs ?? DEFAULT_CLAIM_GRACE_MS
  }

  tables (): readonly TableDef[] {
    return TABLES
  }

  table (name: string): TableDef {
    const t = findTable(name)
    if (t === undefined) throw new UnknownTableError(name)
    return t
  }

  async insert (tableName: string, body: unknown, options: KeyedOptions = {}): Promise<WriteResult> {
    const table = this.table(tableName)
    const row = validateRow(table, body, 'full', { allowMissingKey: table.primaryKey.length === 1 })
    const generated = table.primaryKey.some(k => row[k] === undefined)
    if (generated && table.primaryKey.length !== 1) {
      throw new ValidationError(`${table.name} needs ${table.primaryKey.join(' and ')}`)
    }
    const key = options.idempotencyKey
    if (key !== undefined) return await this.withUniqueLock([table], async () => await this.insertKeyed(table, row, generated, key, options))
    return await this.withUniqueLock([table], async () => await this.insertChecked(table, row, generated, options))
  }

  /**
   * An insert that may be a repeat: its id (drawn once per key, see keyedId)
   * and its write ids come from the key, so every step finds what an earlier
   * try of it did (its own row, claims and locator) and the primary answers
   * the row's first version instead of 409.
   */
  private async insertKeyed (table: TableDef, row: Row, generated: boolean, key: string, options: RequestOptions): Promise<WriteResult> {
    const full = generated ? { [table.primaryKey[0] as string]: await this.keyedId(table, key, 'insert', options), ...row } : row
    const ordered = orderColumns(table, full)
    const id = rowId(table, ordered)
    await this.checkRow(table, ordered, id, options)
    return await this.claimAndInsert(table, ordered, options, { locator: keyedWriteId(key, 'locator', table.name, id), row: keyedWriteId(key, 'insert', table.name, id) })
  }

  /**
   * Claims the row's unique values and its key, then writes it; a refused
   * write gives them back. A write whose outcome is unknown (a timeout) may
   * have landed: its key and values stay claimed. `writeIds` make a keyed
   * insert's claim and row recognisable to its retries.
   */
  private async claimAndInsert (table: TableDef, ordered: Row, options: RequestOptions, writeIds?: { locator: string, row: string }): Promise<WriteResult> {
    const claims = await this.claimValues(table, ordered, undefined, options)
    try {
      await this.claimKey(table, ordered, options, writeIds?.locator)
    } catch (err) {
      await this.releaseClaims(claims, options)
      throw err
    }
    try {
      const [result] = await this.coordinator.write([this.mutation('insert', table, ordered, undefined, writeIds?.row)], options)
      return result as WriteResult
    } catch (err) {
      if (isRefusal(err)) {
        await this.releaseKey(table, ordered, options)
        await this.releaseClaims(claims, options)
      }
      throw err
    }
  }

  /**
   * The generated id of a keyed insert: drawn by its first try and kept in a
   * claim record placed by the key, so every try (on any node) uses the
   * same one. Written at quorum: the caller's consistency is the row's.
   */
  private async keyedId (table: TableDef, key: string, scope: string, options: RequestOptions): Promise<number> {
    const id = `${table.name}.${KEY_CLAIM}.${createHash('sha256').update(key).update('\u0000').update(scope).digest('hex').slice(0, 32)}`
    const shard = internalShard(UNIQUE_TABLE, id) as string
    const bookkeeping = atMostQuorum(options)
    for (let attempt = 1; attempt <= CLAIM_ATTEMPTS; attempt++) {
      const held = winner(await this.coordinator.read(UNIQUE_TABLE, id, shard, bookkeeping))?.row?.owner
      if (typeof held === 'string') return Number(held)
      try {
        const [made] = await this.coordinator.write([{ op: 'insert', table: UNIQUE_TABLE, id, shard, row: { owner: String(await this.ids.next()) }, writeId: keyedWriteId(key, 'id', table.name, scope), keyed: true }], bookkeeping)
        return Number(made?.row?.owner)
      } catch (err) {
        // Another try with this key drew first: its id is read on the next turn.
        if (!hasCode(err, 'CONFLICT')) throw err
      }
    }
    throw new UnavailableError(`${table.name}: the id kept for this Idempotency-Key keeps changing; try again`)
  }

  /** The result of a keyed write that already took effect on `table`/`key`, found in the row's history */
  private async recallKeyed (table: TableDef, key: Row, writeId: string, options: RequestOptions): Promise<WriteResult | undefined> {
    const shard = await this.shardOfKey(table, key, options) ?? await this.formerShardOfKey(table, key, options)
    if (shard === undefined) return undefined
    const id = rowId(table, key)
    const earlier = (await this.coordinator.history(table.name, id, shard, options)).find(v => v.writeId === writeId)
    return earlier === undefined ? undefined : { table: table.name, id, version: earlier.version, row: earlier.row }
  }

  private async insertChecked (table: TableDef, row: Row, generated: boolean, options: RequestOptions): Promise<WriteResult> {
    await this.checkRow(table, row, undefined, options)
    for (let attempt = 1; ; attempt++) {
      const full = generated ? { [table.primaryKey[0] as string]: await this.ids.next(), ...row } : row
      const ordered = orderColumns(table, full)
      try {
        return await this.claimAndInsert(table, ordered, options)
      } catch (err) {
        // Only the row's own key may have met an id drawn elsewhere; a taken unique value names its column.
        if (!generated || attempt >= ID_ATTEMPTS || !hasCode(err, 'CONFLICT') || (err as NtsoekheError).column !== undefined) throw err
      }
    }
  }

  async get (tableName: string, id: string, options: RequestOptions & { local?: boolean } = {}): Promise<ReadResponse> {
    const table = this.table(tableName)
    const key = parseId(table, id)
    const state = await this.readState(table, key, options)
    return toReadResponse(table, rowId(table, key), state)
  }

  async replace (tableName: string, id: string, body: unknown, options: WriteOptions = {}): Promise<WriteResult> {
    const table = this.table(tableName)
    const key = parseId(table, id)
    const row = validateRow(table, { ...key, ...requireObject(table, body) }, 'full')
    assertSameKey(table, key, row)
    return await this.withUniqueLock([table], async () => {
      const current = await this.readState(table, key, options)
      const live = winner(current)
      if (live?.row == null) throw new NotFoundError(`${table.name} ${rowId(table, key)} not found`)
      const given = requireObject(table, body)
      for (const c of options.keep ?? []) if (!(c in given)) row[c] = live.row[c] ?? null
      assertSameShard(table, live.row, row)
      await this.checkRow(table, row, rowId(table, key), options)
      return await this.writeClaimed(table, live.row, row, options, async () => {
        const [result] = await this.coordinator.write([this.mutation('put', table, orderColumns(table, row), options.ifMatch, keyOf(options, 'replace', table.name, rowId(table, key)))], options)
        return result as WriteResult
      })
    })
  }

  async patch (tableName: string, id: string, body: unknown, options: WriteOptions = {}): Promise<WriteResult> {
    const table = this.table(tableName)
    const key = parseId(table, id)
    const changes = validateRow(table, body, 'partial')
    assertSameKey(table, key, changes)
    return await this.withUniqueLock([table], async () => await this.patchChecked(table, key, changes, options))
  }

  private async patchChecked (table: TableDef, key: Row, changes: Row, options: WriteOptions): Promise<WriteResult> {
    for (let attempt = 1; ; attempt++) {
      const current = await this.readState(table, key, options)
      const head = winner(current)
      if (head?.row == null) throw new NotFoundError(`${table.name} ${rowId(table, key)} not found`)
      // A TIMESTAMP stored before the canonical form is rewritten canonically with the change.
      const base = upgradeStoredRow(table, head.row)
      const upgraded = Object.keys(base).filter(c => base[c] !== head.row?.[c] && !(c in changes))
      const row = validateRow(table, { ...base, ...changes }, 'full')
      assertSameShard(table, head.row, row)
      await this.checkRow(table, row, rowId(table, key), options, Object.keys(changes))
      try {
        return await this.writeClaimed(table, head.row, row, options, async () => {
          const m = this.mutation('put', table, orderColumns(table, row), options.ifMatch, keyOf(options, 'patch', table.name, rowId(table, key)))
          // Without If-Match the primary applies the changed columns onto its own head: never 412.
          if (options.ifMatch === undefined && Object.keys(changes).length > 0) m.changed = [...Object.keys(changes), ...upgraded]
          const [result] = await this.coordinator.write([m], options)
          return result as WriteResult
        })
      } catch (err) {
        // Our own read was overtaken by a concurrent write: merge again onto the new head.
        const retry = options.ifMatch === undefined && attempt < PATCH_ATTEMPTS &&
          err instanceof NtsoekheError && err.code === 'PRECONDITION_FAILED'
        if (!retry) throw err
      }
    }
  }

  async delete (tableName: string, id: string, options: DeleteOptions = {}): Promise<WriteResult & { cascaded: number }> {
    const table = this.table(tableName)
    const key = parseId(table, id)
    const writeId = keyOf(options, 'delete', table.name, rowId(table, key))
    const current = await this.readState(table, key, options)
    const head = winner(current)
    if (head?.row == null) {
      // A repeat of a keyed delete that took effect answers it (how many rows it cascaded to is not kept).
      const earlier = writeId === undefined ? undefined : await this.recallKeyed(table, key, writeId, options)
      if (earlier !== undefined) return { ...earlier, cascaded: 0 }
      throw new NotFoundError(`${table.name} ${rowId(table, key)} not found`)
    }
    if (options.cascade === true && options.ifMatch !== undefined && options.ifMatch.length > 0) {
      // The primary checks If-Match only when the row itself is deleted: by then the cascade has run.
      const heads = new Set(current?.heads.map(h => h.version))
      const stale = options.ifMatch.filter(v => !heads.has(v))
      if (stale.length > 0) throw new PreconditionFailedError(`${table.name} ${rowId(table, key)}: version ${stale.join(', ')} is not current`)
    }
    const cascaded = await this.deleteReferences(table, head.row, options)
    const [result] = await this.coordinator.write([this.mutation('delete', table, head.row, options.ifMatch, writeId)], options)
    await this.releaseValues(table, head.row, null, options)
    await this.releaseKey(table, head.row, options)
    return { ...(result as WriteResult), cascaded }
  }

  async history (tableName: string, id: string, options: RequestOptions = {}): Promise<Array<{ version: string, parents: string[], row: Row | null, deleted: boolean }>> {
    const table = this.table(tableName)
    const key = parseId(table, id)
    const shard = await this.shardOfKey(table, key, options) ?? await this.formerShardOfKey(table, key, options)
    const versions = shard === undefined ? [] : await this.coordinator.history(table.name, rowId(table, key), shard, options)
    if (versions.length === 0) throw new NotFoundError(`${table.name} ${rowId(table, key)} has no history`)
    return versions.map(v => ({ version: v.version, parents: v.parents, row: v.row, deleted: v.row === null }))
  }

  /**
   * Erases a row for good: every version on every node, its hints and index
   * entries, then its key locator and the unique-value claims it holds. Not
   * a delete (which keeps history): nothing of the row is left to read. A
   * node that is down erases it when it returns.
   */
  async purge (tableName: string, id: string): Promise<{ table: string, id: string, purged: true, replicas: number }> {
    const table = this.table(tableName)
    const key = parseId(table, id)
    const rowKey = rowId(table, key)
    const shard = await this.shardOfKey(table, key) ?? await this.formerShardOfKey(table, key, {})
    if (shard === undefined) throw new NotFoundError(`${table.name} ${rowKey} not found`)
    const versions = await this.coordinator.history(table.name, rowKey, shard)
    if (versions.length === 0) throw new NotFoundError(`${table.name} ${rowKey} not found`)
    // As a delete: rows that still point at this one would point at nothing.
    const live = winner(await this.coordinator.read(table.name, rowKey, shard))?.row
    if (live != null) await this.refuseIfReferenced(table, live, {})
    const replicas = await this.coordinator.purge(table.name, rowKey, shard)
    // The row goes first: while its locator is left, a failed purge can be run again.
    for (const column of table.unique) {
      const values = new Set(versions.map(v => v.row?.[column]).filter((v): v is string | number => v !== null && v !== undefined))
      for (const value of values) {
        const record = claimRecord(table, column, value)
        const claims = await this.coordinator.history(UNIQUE_TABLE, record.id, record.shard)
        // A claim whose every holder was this row; one another row took over stays its.
        if (claims.length > 0 && claims.every(c => c.row === null || c.row.owner === rowKey)) {
          await this.coordinator.purge(UNIQUE_TABLE, record.id, record.shard)
        }
      }
    }
    if (needsLocator(table)) await this.coordinator.purge(LOCATOR_TABLE, locatorId(table, key), locatorShard(table, key))
    return { table: table.name, id: rowKey, purged: true, replicas }
  }

  /** Lists rows with equality filters (`where` values as typed by a user) and a cursor */
  async list (tableName: string, where: Record<string, string | number | null>, options: RequestOptions & { limit?: number, cursor?: string } = {}): Promise<ListResponse> {
    const table = this.table(tableName)
    const limit = options.limit ?? DEFAULT_LIMIT
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_LIMIT) {
      throw new ValidationError(`limit must be an integer from 1 to ${MAX_LIMIT}`)
    }
    const typed: Record<string, Value> = {}
    for (const [name, raw] of Object.entries(where)) {
      const col = table.columns.find(c => c.name === name)
      if (col === undefined) throw new ValidationError(`Unknown column ${name} in table ${table.name}`, { column: name })
      typed[name] = checkValue({ ...col, notNull: false, length: undefined }, raw)
    }
    const after = options.cursor === undefined ? undefined : decodeCursor(options.cursor)
    const page = await this.coordinator.scan(table.name, { where: typed, limit, ...(after === undefined ? {} : { after }) }, options)
    const rows = page.rows.map(r => winner(r.state)?.row).filter((r): r is Row => r != null)
    return { rows, next: page.next === undefined ? null : encodeCursor(page.next) }
  }

  /**
   * Lists rows in order: by `orderBy` (ascending, or descending with
   * `desc`), else by primary key, so the first page holds the lowest keys.
   * `where` holds `column op value` filters as users type them (values
   * are typed by the column; a timestamp column also takes a date); they
   * are ANDed with `filter`, a condition already typed. The cursor belongs
   * to its order.
   */
  async query (tableName: string, request: QueryOptions = {}, options: RequestOptions = {}): Promise<ListResponse> {
    const table = this.table(tableName)
    const limit = request.limit ?? DEFAULT_LIMIT
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_LIMIT) {
      throw new ValidationError(`limit must be an integer from 1 to ${MAX_LIMIT}`)
    }
    const conds: Condition[] = (request.where ?? []).map(w => ({ op: w.op, column: w.column, value: typedValue(table, w.column, w.value) }))
    if (request.filter !== undefined) conds.push(request.filter)
    if (request.orderBy !== undefined) columnOf(table, request.orderBy)
    const filter = allOf(conds)
    const order = orderTag(request.orderBy, request.desc === true)
    const after = request.cursor === undefined ? undefined : decodeQueryCursor(request.cursor, order)
    const page = await this.coordinator.query(table.name, {
      ...(filter === undefined ? {} : { filter }),
      ...(request.orderBy === undefined ? {} : { orderBy: request.orderBy }),
      ...(request.desc === true ? { desc: true } : {}),
      ...(after === undefined ? {} : { after }),
      limit
    }, options)
    const rows = page.rows.map(r => winner(r.state)?.row).filter((r): r is Row => r != null)
    return { rows, next: page.next === undefined ? null : encodeQueryCursor(page.next, order) }
  }

  /** Runs a query fragment on the owners (see Coordinator.fragment) */
  async fragment (fragment: Fragment, options: RequestOptions = {}): Promise<FragmentAnswer> {
    this.table(fragment.table)
    return await this.coordinator.fragment(fragment, options)
  }

  /** Who holds what, for EXPLAIN: the members, the read quorum, and a shard value's owners */
  async placement (): Promise<{ members: string[], readQuorum: number, of: (table: string, shard: string) => string[] }> {
    const s = await this.coordinator.status()
    const c = this.coordinator as Coordinator & { owners?: (table: string, token: string) => string[] }
    const members = [...new Set([s.peerId, ...s.members.filter(m => m.state !== 'left').map(m => m.peerId)])]
    return { members, readQuorum: s.readQuorum, of: (table, shard) => typeof c.owners === 'function' ? c.owners(table, tokenOf(shard)) : [s.peerId] }
  }

  /** Several writes that share one shard key, applied all or nothing */
  async batch (operations: BatchOperation[], options: KeyedOptions = {}): Promise<WriteResult[]> {
    if (!Array.isArray(operations) || operations.length === 0) throw new ValidationError('A batch needs a non-empty operations array')
    if (operations.length > MAX_BATCH) throw new ValidationError(`A batch takes at most ${MAX_BATCH} operations (got ${operations.length}); use import for bulk loads`)
    const key = options.idempotencyKey
    if (key === undefined) return await this.batchChecked(operations, options)
    try {
      return await this.batchChecked(operations, options)
    } catch (err) {
      // A repeat of a batch that took effect may be refused on the way (a delete finds its row gone): it is
      // answered with what the batch wrote, all of it being there, or else refused as it was.
      if (!isRefusal(err)) throw err
      const earlier = await this.recallBatch(operations, key, options).catch(() => undefined)
      if (earlier === undefined) throw err
      return earlier
    }
  }

  /** What a keyed batch wrote, if every one of its operations is found in its row's history */
  private async recallBatch (operations: BatchOperation[], key: string, options: RequestOptions): Promise<WriteResult[] | undefined> {
    const results: WriteResult[] = []
    for (const [i, op] of operations.entries()) {
      const table = this.table(String(op.table))
      let rowKey: Row
      if (op.id !== undefined) {
        rowKey = parseId(table, String(op.id))
      } else {
        const row = validateRow(table, op.row, 'full', { allowMissingKey: table.primaryKey.length === 1 })
        rowKey = table.primaryKey.some(k => row[k] === undefined) ? { [table.primaryKey[0] as string]: await this.keyedId(table, key, `batch:${i}`, options) } : row
      }
      const found = await this.recallKeyed(table, rowKey, keyedWriteId(key, 'batch', i, table.name, rowId(table, rowKey)), options)
      if (found === undefined) return undefined
      results.push(found)
    }
    return results
  }

  private async batchChecked (operations: BatchOperation[], options: KeyedOptions): Promise<WriteResult[]> {
    const key = options.idempotencyKey
    const tables = operations.map(op => findTable(String((op as BatchOperation | null)?.table))).filter((t): t is TableDef => t !== undefined)
    return await this.withUniqueLock(tables, async () => {
      const mutations: Mutation[] = []
      // Rows the batch's earlier operations write (null: deleted): a later one may refer to them.
      const earlier: BatchRows = new Map()
      for (const [i, op] of operations.entries()) {
        try {
          const m = await this.batchMutation(op, options, earlier, key === undefined ? undefined : { key, index: i })
          assertNotWrittenEarlier(earlier, this.table(m.table), parseId(this.table(m.table), m.id))
          earlier.set(`${m.table}|${m.id}`, { index: i, row: m.op === 'delete' ? null : m.row as Row })
          if (key !== undefined) { m.writeId = keyedWriteId(key, 'batch', i, m.table, m.id); m.keyed = true }
          mutations.push(m)
        } catch (err) {
          if (err instanceof NtsoekheError) err.message = `operations[${i}]: ${err.message}`
          throw err
        }
      }
      const shards = new Set(mutations.map(m => m.shard))
      if (shards.size > 1) {
        throw new ValidationError(`A batch must share one shard key; these operations span ${[...shards].join(', ')}`)
      }
      assertUniqueWithin(mutations)
      // Rows of tables with unique columns as they are now: the values they give up are released after.
      const before = new Map<Mutation, Row | null>()
      for (const m of mutations) {
        const table = this.table(m.table)
        if (table.unique.length === 0 || m.op === 'insert') continue
        const state = await this.readState(table, parseId(table, m.id), options)
        before.set(m, winner(state)?.row ?? null)
      }
      const inserted = mutations.filter(m => m.op === 'insert').map(m => ({ table: this.table(m.table), row: m.row as Row }))
      const claimed: typeof inserted = []
      const values: Claim[] = []
      let sent = false
      try {
        for (const m of mutations) {
          if (m.op !== 'delete') values.push(...await this.claimValues(this.table(m.table), m.row as Row, before.get(m), options))
        }
        for (const c of inserted) {
          await this.claimKey(c.table, c.row, options, key === undefined ? undefined : keyedWriteId(key, 'locator', c.table.name, rowId(c.table, c.row)))
          claimed.push(c)
        }
        sent = true
        const results = await this.coordinator.write(mutations, options)
        for (const m of mutations) {
          const table = this.table(m.table)
          const old = before.get(m)
          if (old != null) await this.releaseValues(table, old, m.op === 'delete' ? null : m.row as Row, options)
          if (m.op === 'delete') await this.releaseKey(table, parseId(table, m.id), options)
        }
        return results
      } catch (err) {
        // Claims are given back when the batch was never sent, or was refused; a write whose outcome is
        // unknown (a timeout) may have landed, so its claims stay.
        if (!sent || isRefusal(err)) {
          for (const c of claimed) await this.releaseKey(c.table, c.row, options)
          await this.releaseClaims(values, options)
        }
        throw err
      }
    })
  }

  /** One operation of a batch as a mutation; `keyed`: the batch's key and the operation's place in it */
  private async batchMutation (op: BatchOperation, options: RequestOptions, earlier: BatchRows, keyed?: { key: string, index: number }): Promise<Mutation> {
    if (op === null || typeof op !== 'object') throw new ValidationError('Each operation must be an object')
    const table = this.table(String(op.table))
    const ifMatch = op.ifMatch === undefined ? undefined : Array.isArray(op.ifMatch) ? op.ifMatch : [op.ifMatch]
    switch (op.op) {
      case 'insert': {
        const row = validateRow(table, op.row, 'full', { allowMissingKey: table.primaryKey.length === 1 })
        const generated = table.primaryKey.some(k => row[k] === undefined)
        const drawn = !generated ? undefined : keyed === undefined ? await this.ids.next() : await this.keyedId(table, keyed.key, `batch:${keyed.index}`, options)
        const full = drawn === undefined ? row : { [table.primaryKey[0] as string]: drawn, ...row }
        // A keyed insert's own row (an earlier try of this batch) is not another row holding its values.
        await this.checkRow(table, full, keyed === undefined ? undefined : rowId(table, full), options, undefined, earlier)
        return this.mutation('insert', table, orderColumns(table, full))
      }
      case 'put':
      case 'patch': {
        if (op.id === undefined) throw new ValidationError(`${op.op} needs an id`)
        const key = parseId(table, String(op.id))
        assertNotWrittenEarlier(earlier, table, key)
        let row: Row
        if (op.op === 'put') {
          row = validateRow(table, { ...key, ...requireObject(table, op.row) }, 'full')
        } else {
          const head = await this.readState(table, key, options)
          const live = winner(head)
          if (live?.row == null) throw new NotFoundError(`${table.name} ${rowId(table, key)} not found`)
          row = validateRow(table, { ...upgradeStoredRow(table, live.row), ...validateRow(table, op.row, 'partial') }, 'full')
        }
        assertSameKey(table, key, row)
        await this.checkRow(table, row, rowId(table, key), options, undefined, earlier)
        return this.mutation('put', table, orderColumns(table, row), ifMatch)
      }
      case 'delete': {
        if (op.id === undefined) throw new ValidationError('delete needs an id')
        const key = parseId(table, String(op.id))
        assertNotWrittenEarlier(earlier, table, key)
        const state = await this.readState(table, key, options)
        const live = winner(state)
        if (live?.row == null) throw new NotFoundError(`${table.name} ${rowId(table, key)} not found`)
        await this.refuseIfReferenced(table, live.row, options)
        return this.mutation('delete', table, live.row, ifMatch)
      }
      default:
        throw new ValidationError(`Unknown batch op ${JSON.stringify((op as { op?: unknown }).op)}; use insert, put, patch or delete`)
    }
  }

  /**
   * Bulk insert of parsed rows (`line` numbers for the report). Rows are
   * validated and written concurrently; group commit folds them into few
   * durable batches. A bad row is reported and never stops the others.
   */
  async importRows (tableName: string, rows: ImportRow[], options: RequestOptions = {}): Promise<ImportResult> {
    const table = this.table(tableName)
    const result: ImportResult = { accepted: 0, rejected: [] }
    const reject = (line: number, err: unknown): void => { result.rejected.push({ line, error: errorBody(err) }) }
    if (table.unique.length > 0) {
      // Unique columns are checked against what is stored, so these rows go one at a time.
      for (const r of rows) {
        try {
          await this.insert(tableName, r.value, { ...options, ...(r.key === undefined ? {} : { idempotencyKey: r.key }) })
          result.accepted++
        } catch (err) { reject(r.line, err) }
      }
      return result
    }
    // Validate and check references (each referenced row looked up once per chunk), then write
    // every row as its own all-or-nothing group in as few round trips and batches as possible.
    const lookups = new Map<string, Promise<void>>()
    const checked = await Promise.all(rows.map(async r => {
      try {
        const row = validateRow(table, r.value, 'full', { allowMissingKey: table.primaryKey.length === 1 })
        const generated = table.primaryKey.some(k => row[k] === undefined)
        if (generated && table.primaryKey.length !== 1) throw new ValidationError(`${table.name} needs ${table.primaryKey.join(' and ')}`)
        await this.checkReferences(table, row, options, undefined, lookups)
        return { line: r.line, row, generated, key: r.key }
      } catch (err) {
        reject(r.line, err)
        return undefined
      }
    }))
    type Pending = { line: number, row: Row, generated: boolean, key: string | undefined }
    let pending: Pending[] = []
    for (const c of checked) {
      if (c === undefined) continue
      const id = !c.generated ? undefined : c.key === undefined ? await this.ids.next() : importedId(c.key)
      pending.push({ ...c, row: orderColumns(table, id === undefined ? c.row : { [table.primaryKey[0] as string]: id, ...c.row }) })
    }
    // A keyed line's writes carry write ids made from its key: imported again, its row and locator
    // answer the first import's versions (accepted, nothing written) instead of 409.
    const keyed = (p: Pending, m: Mutation, part: string): Mutation =>
      p.key === undefined ? m : { ...m, writeId: keyedWriteId(p.key, part, table.name, rowId(table, p.row)), keyed: true }
    if (needsLocator(table)) {
      const claims = await this.coordinator.writeGroups(pending.map(p => [keyed(p, this.claimMutation(table, p.row), 'locator')]), options)
      pending = pending.filter((p, i) => {
        const c = claims[i] as GroupOutcome
        if (c.ok) return true
        reject(p.line, c.error.code === 'CONFLICT' ? new ConflictError(`${table.name} ${rowId(table, p.row)} already exists`) : c.error)
        return false
      })
    }
    const outcomes = await this.coordinator.writeGroups(pending.map(p => [keyed(p, this.mutation('insert', table, p.row), 'insert')]), options)
    const failed: Pending[] = []
    outcomes.forEach((o, i) => {
      const p = pending[i] as Pending
      if (o.ok) result.accepted++
      else failed.push(p)
    })
    const refused = failed.filter(p => isRefusal((outcomes[pending.indexOf(p)] as GroupOutcome & { ok: false }).error))
    if (needsLocator(table) && refused.length > 0) {
      await this.coordinator.writeGroups(refused.map(p => [{ op: 'delete' as const, table: LOCATOR_TABLE, id: locatorId(table, p.row), shard: locatorShard(table, p.row) }]), options)
    }
    for (const p of failed) {
      const o = outcomes[pending.indexOf(p)] as GroupOutcome & { ok: false }
      if (p.generated && p.key === undefined && o.error.code === 'CONFLICT') {
        // A generated id met one drawn elsewhere: draw again through the one-row path.
        try {
          const { [table.primaryKey[0] as string]: _, ...rest } = p.row
          await this.insert(table.name, rest, options)
          result.accepted++
          continue
        } catch (err) { reject(p.line, err); continue }
      }
      reject(p.line, o.error)
    }
    result.rejected.sort((a, b) => a.line - b.line)
    return result
  }

  private mutation (op: Mutation['op'], table: TableDef, row: Row, ifMatch?: string[], writeId?: string): Mutation {
    const m: Mutation = { op, table: table.name, id: rowId(table, row), shard: shardValue(table, row) }
    if (op !== 'delete') m.row = row
    if (ifMatch !== undefined && ifMatch.length > 0) m.ifMatch = ifMatch
    if (writeId !== undefined) { m.writeId = writeId; m.keyed = true }
    return m
  }

  private async readState (table: TableDef, key: Row, options: RequestOptions & { local?: boolean }): Promise<RecordState | undefined> {
    const id = rowId(table, key)
    const shard = await this.shardOfKey(table, key, options)
    if (shard === undefined) return undefined
    return options.local === true
      ? await this.coordinator.readLocal(table.name, id, shard)
      : await this.coordinator.read(table.name, id, shard, options)
  }

  /**
   * The shard of a row known only by its key. Where the shard key is not part
   * of the key (appointments by doctor, history by patient), a locator record
   * (`_locator`, placed on the ring by the row's key) names the shard.
   */
  private async shardOfKey (table: TableDef, key: Row, options: RequestOptions = {}): Promise<string | undefined> {
    if (!needsLocator(table)) return shardValue(table, key)
    const state = await this.coordinator.read(LOCATOR_TABLE, locatorId(table, key), locatorShard(table, key), options)
    const head = winner(state)
    const shard = head?.row?.shard
    return typeof shard === 'string' ? shard : undefined
  }

  /** The shard a deleted row lived on, from its locator's newest live version */
  private async formerShardOfKey (table: TableDef, key: Row, options: RequestOptions): Promise<string | undefined> {
    if (!needsLocator(table)) return undefined
    const versions = await this.coordinator.history(LOCATOR_TABLE, locatorId(table, key), locatorShard(table, key), options)
    for (const v of [...versions].reverse()) {
      const shard = v.row?.shard
      if (typeof shard === 'string') return shard
    }
    return undefined
  }

  /**
   * Runs a check-then-write on tables with unique columns one at a time on
   * this node, so two concurrent writes (an import, say) cannot both pass the
   * uniqueness check. Tables without unique columns run at once.
   */
  private async withUniqueLock<T> (tables: TableDef[], fn: () => Promise<T>): Promise<T> {
    const names = tables.filter(t => t.unique.length > 0).map(t => t.name)
    if (names.length === 0) return await fn()
    const release = await this.uniqueLocks.lock(names)
    try {
      return await fn()
    } finally {
      release()
    }
  }

  /**
   * Takes, network-wide, every unique value of `row` that `before` did not
   * hold: one claim record per value (`_unique`, placed on the ring by the
   * value), so two nodes writing one value meet at one primary and the
   * second gets 409. The scan in checkRow still catches rows stored before
   * claims existed. Values taken are given back if a later one fails.
   */
  private async claimValues (table: TableDef, row: Row, before: Row | null | undefined, options: RequestOptions): Promise<Claim[]> {
    if (table.unique.length === 0) return []
    const owner = rowId(table, row)
    const made: Claim[] = []
    try {
      for (const column of table.unique) {
        const value = row[column]
        if (value === null || value === undefined || before?.[column] === value) continue
        const version = await this.claimValue({ table, column, value, owner }, options)
        if (version !== undefined) made.push({ table, column, value, owner, version })
      }
    } catch (err) {
      await this.releaseClaims(made, options)
      throw err
    }
    return made
  }

  /**
   * Claims one value for its owner row. Returns the claim version this call
   * wrote, or undefined when the claim was already the row's and is kept as
   * it is: only a claim this write made is given back if the write fails
   * (another write of the same row may be counting on an existing one).
   */
  private async claimValue (claim: Claim, options: RequestOptions): Promise<string | undefined> {
    const { table, column, value, owner } = claim
    const { id, shard } = claimRecord(table, column, value)
    const taken = (holder: string): ConflictError => new ConflictError(`${column} ${JSON.stringify(value)} is already used by ${table.name} ${holder}`, { column })
    for (let attempt = 1; attempt <= CLAIM_ATTEMPTS; attempt++) {
      try {
        const [made] = await this.coordinator.write([{ op: 'insert', table: UNIQUE_TABLE, id, shard, row: { owner } }], options)
        return made?.version
      } catch (err) {
        if (!hasCode(err, 'CONFLICT')) throw err
      }
      const state = await this.coordinator.read(UNIQUE_TABLE, id, shard, options)
      const head = winner(state)
      // Given back since our insert met it: insert again
      if (head?.row == null) continue
      const holder = String(head.row.owner)
      const age = Date.now() - (parseVersion(head.version)?.wall ?? Date.now())
      const mine = holder === owner
      // Already this row's: kept, but renewed when old, so that nobody judges it abandoned while
      // this write is on its way. Another row's claim is taken over only once it is old enough
      // that no write of that row can still be under way, and that row does not hold the value
      // (its write failed, or the release was lost).
      if (mine && age < this.claimGraceMs / 2) return undefined
      if (!mine && (age < this.claimGraceMs || await this.holdsValue(table, holder, column, value, options))) throw taken(holder)
      try {
        const [made] = await this.coordinator.write([{ op: 'put', table: UNIQUE_TABLE, id, shard, row: { owner }, ifMatch: [head.version] }], options)
        return mine ? undefined : made?.version
      } catch (err) {
        // Changed or given back since we read it: look again
        if (!hasCode(err, 'PRECONDITION_FAILED') && !hasCode(err, 'NOT_FOUND')) throw err
      }
    }
    throw taken('another row')
  }

  /** Whether row `id` of `table` exists and holds `value` in `column` */
  private async holdsValue (table: TableDef, id: string, column: string, value: Value, options: RequestOptions): Promise<boolean> {
    const state = await this.readState(table, parseId(table, id), options)
    const row = winner(state)?.row
    return row != null && row[column] === value
  }

  /**
   * Gives back claims this write made, each only if still at the version it
   * wrote. Best effort, as are all releases: a claim that cannot be given back
   * now stays behind, and the next writer of its value takes it over after
   * the grace period.
   */
  private async releaseClaims (claims: Claim[], options: RequestOptions): Promise<void> {
    for (const { table, column, value, version } of claims) {
      if (version !== undefined) await this.dropClaim(claimRecord(table, column, value), version, options)
    }
  }

  /** Gives back the unique values `before` held that `after` (null: deleted) no longer does: the claims that name its row */
  private async releaseValues (table: TableDef, before: Row, after: Row | null, options: RequestOptions): Promise<void> {
    if (table.unique.length === 0) return
    const owner = rowId(table, before)
    for (const column of table.unique) {
      const value = before[column]
      if (value === null || value === undefined || (after !== null && after[column] === value)) continue
      const record = claimRecord(table, column, value)
      const state = await this.coordinator.read(UNIQUE_TABLE, record.id, record.shard, options).catch(() => undefined)
      const head = winner(state)
      if (head?.row?.owner === owner) await this.dropClaim(record, head.version, options)
    }
  }

  /** Deletes a claim record if it is still at `version`; best effort (see releaseClaims) */
  private async dropClaim ({ id, shard }: { id: string, shard: string }, version: string, options: RequestOptions): Promise<void> {
    await this.coordinator.write([{ op: 'delete', table: UNIQUE_TABLE, id, shard, ifMatch: [version] }], options).catch(() => {})
  }

  /** A write that changes a row from `before` to `after`, with its unique values claimed first and the old ones given back after */
  private async writeClaimed<T> (table: TableDef, before: Row, after: Row, options: RequestOptions, write: () => Promise<T>): Promise<T> {
    const claims = await this.claimValues(table, after, before, options)
    let result: T
    try {
      result = await write()
    } catch (err) {
      if (isRefusal(err)) await this.releaseClaims(claims, options)
      throw err
    }
    await this.releaseValues(table, before, after, options)
    return result
  }

  /** Claims the row's key network-wide before the row is written (409 when the key is taken) */
  private async claimKey (table: TableDef, row: Row, options: RequestOptions, writeId?: string): Promise<void> {
    if (!needsLocator(table)) return
    const claim = this.claimMutation(table, row)
    // A keyed claim is its own on a repeat; it is written at quorum, the caller's consistency being the row's.
    if (writeId !== undefined) Object.assign(claim, { writeId, keyed: true })
    await this.coordinator.write([claim], writeId === undefined ? options : atMostQuorum(options)).catch(err => {
      if (hasCode(err, 'CONFLICT')) throw new ConflictError(`${table.name} ${rowId(table, row)} already exists`, { cause: err })
      throw err
    })
  }

  private claimMutation (table: TableDef, row: Row): Mutation {
    return { op: 'insert', table: LOCATOR_TABLE, id: locatorId(table, row), shard: locatorShard(table, row), row: { shard: shardValue(table, row) } }
  }

  /** Gives a key back after its row's write failed or the row was deleted */
  private async releaseKey (table: TableDef, row: Row, options: RequestOptions): Promise<void> {
    if (!needsLocator(table)) return
    await this.coordinator.write([{ op: 'delete', table: LOCATOR_TABLE, id: locatorId(table, row), shard: locatorShard(table, row) }], options)
      .catch(err => { if (!hasCode(err, 'NOT_FOUND')) throw err })
  }

  /** References, uniqueness and the lab result's patient; `columns` narrows the check to changed columns */
  private async checkRow (table: TableDef, row: Row, selfId: string | undefined, options: RequestOptions, columns?: string[], earlier?: BatchRows): Promise<void> {
    await this.checkReferences(table, row, options, columns, undefined, earlier)
    for (const col of table.unique) {
      if (columns !== undefined && !columns.includes(col)) continue
      const value = row[col]
      if (value === null || value === undefined) continue
      const page = await this.coordinator.scan(table.name, { where: { [col]: value }, limit: 2 }, options)
      const other = page.rows.find(r => r.state.id !== selfId)
      if (other !== undefined) {
        throw new ConflictError(`${col} ${JSON.stringify(value)} is already used by ${table.name} ${other.state.id}`, { column: col })
      }
    }
  }

  /**
   * Every referenced row must exist; `lookups` shares one lookup per
   * referenced row across many rows. `earlier`: rows a batch's earlier
   * operations write, which count as they will be once the batch lands (all
   * of it or none): a new patient and their first visit are one batch.
   */
  private async checkReferences (table: TableDef, row: Row, options: RequestOptions, columns?: string[], lookups?: Map<string, Promise<void>>, earlier?: BatchRows): Promise<void> {
    for (const ref of table.references) {
      if (columns !== undefined && !columns.includes(ref.column)) continue
      const value = row[ref.column]
      if (value === null || value === undefined) continue
      const target = this.table(ref.table)
      const lookup: Row = { [ref.refColumn]: value }
      if (target.shardKey !== 'global' && target.shardKey !== ref.refColumn) lookup[target.shardKey] = row[target.shardKey] ?? null
      const scope = target.shardKey !== 'global' && target.shardKey !== ref.refColumn ? ` for ${target.shardKey} ${String(lookup[target.shardKey])}` : ''
      const inBatch = earlier?.get(`${target.name}|${rowId(target, lookup)}`)
      if (inBatch !== undefined) {
        const sameShard = target.shardKey === 'global' || target.shardKey === ref.refColumn || inBatch.row?.[target.shardKey] === lookup[target.shardKey]
        if (inBatch.row !== null && sameShard) continue
        throw new ReferenceError(`${ref.column} ${String(value)}: no such ${target.name} row${scope} (operations[${inBatch.index}] of this batch ${inBatch.row === null ? 'deletes it' : 'writes it for another ' + target.shardKey})`, { column: ref.column })
      }
      const key = `${target.name}|${rowId(target, lookup)}${scope}`
      let check = lookups?.get(key)
      if (check === undefined) {
        check = (async () => {
          const state = lookup[target.shardKey as string] === null
            ? undefined
            : await this.coordinator.read(target.name, rowId(target, lookup), shardValue(target, lookup), options)
          if (winner(state)?.row == null) {
            throw new ReferenceError(`${ref.column} ${String(value)}: no such ${target.name} row${scope}`, { column: ref.column })
          }
        })()
        lookups?.set(key, check)
      }
      await check
    }
  }

  private async referencingRows (table: TableDef, row: Row, options: RequestOptions, limit: number): Promise<Array<{ table: TableDef, rows: Row[] }>> {
    const out: Array<{ table: TableDef, rows: Row[] }> = []
    for (const { table: child, reference } of referencingTables(table.name)) {
      const value = row[reference.refColumn]
      if (value === null || value === undefined) continue
      const where: Record<string, Value> = { [reference.column]: value }
      const page = await this.coordinator.scan(child.name, { where, limit }, options)
      const rows = page.rows.map(r => winner(r.state)?.row).filter((r): r is Row => r != null)
      if (rows.length > 0) out.push({ table: child, rows })
    }
    return out
  }

  private async refuseIfReferenced (table: TableDef, row: Row, options: RequestOptions): Promise<void> {
    const refs = await this.referencingRows(table, row, options, 1)
    const first = refs[0]
    if (first !== undefined) {
      throw new ConflictError(`${table.name} ${rowId(table, row)} is still referenced by ${first.table.name} ${rowId(first.table, first.rows[0] as Row)}; delete those first or ask to cascade`)
    }
  }

  /** Deletes (cascade) or refuses on rows that reference `row`; returns how many were deleted */
  private async deleteReferences (table: TableDef, row: Row, options: DeleteOptions): Promise<number> {
    if (options.cascade !== true) {
      await this.refuseIfReferenced(table, row, options)
      return 0
    }
    let deleted = 0
    // One referencing table at a time, scanned afresh: deleting a row may
    // already have deleted rows of a later table (history -> lab results).
    for (const { table: child, reference } of referencingTables(table.name)) {
      const value = row[reference.refColumn]
      if (value === null || value === undefined) continue
      // A row still listed after its delete (a conflicting head outranks the tombstone) is not retried forever.
      const done = new Set<string>()
      for (;;) {
        const page = await this.coordinator.scan(child.name, { where: { [reference.column]: value }, limit: MAX_LIMIT }, options)
        const rows = page.rows.map(r => winner(r.state)?.row).filter((r): r is Row => r != null && !done.has(rowId(child, r)))
        if (rows.length === 0) break
        for (const r of rows) {
          done.add(rowId(child, r))
          deleted += 1 + await this.deleteReferences(child, r, options)
          await this.coordinator.write([this.mutation('delete', child, r)], options)
          await this.releaseValues(child, r, null, options)
          await this.releaseKey(child, r, options)
        }
      }
    }
    return deleted
  }
}


/** The claim record of a unique value: `<table>.<column>.<128 bits of SHA-256 of the value>` */
/** A replacement row must be a JSON object: spreading `true` or `[]` would write the bare key */
function requireObject (table: TableDef, body: unknown): object {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new ValidationError(`A ${table.name} row must be a JSON object`)
  return body
}

export function uniqueClaimId (table: TableDef, column: string, value: Value): string {
  return `${table.name}.${column}.${createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, 32)}`
}

/** Where a unique value's claim lives: its record id and the shard that places it */
function claimRecord (table: TableDef, column: string, value: Value): { id: string, shard: string } {
  const id = uniqueClaimId(table, column, value)
  return { id, shard: internalShard(UNIQUE_TABLE, id) as string }
}

function needsLocator (table: TableDef): boolean {
  return table.shardKey !== 'global' && !table.primaryKey.includes(table.shardKey)
}

function locatorId (table: TableDef, key: Row): string {
  return `${table.name}.${rowId(table, key)}`
}

function locatorShard (table: TableDef, key: Row): string {
  return internalShard(LOCATOR_TABLE, locatorId(table, key)) as string
}

/** The column name of the claim records that keep the id a keyed insert drew (no table column starts with `_`) */
const KEY_CLAIM = '_idempotency_key'

/** Ids derived from an import line's key are in [2^52, 2^53): apart from generated ids until about 2059 */
const IMPORTED_ID_BASE = 2 ** 52

/**
 * The id of an imported row that names none, derived from its line's key
 * (52 bits of its SHA-256 above IMPORTED_ID_BASE): the same line imported
 * again gets the same id and meets its own row. Unique but not time-ordered;
 * a clash with another row (1 in 2^52 per pair) rejects the line with 409.
 */
export function importedId (key: string): number {
  return IMPORTED_ID_BASE + parseInt(createHash('sha256').update(key).digest('hex').slice(0, 13), 16)
}

/** The write id of a keyed write, undefined without a key */
function keyOf (options: KeyedOptions, ...scope: string[]): string | undefined {
  return options.idempotencyKey === undefined ? undefined : keyedWriteId(options.idempotencyKey, ...scope)
}

/** Bookkeeping records (ids kept for a key, keyed locators) need a quorum; `all` is for the row itself */
function atMostQuorum (options: RequestOptions): RequestOptions {
  if (options.consistency !== 'all') return options
  const { consistency: _, ...rest } = options
  return rest
}

/** A definite "no" from the database: nothing was written, so a claimed key can be given back */
function isRefusal (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && ['CONFLICT', 'REFERENCE', 'INVALID', 'INVALID_MESSAGE', 'PRECONDITION_FAILED', 'NOT_FOUND', 'UNKNOWN_TABLE'].includes(code)
}

function errorBody (err: unknown): { code: string, message: string, column?: string } {
  if (err instanceof NtsoekheError) return err.toJSON()
  const e = err as { code?: unknown, message?: unknown }
  if (typeof e?.code === 'string' && typeof e.message === 'string') return e as { code: string, message: string }
  return { code: 'INTERNAL', message: String((err as Error)?.message ?? err) }
}

function toReadResponse (table: TableDef, id: string, state: RecordState | undefined): ReadResponse {
  const head = winner(state)
  if (state === undefined || head === undefined || head.row === null) {
    throw new NotFoundError(`${table.name} ${id} not found`)
  }
  return {
    row: head.row,
    version: head.version,
    conflicts: state.heads.filter(h => h !== head).map(h => ({ version: h.version, row: h.row }))
  }
}

function orderColumns (table: TableDef, row: Row): Row {
  const out: Row = {}
  for (const c of table.columns) {
    const v = row[c.name]
    if (v !== undefined) out[c.name] = v
  }
  return out
}

function assertSameKey (table: TableDef, key: Row, row: Row): void {
  for (const k of table.primaryKey) {
    if (row[k] !== undefined && row[k] !== key[k]) {
      throw new ValidationError(`${k} is part of the row's key and cannot change (${String(key[k])} -> ${String(row[k])})`, { column: k })
    }
  }
}

/** Two rows of one batch may not take the same unique value: neither sees the other in the check */
function assertUniqueWithin (mutations: Mutation[]): void {
  const taken = new Map<string, string>()
  for (const m of mutations) {
    const table = findTable(m.table)
    if (table === undefined || m.row === undefined) continue
    for (const col of table.unique) {
      const value = m.row[col]
      if (value === null || value === undefined) continue
      const key = `${table.name}\u0000${col}\u0000${typeof value}:${String(value)}`
      const other = taken.get(key)
      if (other !== undefined && other !== m.id) {
        throw new ConflictError(`${col} ${JSON.stringify(value)} is given to both ${table.name} ${other} and ${m.id} in this batch`, { column: col })
      }
      taken.set(key, m.id)
    }
  }
}

/** One operation per row in a batch: a second one would be ordered against a row not yet written */
function assertNotWrittenEarlier (earlier: BatchRows, table: TableDef, key: Row): void {
  const first = earlier.get(`${table.name}|${rowId(table, key)}`)
  if (first !== undefined) {
    throw new ValidationError(`${table.name} ${rowId(table, key)} is already written by operations[${first.index}] of this batch; write each row once (an insert can carry the whole row)`)
  }
}

function assertSameShard (table: TableDef, before: Row, after: Row): void {
  if (table.shardKey === 'global') return
  if (before[table.shardKey] !== after[table.shardKey]) {
    throw new ValidationError(`${table.shardKey} is the shard key of ${table.name} and cannot change; delete the row and insert it anew`, { column: table.shardKey })
  }
}

/** A user's filter value typed by its column; a timestamp column also takes a bare date (its midnight) */
export function typedValue (table: TableDef, column: string, raw: string | number | null): Value {
  const col = columnOf(table, column)
  if (raw === null) return null
  if (col.type === 'TIMESTAMP' && typeof raw === 'string' && raw.length === 10) return checkValue({ ...col, type: 'DATE', notNull: false }, raw)
  if (col.type === 'VARCHAR') return checkValue({ ...col, notNull: false, length: undefined }, String(raw))
  return checkValue({ ...col, notNull: false, length: undefined }, typeof raw === 'string' && (col.type === 'INT') && raw.trim() !== '' && !Number.isNaN(Number(raw)) ? Number(raw) : raw)
}

function orderTag (orderBy: string | undefined, desc: boolean): string {
  return `${orderBy ?? ''}${desc ? ':desc' : ''}`
}

/** A query cursor: the order it belongs to and the sort key of the last row given */
export function encodeQueryCursor (key: string, order: string): string {
  return 'q' + toString(fromString(JSON.stringify([order, key]), 'utf8'), 'base64url')
}

export function decodeQueryCursor (cursor: string, order: string): string {
  let parsed: unknown
  try {
    parsed = cursor.startsWith('q') ? JSON.parse(toString(fromString(cursor.slice(1), 'base64url'), 'utf8')) : undefined
  } catch {
    parsed = undefined
  }
  const [tag, key] = Array.isArray(parsed) ? parsed : []
  if (typeof tag !== 'string' || typeof key !== 'string' || key.length > 4096 || !/^[0-9a-f!:\-\xff]+$/.test(key)) {
    throw new ValidationError(`Invalid cursor ${JSON.stringify(cursor.slice(0, 100))}`)
  }
  if (tag !== order) throw new ValidationError(`This cursor continues a list in ${tag === '' ? 'primary-key' : tag} order, not ${order === '' ? 'primary-key' : order} order`)
  return key
}

export function encodeCursor (position: string): string {
  return toString(fromString(position, 'utf8'), 'base64url')
}

export function decodeCursor (cursor: string): string {
  let position: string
  try {
    position = toString(fromString(cursor, 'base64url'), 'utf8')
  } catch {
    // Not base64url at all: the same answer as base64url that holds no position.
    position = ''
  }
  if (!/^[0-9a-f]{16}![0-9:-]+$/.test(position)) throw new ValidationError(`Invalid cursor ${JSON.stringify(cursor)}`)
  return position
}

export type { Consistency }
