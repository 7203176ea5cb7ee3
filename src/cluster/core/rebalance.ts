import { findTable } from '../../schema/index.js'
import type { RecordState, VersionEntry } from '../../storage/store.js'
import { chunkWhole, resultOk } from '../apply-batcher.js'
import { planRecordMove, type RecordMove, type StateOf } from '../decisions.js'
import { MAX_STATES } from '../messages.js'
import { HashRing } from '../ring.js'
import type { LogEffect } from './effects.js'

/** Records a rebalance sends per batch (one message per target peer, or a few: see chunkWhole) */
export const REBALANCE_BATCH = 512
/** Hand-off batches in flight at once: the scan waits while this many await their answers */
export const REBALANCE_WINDOW = 4
/** Longest run of failed rebalances the retry wait grows with */
const MAX_FAILURES = 20

/** What a rebalance did (RebalanceStatus.last without its finishing time, which the driver stamps) */
export interface RebalanceCounts {
  /** Local records looked at */
  records: number
  /** Records sent to owners that gained them */
  sent: number
  /** Copies this node no longer owns, removed once every owner had them */
  dropped: number
  /** Records that could not be handed off this time */
  failed: number
}

/** A `holds` question about one record: its key, what it has seen and knows replaced, and every version it stores */
export interface HoldsQuery { table: string, token: string, id: string, seen: string[], superseded: string[], versions: string[] }

/** A record as the scan gives it: placed by its key alone; `open` decodes it (rows decrypted) only when it moves */
export interface ScannedRecord { table: string, token: string, open: () => RecordState | undefined }

/** The message a rebalance sends: whole records, or the question which of them a peer already holds */
export type RebalanceMessage =
  | { type: 'records', records: Array<{ state: RecordState, versions: VersionEntry[] }> }
  | { type: 'holds', records: HoldsQuery[] }

/** What a rebalance run wants done; the driver takes them with ready() after each input */
export type RebalanceEffect =
  /** Read the next page of this node's records and give it to page(), or call scanEnded() (none left) or scanFailed() */
  | { type: 'read' }
  /** Read the history of each record of batch `batch` and give it to history() (or historyFailed()) */
  | { type: 'history', batch: number, states: RecordState[] }
  /** Send `message` to `peer` (a replica request) and give what came back to answer(id) or failure(id) */
  | { type: 'send', id: number, peer: string, message: RebalanceMessage }
  /** Drop these copies (each only as it is: dropMany) and say how many went with dropped() (or dropFailed()) */
  | { type: 'drop', batch: number, states: RecordState[] }
  | LogEffect
  /**
   * The run is over. `placedFor`: every record was handed off; the records
   * are now placed for these members (save it; copies held by a sloppy
   * write went too). `retry`: some could not be; run again after `ms`,
   * with `failures` runs failed in a row.
   */
  | { type: 'done', counts: RebalanceCounts, placedFor?: string[], retry?: { ms: number, failures: number } }

export interface RebalanceRunInit {
  self: string
  /** Copies of every record (N) */
  replicas: number
  vnodes?: number
  /** The ring's members now */
  members: string[]
  /** The members the records on disk were placed for (the ring of the last finished rebalance) */
  placedFor: string[]
  /** Each member's state as this node's membership view has it */
  stateOf: StateOf
  /** Runs in a row before this one that could not hand everything off (0: a first run) */
  failures: number
  /** The quiet time after a ring change, ms: the retry wait grows from it */
  delayMs: number
  /** The periodic run's interval, ms: a retry never waits longer */
  intervalMs: number
}

/** Where one record goes: its targets, which of them are asked `holds` first, whether the copy here is dropped after */
type Route = RecordMove & { ask: string[] }

interface Work { state: RecordState, route: Route }

/** One peer's share of a batch: records sent straight away, and records it is asked about first */
interface Lanes {
  /** `records` messages not yet sent, on the lane that sends straight away (one in flight at a time) */
  sends: number[][]
  /** `holds` questions not yet asked (one at a time), then the records it lacks are sent the same way */
  asks: number[][]
  lacking: number[]
  /** Requests of this peer awaiting an answer (at most one per lane) */
  busy: number
  /** The ask lane's records to send, once every question was answered */
  after: number[][]
}

interface Batch {
  work: Work[]
  history?: VersionEntry[][]
  /** Per record: every target acknowledged it durable so far */
  ok: boolean[]
  lanes: Map<string, Lanes>
  /** Requests awaiting an answer */
  pending: number
  dropping: boolean
}

type Request = { batch: number, peer: string, lane: 'send' | 'ask' | 'after', items: number[] }

/**
 * One rebalance as a state machine with no I/O: moves this node's records
 * to their owners after the ring changed. For each record (planRecordMove)
 * it decides which owners must receive it and whether the copy here is
 * dropped after; records travel whole (`records`) in batches of
 * REBALANCE_BATCH, REBALANCE_WINDOW batches in flight (the scan waits,
 * a page at a time). A target is first asked which records it holds
 * (`holds`) and sent only the rest, except a member that joined since the
 * last placement, which is sent a copy being given up straight away on a
 * first run (it holds none of them). A copy is dropped only once every
 * owner acknowledged it durable; a run that could not hand everything off
 * says when to retry.
 *
 * Inputs: start(), page(), scanEnded(), scanFailed(), history(),
 * historyFailed(), answer(), failure(), dropped(), dropFailed(). The
 * coordinator (distributed.ts) is its driver: it scans and reads the
 * store, sends the requests and keeps the timers.
 */
export class RebalanceRun {
  private readonly init: RebalanceRunInit
  private readonly ring: HashRing
  private readonly before: HashRing
  private readonly placed: Set<string>
  private readonly askNewcomers: boolean
  private readonly counts: RebalanceCounts = { records: 0, sent: 0, dropped: 0, failed: 0 }
  private readonly batches = new Map<number, Batch>()
  private readonly requests = new Map<number, Request>()
  private filling: Work[] = []
  private nextBatch = 0
  private nextRequest = 0
  /** The scan waits for a free place in the window before it reads the next page */
  private waiting = false
  private scanning = true
  private over = false
  private out: RebalanceEffect[] = []

  constructor (init: RebalanceRunInit) {
    this.init = init
    const vnodes = init.vnodes === undefined ? {} : { vnodes: init.vnodes }
    this.ring = new HashRing(vnodes)
    this.ring.setMembers(init.members.map(peerId => ({ peerId })))
    this.before = new HashRing(vnodes)
    this.before.setMembers(init.placedFor.map(peerId => ({ peerId })))
    this.placed = new Set(init.placedFor)
    // A retry may find its first batches at the newcomers already: they are asked too.
    this.askNewcomers = init.failures > 0
  }

  /** The effects of the inputs since the last call, in order (etcd's Ready) */
  ready (): RebalanceEffect[] {
    const out = this.out
    this.out = []
    return out
  }

  /** What the run did so far */
  get status (): RebalanceCounts { return { ...this.counts } }

  /** Batches sent and not yet finished (answered, and their copies dropped) */
  get inflight (): number { return this.batches.size }

  /** Begins the scan */
  start (): void {
    this.out.push({ type: 'read' })
  }

  /**
   * Where one record goes: to the owners that gained it (this node stays an
   * owner), or to every owner before this node's copy is dropped; undefined
   * when it stays as it is. A copy this node gives up goes straight, on a
   * first run, to owners that were not members when its records were last
   * placed; others are asked first which records they hold (where this node
   * stays an owner its own view of who held what may be older than the
   * records it was handed).
   */
  plan (record: { table: string, token: string }): Route | undefined {
    const global = findTable(record.table)?.shardKey === 'global'
    const owners = this.ring.preferenceList(record.token, global ? this.ring.size : this.init.replicas)
    const oldOwners = this.before.preferenceList(record.token, global ? this.before.size : this.init.replicas)
    const move = planRecordMove(this.init.self, owners, oldOwners, this.init.stateOf)
    if (move === undefined) return undefined
    return { ...move, ask: this.askNewcomers || !move.drop ? move.targets : move.targets.filter(p => this.placed.has(p)) }
  }

  /** What the run did so far: records looked at, sent, dropped and failed (the running rebalance's progress) */
  progress (): RebalanceCounts {
    return { ...this.counts }
  }

  /** A page of this node's records, as the scan read it: those that move are opened and batched */
  page (records: readonly ScannedRecord[]): void {
    if (!this.scanning) return
    for (const record of records) {
      this.counts.records++
      const route = this.plan(record)
      if (route === undefined || (route.targets.length === 0 && !route.missing)) continue
      const state = record.open()
      if (state === undefined) continue
      this.filling.push({ state, route })
      if (this.filling.length < REBALANCE_BATCH) continue
      this.launch(this.filling)
      this.filling = []
    }
    // Back-pressure: the next page is read only while fewer than REBALANCE_WINDOW batches are out.
    if (this.batches.size < REBALANCE_WINDOW) this.out.push({ type: 'read' })
    else this.waiting = true
  }

  /**
   * The scan found no more records. `stopped`: the node is stopping, the
   * scan was cut short: what is batched and not yet sent stays here.
   */
  scanEnded (stopped = false): void {
    if (!this.scanning) return
    this.scanning = false
    if (!stopped) this.launch(this.filling)
    this.filling = []
    this.finishIfOver()
  }

  /** The scan failed: the run counts as failed; the batches out are still seen through */
  scanFailed (error: unknown): void {
    if (!this.scanning) return
    this.scanning = false
    this.filling = []
    this.counts.failed++
    this.log('rebalance stopped: %s', (error as Error)?.message ?? String(error))
    this.finishIfOver()
  }

  /** The histories of a batch's records, in order */
  history (batch: number, history: VersionEntry[][]): void {
    const b = this.batches.get(batch)
    if (b === undefined || b.history !== undefined) return
    b.history = history
    for (const [peer, lanes] of b.lanes) {
      // The straight lane is cut into messages by size (chunkWhole) now that the histories are known.
      lanes.sends = lanes.sends.length === 0 ? [] : messagesOf(b, lanes.sends[0] as number[])
      this.nextOnLane(batch, peer, lanes, 'send')
      this.nextOnLane(batch, peer, lanes, 'ask')
    }
    this.settleIfAnswered(batch, b)
  }

  /** Reading a batch's histories failed: none of its records is handed off this time */
  historyFailed (batch: number, error: unknown): void {
    const b = this.batches.get(batch)
    if (b === undefined || b.history !== undefined) return
    this.batchFailed(batch, b, error)
  }

  /** A peer answered request `id` (a `records` or `holds` reply, checked here record by record) */
  answer (id: number, reply: unknown): void {
    const r = this.requests.get(id)
    if (r === undefined) return
    this.requests.delete(id)
    const b = this.batches.get(r.batch) as Batch
    const lanes = b.lanes.get(r.peer) as Lanes
    b.pending--
    lanes.busy--
    if (r.lane === 'ask') {
      r.items.forEach((i, j) => { if (!holdsAt(reply, j)) lanes.lacking.push(i) })
    } else {
      r.items.forEach((i, j) => { if (!resultOk(reply, j)) b.ok[i] = false })
    }
    this.nextOnLane(r.batch, r.peer, lanes, r.lane === 'send' ? 'send' : 'ask')
    this.settleIfAnswered(r.batch, b)
  }

  /** Request `id` got no answer (unreachable, timed out, refused) */
  failure (id: number, error: unknown): void {
    const r = this.requests.get(id)
    if (r === undefined) return
    const message = (error as Error)?.message ?? String(error)
    if (r.lane === 'ask') {
      // Not known to hold them: every one is sent (an absent reply holds nothing).
      this.log('asking %s which of %d records it holds failed: %s', r.peer, r.items.length, message)
    } else {
      // None of them acknowledged: their copies stay here.
      this.log('hand-off of %d records to %s failed: %s', r.items.length, r.peer, message)
    }
    this.answer(id, undefined)
  }

  /** The copies of batch `batch` were dropped: `count` of them (one changed meanwhile stays) */
  dropped (batch: number, count: number): void {
    const b = this.batches.get(batch)
    if (b === undefined || !b.dropping) return
    this.counts.dropped += count
    this.batchDone(batch)
  }

  /** Dropping a batch's copies failed: they stay, and the whole batch counts as failed */
  dropFailed (batch: number, error: unknown): void {
    const b = this.batches.get(batch)
    if (b === undefined || !b.dropping) return
    this.batchFailed(batch, b, error)
  }

  private log (msg: string, ...args: unknown[]): void {
    this.out.push({ type: 'log', msg, args })
  }

  /** Starts a batch: its histories are read first; each target peer gets its records on two lanes */
  private launch (work: Work[]): void {
    if (work.length === 0) return
    const id = this.nextBatch++
    const lanes = new Map<string, Lanes>()
    const sendItems = new Map<string, number[]>()
    const askItems = new Map<string, number[]>()
    work.forEach((w, i) => {
      for (const p of w.route.targets) {
        if (!lanes.has(p)) lanes.set(p, { sends: [], asks: [], lacking: [], busy: 0, after: [] })
        const to = w.route.ask.includes(p) ? askItems : sendItems
        const items = to.get(p)
        if (items === undefined) to.set(p, [i])
        else items.push(i)
      }
    })
    for (const [p, l] of lanes) {
      const asking = askItems.get(p) ?? []
      for (let at = 0; at < asking.length; at += MAX_STATES) l.asks.push(asking.slice(at, at + MAX_STATES))
      // The straight lane is one list until the histories are known (see history()).
      l.sends = sendItems.has(p) ? [sendItems.get(p) as number[]] : []
    }
    this.batches.set(id, { work, ok: work.map(w => !w.route.missing), lanes, pending: 0, dropping: false })
    this.out.push({ type: 'history', batch: id, states: work.map(w => w.state) })
  }

  /** The next request on one lane of a peer, if the lane has one left and none out */
  private nextOnLane (batch: number, peer: string, lanes: Lanes, lane: 'send' | 'ask'): void {
    const b = this.batches.get(batch) as Batch
    if (lane === 'send') {
      const items = lanes.sends.shift()
      if (items !== undefined) this.request(batch, peer, 'send', items)
      return
    }
    const question = lanes.asks.shift()
    if (question !== undefined) {
      this.request(batch, peer, 'ask', question)
      return
    }
    // Every question answered: what the peer lacks is sent, a message at a time.
    if (lanes.lacking.length > 0) {
      lanes.after = messagesOf(b, lanes.lacking)
      lanes.lacking = []
    }
    const items = lanes.after.shift()
    if (items !== undefined) this.request(batch, peer, 'after', items)
  }

  private request (batch: number, peer: string, lane: Request['lane'], items: number[]): void {
    const b = this.batches.get(batch) as Batch
    const history = b.history as VersionEntry[][]
    const id = this.nextRequest++
    this.requests.set(id, { batch, peer, lane, items })
    b.pending++
    ;(b.lanes.get(peer) as Lanes).busy++
    const message: RebalanceMessage = lane === 'ask'
      ? { type: 'holds', records: items.map(i => holdsQuery((b.work[i] as Work).state, history[i] as VersionEntry[])) }
      : { type: 'records', records: items.map(i => ({ state: (b.work[i] as Work).state, versions: history[i] as VersionEntry[] })) }
    this.out.push({ type: 'send', id, peer, message })
  }

  /** Once no request of the batch is out, its records are counted and the copies given up are dropped */
  private settleIfAnswered (batch: number, b: Batch): void {
    if (b.pending > 0 || b.dropping) return
    b.work.forEach((w, i) => {
      if (w.route.targets.length > 0) this.counts.sent++
      if (b.ok[i] !== true) this.counts.failed++
    })
    const drops = b.work.filter((w, i) => b.ok[i] === true && w.route.drop).map(w => w.state)
    if (drops.length === 0) {
      this.batchDone(batch)
      return
    }
    b.dropping = true
    this.out.push({ type: 'drop', batch, states: drops })
  }

  private batchFailed (batch: number, b: Batch, error: unknown): void {
    this.counts.failed += b.work.length
    this.log('hand-off of %d records failed: %s', b.work.length, (error as Error)?.message ?? String(error))
    this.batchDone(batch)
  }

  private batchDone (batch: number): void {
    this.batches.delete(batch)
    if (this.waiting && this.scanning && this.batches.size < REBALANCE_WINDOW) {
      this.waiting = false
      this.out.push({ type: 'read' })
    }
    this.finishIfOver()
  }

  /** The scan is over and every batch finished: what the run did, and what comes next */
  private finishIfOver (): void {
    if (this.over || this.scanning || this.batches.size > 0) return
    this.over = true
    const counts = { ...this.counts }
    if (counts.failed === 0) {
      // Records stay placed for members that were not on the ring when this run began but never left (just
      // after a restart, before gossip brings them back, or heard of while it ran): nothing moved away from
      // them. Forgetting them would make the next rebalance hand every record to each as if it had just joined.
      const { members, placedFor, stateOf } = this.init
      this.out.push({ type: 'done', counts, placedFor: [...members, ...placedFor.filter(p => !members.includes(p) && stateOf(p) !== 'left')] })
      return
    }
    // Retry, backing off (a member may stay down for a while), but at least as often as the periodic run.
    const ms = Math.min(this.init.delayMs * 5 * 2 ** this.init.failures, this.init.intervalMs)
    this.out.push({ type: 'done', counts, retry: { ms, failures: Math.min(this.init.failures + 1, MAX_FAILURES) } })
  }
}

/** A peer's records of a batch cut into `records` messages (chunkWhole), as indexes into the batch */
function messagesOf (b: Batch, items: number[]): number[][] {
  const history = b.history as VersionEntry[][]
  return chunkWhole(items.map(i => ({ i, state: (b.work[i] as Work).state, versions: history[i] as VersionEntry[] }))).map(part => part.map(x => x.i))
}

/** What a `holds` question says of a record: its key, what it has seen and knows replaced, and every version it stores */
export function holdsQuery (state: RecordState, history: VersionEntry[]): HoldsQuery {
  return { table: state.table, token: state.token, id: state.id, seen: state.seen, superseded: state.superseded, versions: [...state.heads, ...history].map(v => v.version) }
}

/** Whether a peer's answer to `holds` says it holds record `i` whole */
export function holdsAt (reply: unknown, i: number): boolean {
  const results = (reply as { results?: unknown } | null | undefined)?.results
  return Array.isArray(results) && (results[i] as { holds?: unknown } | undefined)?.holds === true
}
