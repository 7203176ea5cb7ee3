import type { Row, Value } from '../schema/index.js'
import type { RecordState, VersionEntry } from '../storage/store.js'
import type { RowPage, RowQuery } from '../storage/ordered.js'
import type { Fragment, FragmentResult } from '../query/fragment.js'

/** How many replicas must answer: one, a quorum (W or R), or all N */
export type Consistency = 'one' | 'quorum' | 'all'

export const CONSISTENCY_LEVELS: readonly Consistency[] = ['one', 'quorum', 'all']

/** One logical write, as the primary of its key orders it */
export interface Mutation {
  op: 'insert' | 'put' | 'delete'
  table: string
  id: string
  /** The shard-key value that places the row (`patient_id:42`) */
  shard: string
  /** The full row, for insert and put */
  row?: Row
  /** Versions the write replaces; each must be a current head, else 412 */
  ifMatch?: string[]
  /** Random id of this client write (16 hex digits), stored on its versions so a retry can recognise it */
  writeId?: string
  /**
   * The write id comes from the client's Idempotency-Key: any repeat is
   * answered with the version that carries it, wherever it is in the
   * record's history, and nothing new is written.
   */
  keyed?: boolean
  /**
   * A put without If-Match that changes only these columns (a PATCH): the
   * primary applies them onto its current head under the record's lock, so
   * a concurrent writer never makes it fail. `row` is the sender's whole
   * row; only these columns of it are taken.
   */
  changed?: string[]
}

/** What became of one group of a `writeGroups` call */
export type GroupOutcome = { ok: true, results: WriteResult[] } | { ok: false, error: { code: string, message: string, column?: string } }

/** What became of one group of an `insertOnce` call */
export type InsertOutcome = { ok: true } | { ok: false, error: { code: string, message: string } }

export interface WriteResult {
  table: string
  id: string
  version: string
  row: Row | null
}

export interface RequestOptions {
  consistency?: Consistency
  signal?: AbortSignal
}

export interface ScanRequest {
  where?: Record<string, Value>
  /** Resume after this position (`<token>!<id>`) */
  after?: string
  /** Only rows under this ring token: one shard-key value's rows, found without an index */
  token?: string
  limit: number
}

export interface ScanPage {
  rows: Array<{ state: RecordState, position: string }>
  next?: string
}

export interface QueryPage extends RowPage {
  /** Who was asked: each member with the token ranges it answered for (a member's own id for this node) */
  asked: Array<{ peer: string, ranges: number }>
  /** Whether the filter fixed the shard key, so one replica set answered */
  singleShard: boolean
}

export interface FragmentAnswer {
  result: FragmentResult
  asked: Array<{ peer: string, ranges: number }>
  singleShard: boolean
  /** Ranges whose copies disagreed (or did not all answer), recomputed from quorum reads */
  rechecked: number
}

export interface MemberStatus {
  peerId: string
  state: 'alive' | 'suspect' | 'down' | 'left'
  addresses: string[]
  lastSeen?: number
  /** The member's clock minus this node's, as last measured (ms): beyond MAX_CLOCK_SKEW_MS it is logged */
  clockOffsetMs?: number
}

export interface ClusterStatus {
  peerId: string
  replicas: number
  writeQuorum: number
  readQuorum: number
  members: MemberStatus[]
  underReplicated: boolean
}

/**
 * The seam between the query layer and the network: where a record lives and
 * how many copies must answer is the coordinator's business alone. The
 * single-node implementation is `LocalCoordinator`; the networked one places
 * keys on the ring and talks to replicas.
 */
export interface Coordinator {
  start: () => Promise<void>
  stop: () => Promise<void>
  /** Applies mutations that share one shard key, all or nothing */
  write: (mutations: Mutation[], options?: RequestOptions) => Promise<WriteResult[]>
  /**
   * Applies many independent groups (each sharing one shard key, each all or
   * nothing) in as few round trips and durable batches as possible; one
   * group's failure is reported in its place and does not fail the others.
   */
  writeGroups: (groups: Mutation[][], options?: RequestOptions) => Promise<GroupOutcome[]>
  /**
   * Stores first versions of records written once and never changed (audit
   * entries), in groups that each share one ring token. The caller makes
   * each version once and keeps it across retries, so a group needs no
   * primary to order it: it goes straight to its owners, and writing it
   * twice stores the same thing. A group succeeds once W owners have it on
   * disk; owners that missed it get it as a hint.
   */
  insertOnce: (groups: VersionEntry[][], options?: RequestOptions) => Promise<InsertOutcome[]>
  read: (table: string, id: string, shard: string, options?: RequestOptions) => Promise<RecordState | undefined>
  /** Reads only this node's shard */
  readLocal: (table: string, id: string, shard: string) => Promise<RecordState | undefined>
  history: (table: string, id: string, shard: string, options?: RequestOptions) => Promise<VersionEntry[]>
  /** Lists a table across the whole network, in position order */
  scan: (table: string, request: ScanRequest, options?: RequestOptions) => Promise<ScanPage>
  /**
   * Reads a table's rows in order (the primary key's, or a column's) across
   * the network: each replica set asked once, at the read quorum's number
   * of copies, sorted streams merged, stopping at the limit. A filter that
   * fixes the shard key asks one replica set. `tokenRanges` in the request
   * is the coordinator's to fill.
   */
  query: (table: string, request: RowQuery, options?: RequestOptions) => Promise<QueryPage>
  /**
   * Runs a query fragment (a join, grouping and partial aggregates, or a
   * sort) on the owners: each token range on the read quorum's number of
   * copies, taken when their digests agree, else recomputed here from
   * quorum reads of that range; the ranges' results merged.
   */
  fragment: (fragment: Fragment, options?: RequestOptions) => Promise<FragmentAnswer>
  status: () => Promise<ClusterStatus>
  /**
   * Erases a record everywhere (every version, its hints and index entries),
   * keeping a marker so that no copy of it comes back; a member that is down
   * gets the erasure as a hint. Returns how many nodes erased it now.
   */
  purge: (table: string, id: string, shard: string) => Promise<number>
}
