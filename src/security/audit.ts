import { toString } from 'uint8arrays'
import type { Coordinator, Consistency } from '../cluster/coordinator.js'
import { AUDIT_TABLE } from '../cluster/messages.js'
import { tokenOf } from '../cluster/token.js'
import { ValidationError } from '../errors/index.js'
import type { RecordState, VersionEntry } from '../storage/store.js'
import { winner } from '../storage/store.js'
import { formatVersion, nodeTag } from '../storage/version.js'
import { parseMoment } from '../schema/validate.js'
import {
  GENESIS, SEAL_PREFIX, auditId, auditShard, clip, hashEntry, patientOf, sealBytes, toLink, verifyChains,
  type AuditBody, type AuditRow, type ChainLink, type VerifyResult
} from './audit-entry.js'
import type { AccessEvent } from './principal.js'

/**
 * Columns of `_audit` with a secondary index: none. Every entry about a
 * patient has the patient's ring token, so a query by patient reads that
 * token's run of the table list; an index would cost every entry a write on
 * every replica. A query by user or time is rare and scans the table.
 */
export const AUDIT_INDEXED: string[] = []

/** @default */
export const DEFAULT_FLUSH_INTERVAL_MS = 50
/** @default */
export const DEFAULT_MAX_PENDING = 10_000
/** @default */
export const DEFAULT_MAX_BATCH = 1000
/** Entries one query answers at most */
export const MAX_QUERY_ENTRIES = 10_000
/** Rows per scan page while reading the trail */
const SCAN_PAGE = 1000
/** How long `stop()` keeps trying to write what is still pending */
const STOP_FLUSH_MS = 5000
/** At most one warning about dropped entries per this long */
const DROP_WARN_EVERY_MS = 10_000
/** Where the chain head is kept between runs */
export const HEAD_KEY = 'auditHead'

/** The chain head as persisted: the last seq given out (and its hash), and the last one known written */
export interface ChainHead {
  seq: number
  hash: string
  written: number
}

/**
 * Where the chain head and the journal survive restarts (the store's meta,
 * in the daemon). The journal holds every entry that was sequenced and not
 * yet written to its replicas: saved with the head before the entry leaves,
 * dropped once it is written, read back at start and sent again.
 */
export interface HeadStore {
  load: () => Promise<ChainHead | undefined>
  /** Saves the head, adds entries to the journal and drops written ones, in one durable batch */
  save: (head: ChainHead, add?: JournalEntry[], drop?: number[]) => Promise<void>
  journal: () => Promise<JournalEntry[]>
}

/** An entry as the journal keeps it: the row and its one version */
export interface JournalEntry { version: string, row: AuditRow }

const JOURNAL_PREFIX = 'auditJournal:'
const journalKey = (seq: number): string => JOURNAL_PREFIX + String(seq).padStart(16, '0')

/** The chain head and journal kept in the store's node meta, beside the data they describe */
export function storeHead (store: {
  getMeta: <T>(key: string) => Promise<T | undefined>
  updateMeta: (puts: Array<[string, unknown]>, dels?: string[]) => Promise<void>
  metaRange: <T>(prefix: string) => Promise<Array<[string, T]>>
}): HeadStore {
  return {
    load: async () => await store.getMeta<ChainHead>(HEAD_KEY),
    save: async (head, add = [], drop = []) => {
      await store.updateMeta([[HEAD_KEY, head], ...add.map((e): [string, unknown] => [journalKey(e.row.seq), e])], drop.map(journalKey))
    },
    journal: async () => (await store.metaRange<JournalEntry>(JOURNAL_PREFIX)).map(([, e]) => e)
  }
}

export interface AuditTrailComponents {
  coordinator: Coordinator
  /** This node's peer id: the chain's name and the prefix of its entries' ids */
  peerId: string
  head: HeadStore
  /** @default Date.now */
  now?: () => number
  log?: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void
  /** Signs with this node's identity key: each batch then ends with a seal (see audit-entry.ts). @default no seals */
  sign?: (data: Uint8Array) => Uint8Array
}

export interface AuditTrailInit {
  /** How often buffered entries are written, ms. @default 50 */
  flushIntervalMs?: number
  /** Entries kept while they cannot be written; past it new ones are dropped and counted. @default 10000 */
  maxPending?: number
  /** Entries per write (and the buffer size that starts a write early). @default 1000 */
  maxBatch?: number
  /** Replicas that must take an entry before it counts as written. @default 'quorum' */
  consistency?: Consistency
}

export interface AuditFilter {
  patient?: string
  user?: string
  /** ISO 8601 time: entries at or after it */
  since?: string
}

export interface AuditCounts {
  /** Entries accepted by record() since start */
  recorded: number
  /** Entries written to their replicas */
  written: number
  /** Entries waiting to be written (buffered, or refused by the network and kept) */
  pending: number
  /** Entries that could not be kept (the pending bound was reached, or the trail was stopped) */
  dropped: number
  /** Writes of a batch (or part of one) that failed and will be retried */
  failedWrites: number
  /** This node's last sequence number given out */
  lastSeq: number
}

interface Buffered { event: AccessEvent, at: number }
/** An entry with its one version, made when it is sequenced and kept across retries */
type Sequenced = VersionEntry & { row: AuditRow }

/**
 * The audit trail of one node. `record()` only buffers (the request never
 * waits for a replicated write); every `flushIntervalMs`, or when a batch is
 * full, the buffered events get their seq and hashes and are written through
 * the coordinator, one group per shard. Entries the network refused are kept
 * and retried, in seq order, up to `maxPending`.
 */
export class AuditTrail {
  private readonly c: AuditTrailComponents
  private readonly now: () => number
  private readonly flushIntervalMs: number
  private readonly maxPending: number
  private readonly maxBatch: number
  private readonly consistency: Consistency
  private buffer: Buffered[] = []
  /** Sequenced but not yet written: they must land, or the chain has a hole */
  private unwritten: Sequenced[] = []
  /** Sequenced entries whose journal save failed: saved first by the next flush, before anything is sent */
  private unjournaled: Sequenced[] = []
  /** Seqs written to their replicas and still in the journal: dropped by the next save of the head */
  private written: number[] = []
  /** Entries of the write under way */
  private inFlight = 0
  private seq = 0
  private lastHash = GENESIS
  private writtenSeq = 0
  private readonly counts = { recorded: 0, written: 0, dropped: 0, failedWrites: 0 }
  private state: 'new' | 'started' | 'stopping' | 'stopped' = 'new'
  private timer?: NodeJS.Timeout
  private flushing?: Promise<void>
  private lastDropWarn = 0
  private droppedSinceWarn = 0
  private readonly versionTag: string
  /** The last entry time formatted, and its ms: a batch's entries share a few ms */
  private isoMs = Number.NaN
  private iso = ''

  constructor (components: AuditTrailComponents, init: AuditTrailInit = {}) {
    this.c = components
    this.now = components.now ?? Date.now
    this.flushIntervalMs = init.flushIntervalMs ?? DEFAULT_FLUSH_INTERVAL_MS
    this.maxPending = init.maxPending ?? DEFAULT_MAX_PENDING
    this.maxBatch = Math.min(init.maxBatch ?? DEFAULT_MAX_BATCH, this.maxPending)
    this.consistency = init.consistency ?? 'quorum'
    this.versionTag = nodeTag(components.peerId)
  }

  async start (): Promise<void> {
    if (this.state !== 'new') return
    const head = await this.c.head.load()
    if (head !== undefined) {
      this.seq = head.seq
      this.lastHash = head.hash
      this.writtenSeq = head.written
    }
    this.state = 'started'
    // Entries sequenced but not known to be written are in the journal: they are sent again (a write
    // that did land meets its own version and changes nothing).
    this.unwritten = (await this.c.head.journal()).filter(e => e.row.seq > this.writtenSeq).map(e => this.entryOf(e)).sort((a, b) => a.row.seq - b.row.seq)
    const journaled = new Set(this.unwritten.map(e => e.row.seq))
    // A seq past `written` that is not in the journal was given out but may not have landed (a journal
    // written without fsync, storage.sync false, lost to a power cut): never given out again, and said.
    const missing = Array.from({ length: Math.max(0, this.seq - this.writtenSeq) }, (_, i) => this.writtenSeq + 1 + i).filter(s => !journaled.has(s))
    if (missing.length > 0) {
      const range = `${missing[0] as number}..${missing.at(-1) as number}`
      this.c.log?.('warn', 'audit entries may be missing after an unclean stop', { node: this.c.peerId, seqs: range })
      this.record({ action: 'admin', outcome: 'error', status: 500, reason: `audit entries ${range} of this node were being written when it stopped uncleanly and may be missing` })
    }
    this.timer = setInterval(() => { void this.flush() }, this.flushIntervalMs)
    this.timer.unref()
  }

  /** Writes what is pending (with a deadline) and saves the chain head */
  async stop (): Promise<void> {
    if (this.state !== 'started') return
    this.state = 'stopping'
    clearInterval(this.timer)
    const deadline = this.now() + STOP_FLUSH_MS
    while (this.pending > 0 && this.now() < deadline) {
      const before = this.counts.written
      await this.flush()
      if (this.counts.written === before) await new Promise(resolve => setTimeout(resolve, 100))
    }
    await this.flushing
    // What could not be written in time is kept in the journal, and sent at the next start.
    const rest = this.buffer.splice(0).map(b => this.sequence(b))
    if (rest.length > 0) rest.push(...this.seal())
    this.unwritten.push(...rest)
    if (this.pending > 0) this.c.log?.('warn', 'audit entries not written before stop: kept in the journal for the next start', { pending: this.pending })
    await this.saveHead([...this.unjournaled.splice(0), ...rest], this.written.splice(0))
    this.state = 'stopped'
  }

  /** Buffers one access for the trail. Never throws, never waits */
  record (event: AccessEvent): void {
    if (this.state !== 'started' && this.state !== 'stopping') {
      this.drop(1)
      return
    }
    if (this.pending >= this.maxPending) {
      this.drop(1)
      return
    }
    this.counts.recorded++
    this.buffer.push({ event, at: this.now() })
    if (this.buffer.length >= this.maxBatch && this.flushing === undefined) void this.flush()
  }

  /** Whether an access recorded now would be kept (not dropped): data is served only while it is */
  get accepting (): boolean {
    return this.state === 'started' && this.pending < this.maxPending
  }

  get pending (): number {
    return this.buffer.length + this.unwritten.length + this.inFlight
  }

  status (): AuditCounts {
    return { ...this.counts, pending: this.pending, lastSeq: this.seq }
  }

  /**
   * Writes one batch: entries refused before first (they hold the lowest
   * seqs), then buffered events, sequenced now. Only one flush runs at a time.
   */
  async flush (): Promise<void> {
    if (this.flushing !== undefined) return await this.flushing
    if (this.buffer.length + this.unwritten.length + this.written.length === 0) return
    this.flushing = this._flush().finally(() => { this.flushing = undefined })
    await this.flushing
  }

  private async _flush (): Promise<void> {
    const batch = this.unwritten.splice(0, this.maxBatch)
    const fresh = this.buffer.splice(0, this.maxBatch - batch.length).map(b => this.sequence(b))
    if (fresh.length > 0) fresh.push(...this.seal())
    batch.push(...fresh)
    this.inFlight = batch.length
    let failed: Sequenced[]
    const journal = [...this.unjournaled.splice(0), ...fresh]
    const drop = this.written.splice(0)
    try {
      // Journaled with the head before they leave: a crash neither loses them nor gives out their seqs again.
      // The same commit drops what the last flush wrote (until then a crash would only send it again).
      await this.saveHead(journal, drop)
    } catch (err) {
      this.written.unshift(...drop)
      // Not journaled: they stay here, unsent, and the next flush journals them first.
      this.c.log?.('warn', 'journaling audit entries failed; they are kept and retried', { err: (err as Error).message, entries: journal.length })
      this.inFlight = 0
      this.unjournaled = journal
      this.unwritten = [...batch, ...this.unwritten]
      this.counts.failedWrites++
      return
    }
    if (batch.length === 0) {
      this.inFlight = 0
      return
    }
    try {
      failed = await this.write(batch)
    } catch (err) {
      this.c.log?.('warn', 'writing audit entries failed; they are kept and retried', { err: (err as Error).message, entries: batch.length })
      failed = batch
    } finally {
      this.inFlight = 0
    }
    if (failed.length > 0) this.counts.failedWrites++
    this.counts.written += batch.length - failed.length
    this.unwritten = [...failed, ...this.unwritten]
    const lowestUnwritten = this.unwritten[0]?.row.seq ?? this.seq + 1
    this.writtenSeq = Math.max(this.writtenSeq, lowestUnwritten - 1)
    const failedSeqs = new Set(failed.map(f => f.row.seq))
    for (const s of batch) if (!failedSeqs.has(s.row.seq)) this.written.push(s.row.seq)
  }

  /** The seal that closes a batch: this node's signature over the entry before it (none without a signer) */
  private seal (): Sequenced[] {
    if (this.c.sign === undefined) return []
    const sig = this.c.sign(sealBytes(this.c.peerId, this.seq + 1, this.lastHash))
    return [this.sequence({ event: { action: 'seal', outcome: 'ok', status: 200, reason: SEAL_PREFIX + toString(sig, 'base64pad') }, at: this.now() })]
  }

  /** A journaled entry as it is written: the same version, id and token as when it was sequenced */
  private entryOf (e: JournalEntry): Sequenced {
    return { table: AUDIT_TABLE, id: auditId(e.row.node, e.row.seq), token: tokenOf(auditShard(e.row)), version: e.version, parents: [], row: e.row }
  }

  private sequence (b: Buffered): Sequenced {
    const e = b.event
    if (b.at !== this.isoMs) {
      this.isoMs = b.at
      this.iso = new Date(b.at).toISOString()
    }
    const body: AuditBody = {
      node: this.c.peerId,
      seq: this.seq + 1,
      prev: this.lastHash,
      time: this.iso,
      user: clip(e.principal?.user, 'user'),
      role: clip(e.principal?.role, 'role'),
      action: e.action,
      table: clip(e.table, 'table'),
      key: clip(e.id, 'key'),
      columns: e.columns === undefined ? null : clip(e.columns.join(','), 'columns'),
      outcome: e.outcome,
      status: Number.isSafeInteger(e.status) && e.status >= 100 && e.status <= 599 ? e.status : 500,
      reason: clip(e.reason ?? (e.breakGlass === true ? e.principal?.breakGlass : undefined), 'reason'),
      break_glass: e.breakGlass === true ? 1 : 0,
      patient_id: patientOf(e.patientId)
    }
    const hash = hashEntry(body)
    const row = body as AuditRow
    row.hash = hash
    this.seq = row.seq
    this.lastHash = hash
    // The version is the entry's own (its time and seq), so every write of it, first or retried, is the same.
    const version = formatVersion({ wall: b.at, counter: row.seq % 1_000_000, node: this.versionTag })
    return { table: AUDIT_TABLE, id: auditId(row.node, row.seq), token: tokenOf(auditShard(row)), version, parents: [], row }
  }

  /** Writes entries, one group per shard (ring token); returns those not written, in seq order */
  private async write (batch: Sequenced[]): Promise<Sequenced[]> {
    const groups: Sequenced[][] = []
    const byToken = new Map<string, Sequenced[]>()
    for (const s of batch) {
      let g = byToken.get(s.token)
      if (g === undefined) { g = []; byToken.set(s.token, g); groups.push(g) }
      g.push(s)
    }
    const outcomes = await this.c.coordinator.insertOnce(groups, { consistency: this.consistency })
    const failed: Sequenced[] = []
    outcomes.forEach((o, i) => { if (!o.ok) failed.push(...groups[i] as Sequenced[]) })
    return failed.sort((a, b) => a.row.seq - b.row.seq)
  }

  private async saveHead (add: Sequenced[] = [], drop: number[] = []): Promise<void> {
    const head: ChainHead = { seq: this.seq, hash: this.lastHash, written: this.writtenSeq }
    await this.c.head.save(head, add.map(s => ({ version: s.version, row: s.row })), drop)
  }

  private drop (n: number): void {
    this.counts.dropped += n
    this.droppedSinceWarn += n
    const t = this.now()
    if (t - this.lastDropWarn >= DROP_WARN_EVERY_MS) {
      this.c.log?.('warn', 'audit entries dropped', { dropped: this.droppedSinceWarn, total: this.counts.dropped, state: this.state, pending: this.pending })
      this.lastDropWarn = t
      this.droppedSinceWarn = 0
    }
  }

  /** Entries across the network matching every filter given, oldest first */
  async query (filter: AuditFilter = {}): Promise<{ entries: AuditRow[], truncated: boolean }> {
    const where: Record<string, string> = {}
    let token: string | undefined
    if (filter.patient !== undefined) {
      const p = patientOf(filter.patient)
      if (p === null) throw new ValidationError(`patient must be a patient id (an integer), got ${JSON.stringify(filter.patient)}`)
      where.patient_id = p
      token = tokenOf(auditShard({ node: this.c.peerId, patient_id: p }))
    }
    if (filter.user !== undefined) where.user = filter.user
    const since = filter.since === undefined ? undefined : parseMoment(filter.since, 'since')
    await this.flush()
    const entries: AuditRow[] = []
    let truncated = false
    await this.scanAll(where, token, state => {
      const row = winner(state)?.row as AuditRow | undefined
      // Seals are the chain's own; the trail lists accesses.
      if (row === undefined || row.action === 'seal' || (since !== undefined && row.time < since)) return true
      if (entries.length >= MAX_QUERY_ENTRIES) { truncated = true; return false }
      entries.push(row)
      return true
    })
    entries.sort((a, b) => a.time < b.time ? -1 : a.time > b.time ? 1 : a.node < b.node ? -1 : a.node > b.node ? 1 : a.seq - b.seq)
    return { entries, truncated }
  }

  /**
   * Walks every node's chain this node can reach (a scan of `_audit` across
   * the network) and names the first broken link. This node's own chain is
   * checked up to the last seq it knows written, so a removed last entry is
   * found too.
   */
  async verify (): Promise<VerifyResult> {
    await this.flush()
    const links = new Map<string, Map<number, ChainLink>>()
    await this.scanAll({}, undefined, state => {
      const head = winner(state)
      const dot = state.id.lastIndexOf('.')
      const node = state.id.slice(0, dot)
      const seq = Number(state.id.slice(dot + 1))
      let chain = links.get(node)
      if (chain === undefined) { chain = new Map(); links.set(node, chain) }
      const row = head?.row as AuditRow | undefined
      if (row !== undefined) chain.set(seq, toLink(row, Math.max(state.seen.length, state.heads.length)))
      return true
    })
    return verifyChains(links, new Map([[this.c.peerId, this.writtenSeq]]))
  }

  /** Pages through `_audit` across the network; `each` returns false to stop */
  private async scanAll (where: Record<string, string>, token: string | undefined, each: (state: RecordState) => boolean): Promise<void> {
    let after: string | undefined
    for (;;) {
      const page = await this.c.coordinator.scan(AUDIT_TABLE, { where, limit: SCAN_PAGE, ...(after === undefined ? {} : { after }), ...(token === undefined ? {} : { token }) })
      for (const r of page.rows) if (!each(r.state)) return
      if (page.next === undefined) return
      after = page.next
    }
  }
}

