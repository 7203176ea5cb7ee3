import { NtsoekheError } from '../../errors/index.js'

/**
 * Counting durable acknowledgements of one write, as a state machine with no
 * I/O: the primary (or any writer) starts it with the owners to send the
 * new versions to, and feeds it what came of each send, of its own commit
 * and of each hint it wrote. It says whom to send to, which owners to keep
 * a hint for, and when the write is answered: once `need` owners have it
 * on disk, or, once every owner has answered, with what is true (how many
 * have it durable, how many were required, and whether it may still reach
 * the others).
 */

/** Why a write missed its consistency level: the fields of the 503 a client gets */
export interface QuorumShortfall {
  /** Owners that have the write on disk */
  durable: number
  /** Owners that had to */
  required: number
  /** `partial`: it will reach the others by their hints; `unknown`: an owner that did not answer may have it too */
  outcome: 'partial' | 'unknown'
  message: string
}

export type WriteQuorumEffect =
  /** Send the versions to this owner (the driver answers with ack() or failure()) */
  | { type: 'send', peer: string }
  /** Keep the versions as a hint for this owner, which missed them for `reason` (the driver answers with hinted() once it is written, or failed to be) */
  | { type: 'hint', peer: string, reason: string }
  /** The write is answered: enough owners have it on disk */
  | { type: 'done' }
  /** The write missed its consistency level (a 503 with these fields) */
  | { type: 'short', shortfall: QuorumShortfall }
  /** This node's own commit failed and nothing else was to be counted: its error is the answer */
  | { type: 'localFailed', error: unknown }

export interface WriteQuorumInit {
  /** The other owners, each with whether it is known to be down (it is not sent to: it gets a hint at once) */
  peers: Array<{ peer: string, down: boolean }>
  /** Acknowledgements needed: with `local`, this node's commit among them; without, other owners only (this node's copy is durable already) */
  need: number
  /** This node's own commit is pending and counts as one acknowledgement; else this node's copy is already durable */
  local: boolean
  /**
   * Without `local`: whether this node holds a durable copy of its own (a
   * primary's batch). False for a writer that owns none of the record (an
   * insert of first versions on a node that is not among its owners): then
   * `need` and the 503's counts are the owners' alone. @default true
   */
  held?: boolean
  /** Nothing new to send (a keyed repeat answered with versions the owners had) */
  empty: boolean
  /** What the write is, for messages (its shard, or table and id) */
  what: string
  /** This node, for messages */
  self: string
}

/** One write's acknowledgements (see the file comment); inputs: start(), committed() or commitFailed(), ack(), failure(), hinted() */
export class WriteQuorum {
  private readonly init: WriteQuorumInit
  private acks = 0
  private failures = 0
  /** An owner that timed out (or this node's own commit failed) may still have it: the outcome is then unknown */
  private uncertain = false
  private readonly reasons: string[] = []
  private decided = false
  private localPending: boolean

  constructor (init: WriteQuorumInit) {
    this.init = init
    this.localPending = init.local
  }

  get settled (): boolean { return this.decided }

  /** Acknowledgements counted here: this node's commit among them when it is pending */
  private get target (): number { return this.init.need }
  /** Owners whose answers are counted */
  private get voters (): number { return this.init.peers.length + (this.init.local ? 1 : 0) }
  /** Owners that had it on disk before the count began (this node, when its commit is not counted here and it holds a copy) */
  private get durableBefore (): number { return this.init.local || this.init.held === false ? 0 : 1 }

  start (): WriteQuorumEffect[] {
    const { peers, empty } = this.init
    // Nothing new to send, or no other owner: this node's commit (if counted) decides alone.
    if (empty || peers.length === 0) return this.localPending ? [] : this.alone()
    const out: WriteQuorumEffect[] = []
    for (const p of peers) {
      if (p.down) {
        this.reasons.push(`${p.peer}: ${p.peer} is down`)
        out.push({ type: 'hint', peer: p.peer, reason: `${p.peer} is down` })
      } else {
        out.push({ type: 'send', peer: p.peer })
      }
    }
    return this.check(out)
  }

  /** This node's own commit is on disk */
  committed (): WriteQuorumEffect[] {
    if (!this.localPending) return []
    this.localPending = false
    if (this.init.empty || this.init.peers.length === 0) return this.alone()
    this.acks++
    return this.check([])
  }

  /** This node's own commit failed (it may still have reached the disk: the outcome is then unknown) */
  commitFailed (error: unknown): WriteQuorumEffect[] {
    if (!this.localPending) return []
    this.localPending = false
    if (this.init.empty || this.init.peers.length === 0) return this.decide([], { type: 'localFailed', error })
    this.failures++
    this.uncertain = true
    this.reasons.push(`${this.init.self}: ${messageOf(error)}`)
    return this.check([])
  }

  /** An owner has the versions on disk */
  ack (_peer: string): WriteQuorumEffect[] {
    this.acks++
    return this.check([])
  }

  /** An owner did not take them (`timedOut`: it may have applied them): it gets a hint */
  failure (peer: string, error: unknown, timedOut: boolean): WriteQuorumEffect[] {
    if (timedOut) this.uncertain = true
    const reason = messageOf(error)
    this.reasons.push(`${peer}: ${reason}`)
    return [{ type: 'hint', peer, reason }]
  }

  /** The hint for an owner that missed the write was written (or failed to be): that owner's answer is in */
  hinted (_peer: string): WriteQuorumEffect[] {
    this.failures++
    return this.check([])
  }

  /** The answer when no other owner is counted: enough with this node alone, or short by the rest */
  private alone (): WriteQuorumEffect[] {
    const others = this.init.local ? this.init.need - 1 : this.init.need
    if (this.init.empty || others <= 0) return this.decide([], { type: 'done' })
    const durable = this.init.local ? 1 : this.durableBefore
    const required = this.init.local ? this.init.need : this.init.need + this.durableBefore
    return this.decide([], {
      type: 'short',
      shortfall: { durable, required, outcome: 'partial', message: `${this.init.what}: ${others} more replicas needed but none are members` }
    })
  }

  private check (out: WriteQuorumEffect[]): WriteQuorumEffect[] {
    if (this.decided) return out
    if (this.acks >= this.target) return this.decide(out, { type: 'done' })
    if (this.acks + this.failures < this.voters) return out
    // Answered once every owner has: the count of owners that have it on disk is then the truth.
    const durable = this.durableBefore + this.acks
    const required = this.durableBefore + this.target
    const outcome = this.uncertain ? 'unknown' : 'partial'
    const why = this.reasons.length === 0 ? '' : ` [${this.reasons.join('; ')}]`
    const message = `${this.init.what}: the write is durable on ${durable} of the ${required} owners required; ${outcome === 'unknown' ? 'an owner that did not answer may have it too' : 'it will reach the others when they return'} (retry with the same Idempotency-Key to finish it)${why}`
    return this.decide(out, { type: 'short', shortfall: { durable, required, outcome, message } })
  }

  private decide (out: WriteQuorumEffect[], decision: WriteQuorumEffect): WriteQuorumEffect[] {
    if (this.decided) return out
    this.decided = true
    out.push(decision)
    return out
  }
}

function messageOf (error: unknown): string {
  return (error as Error | undefined)?.message ?? String(error)
}

/** A shortfall as the error a client gets: a 503 with `durable`, `required` and `outcome` */
export function shortfallError (s: QuorumShortfall): NtsoekheError {
  return new NtsoekheError('UNAVAILABLE', s.message, { durable: s.durable, required: s.required, outcome: s.outcome })
}
