import { leafPrefix } from '../../storage/range-summary.js'
import type { WholeRecord } from '../../storage/store.js'
import { MAX_ENTRIES_PER_MESSAGE } from '../apply-batcher.js'
import { checkRecordKey, MAX_PARENTS, parseSyncMessage, SYNC_DIGEST_HEX, type SyncMessage } from '../messages.js'
import { FETCH_REPLY_BYTES, leafRuns, type LocalDigest } from './sync-round.js'
import { PendingStep, type WithoutId } from './effects.js'

/**
 * What answering one sync request wants done. The reads carry an `id`
 * and wait for their result (or failed(id)); at most one is pending.
 */
export type ServeEffect =
  /** This node's range digests (summaryRead) */
  | { type: 'readSummary', id: number }
  /** This node's leaf digests of some ranges (leavesRead) */
  | { type: 'readLeaves', id: number, buckets: number[] }
  /** Up to `limit` of this node's records in leaves `leaf`..`through`, after the key `after` (digestsRead) */
  | { type: 'readDigests', id: number, leaf: number, through: number, limit: number, after?: string }
  /** One record whole (state and history), or undefined when it is not held or has no heads (recordRead) */
  | { type: 'readRecord', id: number, key: string }
  /** The answer to send (it passes the node's bandwidth budget first) */
  | { type: 'reply', reply: unknown }
  /** The request is refused with this error (malformed, or a read failed) */
  | { type: 'refuse', error: unknown }

type Read = Extract<ServeEffect, { id: number }>
type Op = WithoutId<Read>
type Body<T> = Generator<Op, T, unknown>

export interface SyncAnswerInit {
  self: string
  /** The member asking */
  from: string
  /** A record's owners, in preference order (the ring: a lookup, no I/O) */
  owners: (table: string, token: string) => string[]
}

/**
 * The answer to one request of the sync protocol, as a state machine with
 * no I/O: the request is checked, this node's side read step by step, and
 * only records the asker owns too are listed or sent. A digest page counts
 * the records read, listed or not, so its work stays bounded; a fetch
 * answer stops at FETCH_REPLY_BYTES or MAX_ENTRIES_PER_MESSAGE versions
 * (the asker asks again for the rest) and names the records it does not
 * hold or will not give. Who may ask at all is the driver's to check.
 *
 * Inputs: start(raw); summaryRead, leavesRead, digestsRead, recordRead;
 * failed(id, error). Each returns the effects to perform.
 */
export class SyncAnswer {
  private readonly init: SyncAnswerInit
  private body?: Body<unknown>
  private readonly pending = new PendingStep<Read>()

  constructor (init: SyncAnswerInit) {
    this.init = init
  }

  start (raw: unknown): ServeEffect[] {
    let msg: SyncMessage
    try {
      msg = parseSyncMessage(raw)
    } catch (error) {
      return [{ type: 'refuse', error }]
    }
    this.body = this.answer(msg)
    return this.advance({ value: undefined })
  }

  summaryRead (id: number, buckets: string[]): ServeEffect[] { return this.resume(id, 'readSummary', buckets) }
  leavesRead (id: number, leaves: string[][]): ServeEffect[] { return this.resume(id, 'readLeaves', leaves) }
  digestsRead (id: number, records: LocalDigest[]): ServeEffect[] { return this.resume(id, 'readDigests', records) }
  recordRead (id: number, record: WholeRecord | undefined): ServeEffect[] { return this.resume(id, 'readRecord', record) }

  /** A read failed: the request is refused with its error */
  failed (id: number, error: unknown): ServeEffect[] {
    if (!this.pending.answer(id)) return []
    return [{ type: 'refuse', error }]
  }

  private resume (id: number, kind: Read['type'], value: unknown): ServeEffect[] {
    if (!this.pending.answer(id, [kind], 'SyncAnswer')) return []
    return this.advance({ value })
  }

  private advance (input: { value: unknown }): ServeEffect[] {
    const body = this.body as Body<unknown>
    let next: IteratorResult<Op, unknown>
    try {
      next = body.next(input.value)
    } catch (error) {
      return [{ type: 'refuse', error }]
    }
    if (next.done === true) return [{ type: 'reply', reply: next.value }]
    return [this.pending.issue(next.value)]
  }

  private coOwned (table: string, token: string): boolean {
    const owners = this.init.owners(table, token)
    return owners.includes(this.init.self) && owners.includes(this.init.from)
  }

  private * answer (msg: SyncMessage): Body<unknown> {
    switch (msg.type) {
      case 'summary':
        return { buckets: yield { type: 'readSummary' } }
      case 'leaves':
        return { leaves: yield { type: 'readLeaves', buckets: msg.buckets } }
      case 'digests':
        return yield * this.digests(msg)
      case 'fetch':
        return yield * this.fetch(msg.keys)
    }
  }

  private * digests (msg: Extract<SyncMessage, { type: 'digests' }>): Body<unknown> {
    // Pages count the records scanned, shared or not, so a page's work stays bounded.
    const scanned: LocalDigest[] = []
    for (const [leaf, through] of leafRuns(msg.leaves)) {
      const left = msg.limit - scanned.length
      if (left <= 0) break
      if (msg.after !== undefined && leafPrefix(through) < msg.after.slice(0, 4)) continue
      scanned.push(...(yield { type: 'readDigests', leaf, through, limit: left, ...(msg.after === undefined ? {} : { after: msg.after }) }) as LocalDigest[])
    }
    const last = scanned[scanned.length - 1]
    return {
      // The heads let the asker tell a copy of its own that is merely newer (it pushes) from one it must pull.
      records: scanned.filter(r => this.coOwned(r.table, r.token)).map(r => r.heads.length > MAX_PARENTS ? [r.key, r.digest.slice(0, SYNC_DIGEST_HEX)] : [r.key, r.digest.slice(0, SYNC_DIGEST_HEX), r.heads]),
      ...(scanned.length === msg.limit && last !== undefined ? { next: last.key } : {})
    }
  }

  private * fetch (keys: string[]): Body<unknown> {
    const records: WholeRecord[] = []
    const missing: string[] = []
    let bytes = 0
    let versions = 0
    for (const key of keys) {
      const { table, token } = checkRecordKey(key)
      // Only records the asker owns: it has no business with the others.
      const record = this.coOwned(table, token) ? (yield { type: 'readRecord', key }) as WholeRecord | undefined : undefined
      if (record === undefined) { missing.push(key); continue }
      const size = JSON.stringify(record).length
      if (records.length > 0 && (bytes + size > FETCH_REPLY_BYTES || versions + record.versions.length + record.state.heads.length > MAX_ENTRIES_PER_MESSAGE)) break
      records.push(record)
      bytes += size
      versions += record.versions.length + record.state.heads.length
    }
    return { records, missing }
  }
}
