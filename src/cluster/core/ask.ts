import { UnavailableError } from '../../errors/index.js'

/**
 * How long a quorum waits on the owners it asked before it asks one more: a
 * hedge against an owner that hangs (cut off and not yet suspect), which
 * would otherwise hold the request up for the replication timeout.
 */
export const HEDGE_MS = 50

/** What an ask round wants done: the driver performs it and feeds back what came of it */
export type AskEffect<T> =
  /** Ask this peer (the driver sends the request and later calls answer() or failure() for it) */
  | { type: 'ask', peer: string }
  /** Call hedge(id) after `ms` unless cleared first */
  | { type: 'setTimer', id: number, ms: number }
  | { type: 'clearTimer', id: number }
  /** Enough peers answered: the round's answer */
  | { type: 'done', answers: Map<string, T> }
  /** The round cannot be answered: too few answered, or one refused in a way the caller must see */
  | { type: 'failed', error: unknown }
  /** An answer that came after the round was decided: it only feeds repair */
  | { type: 'late', peer: string, answer: T }

/** One hedging slot: a peer being asked, or a wait for HEDGE_MS (or any answer) before asking one more */
type Slot = { asking: string } | { hedging: number } | 'idle'

/**
 * A quorum question as a state machine with no I/O: it asks peers in order
 * until `need` have answered; the rest are asked only when one fails, or
 * when the owners asked are slow (after HEDGE_MS one more is asked, so a
 * hung owner costs a quorum HEDGE_MS, not the replication timeout). It is
 * decided as soon as `need` have answered; answers after that come out as
 * `late`. At most `need` peers are in flight at once.
 *
 * Inputs: start(), answer(peer, value), failure(peer, error, fatal),
 * hedge(timer id). Each returns the effects to perform, in order.
 */
export class QuorumAsk<T> {
  private readonly peers: readonly string[]
  private readonly need: number
  private readonly what: string
  private readonly answers = new Map<string, T>()
  private readonly errors: string[] = []
  private readonly slots: Slot[]
  private next = 0
  private timers = 0
  private decided = false

  constructor (peers: readonly string[], need: number, what: string) {
    this.peers = peers
    this.need = need
    this.what = what
    this.slots = Array.from({ length: Math.min(need, peers.length) }, () => 'idle' as Slot)
  }

  /** The round is decided (answered or failed) */
  get settled (): boolean { return this.decided }

  /** Peers being asked and not yet answered */
  private get inflight (): number {
    return this.slots.filter(s => typeof s === 'object' && 'asking' in s).length
  }

  start (): Array<AskEffect<T>> {
    const out: Array<AskEffect<T>> = []
    if (this.slots.length === 0) return this.finish(out)
    for (let i = 0; i < this.slots.length; i++) this.askNext(i, out)
    return out
  }

  /** A peer answered */
  answer (peer: string, value: T): Array<AskEffect<T>> {
    if (this.decided) return [{ type: 'late', peer, answer: value }]
    this.answers.set(peer, value)
    return this.freed(peer)
  }

  /**
   * A peer gave no answer. Not `fatal` (it is unreachable, refuses, or its
   * answer fails our checks): the next owner is asked. `fatal` (a bug, not
   * a missing answer): the round fails with that error.
   */
  failure (peer: string, error: unknown, fatal: boolean): Array<AskEffect<T>> {
    if (this.decided) return []
    if (fatal) {
      const at = this.slotOf(peer)
      if (at >= 0) this.slots[at] = 'idle'
      return this.decide([], { type: 'failed', error })
    }
    this.errors.push(`${peer}: ${(error as Error)?.message ?? String(error)}`)
    return this.freed(peer)
  }

  /** A hedge timer went off: the slot waiting on it asks one more peer */
  hedge (id: number): Array<AskEffect<T>> {
    if (this.decided) return []
    const at = this.slots.findIndex(s => typeof s === 'object' && 'hedging' in s && s.hedging === id)
    if (at < 0) return []
    const out: Array<AskEffect<T>> = []
    this.slots[at] = 'idle'
    this.askNext(at, out, true)
    return this.finish(out)
  }

  private slotOf (peer: string): number {
    return this.slots.findIndex(s => typeof s === 'object' && 'asking' in s && s.asking === peer)
  }

  /** `peer`'s slot is free again: it goes on (asks the next or hedges), and every hedging slot asks one more */
  private freed (peer: string): Array<AskEffect<T>> {
    const out: Array<AskEffect<T>> = []
    const at = this.slotOf(peer)
    if (at < 0) return out
    this.slots[at] = 'idle'
    if (this.answers.size >= this.need) return this.decide(out, { type: 'done', answers: new Map(this.answers) })
    const woken: number[] = []
    this.slots.forEach((s, i) => { if (typeof s === 'object' && 'hedging' in s) woken.push(i) })
    this.askNext(at, out)
    // An answer or a failure wakes the slots waiting out a hedge: each asks one more owner.
    for (const i of woken) {
      out.push({ type: 'clearTimer', id: (this.slots[i] as { hedging: number }).hedging })
      this.slots[i] = 'idle'
      this.askNext(i, out, true)
    }
    return this.finish(out)
  }

  /** Slot `i` asks the next peer, or (as many asked as answers still needed) waits out a hedge first */
  private askNext (i: number, out: Array<AskEffect<T>>, now = false): void {
    if (this.next >= this.peers.length) return
    if (!now && this.answers.size + this.inflight >= this.need) {
      const id = ++this.timers
      this.slots[i] = { hedging: id }
      out.push({ type: 'setTimer', id, ms: HEDGE_MS })
      return
    }
    const peer = this.peers[this.next++] as string
    this.slots[i] = { asking: peer }
    out.push({ type: 'ask', peer })
  }

  /** Fails the round once no slot is asking or waiting and too few answered */
  private finish (out: Array<AskEffect<T>>): Array<AskEffect<T>> {
    if (this.decided || this.slots.some(s => s !== 'idle')) return out
    if (this.answers.size >= this.need) return this.decide(out, { type: 'done', answers: new Map(this.answers) })
    return this.decide(out, { type: 'failed', error: new UnavailableError(`${this.what}: ${this.answers.size} of ${this.need} replicas answered (${this.errors.join('; ')})`) })
  }

  private decide (out: Array<AskEffect<T>>, decision: AskEffect<T>): Array<AskEffect<T>> {
    this.decided = true
    // Hedges still waiting are cleared: nobody is asked after the decision.
    for (const [i, s] of this.slots.entries()) {
      if (typeof s === 'object' && 'hedging' in s) {
        out.push({ type: 'clearTimer', id: s.hedging })
        this.slots[i] = 'idle'
      }
    }
    out.push(decision)
    return out
  }
}
