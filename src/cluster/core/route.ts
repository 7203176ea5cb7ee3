import { NtsoekheError, TimeoutError, UnavailableError } from '../../errors/index.js'
import type { FailEffect } from './effects.js'

/**
 * Where a client write goes, as a state machine with no I/O. The key's
 * owners are tried in order of liveness: the first is the primary, which
 * orders the write; this node coordinates it itself when it is that owner,
 * else forwards it. An owner that cannot be reached passes the write to the
 * next (which is told that the write may have landed: `retry`). At `one`,
 * the owners share one replication timeout and a silent owner is passed
 * over too; when none could take it, this node keeps it with hints for the
 * owners (a sloppy write). Everything that is not a clean answer or a clean
 * refusal says what is true: the outcome is unknown.
 */

/** What to do next with the write */
export type RouteStep =
  /** This node is the primary: order and replicate it here */
  | { type: 'local', retry: boolean }
  /**
   * Forward it to `peer`, waiting at most `timeoutMs` (`bounded`: the
   * driver enforces that bound itself as well, since the whole write at
   * `one` has one deadline); the driver feeds a failure to failed()
   */
  | { type: 'forward', peer: string, retry: boolean, timeoutMs: number, bounded: boolean }
  /** No owner could take a write at `one`: keep it here with hints for the owners */
  | { type: 'sloppy', retry: boolean }
  /** The write's answer is this error */
  | FailEffect

/** How a forwarded write failed: no answer in time, the owner could not be reached (or is no longer one), or it refused */
export type FailureKind = 'timeout' | 'unreachable' | 'refused'

/**
 * For reads: an error that means "this replica gave no usable answer", as
 * opposed to a bug. Every typed error counts, whether the peer raised it or
 * our checks of its answer did; one misbehaving replica must not fail a read
 * that others can serve.
 */
export function isNoAnswer (err: unknown): boolean {
  return err instanceof NtsoekheError
}

/** An error that means "this peer could not be reached" (or no longer owns the key), as opposed to a refusal the caller must see */
export function isUnreachable (err: unknown): boolean {
  if (err instanceof UnavailableError || err instanceof TimeoutError) return true
  return err instanceof NtsoekheError && err.code === 'NOT_OWNER'
}

/** How a forwarded write's error counts for routing */
export function failureKind (err: unknown): FailureKind {
  if (err instanceof TimeoutError) return 'timeout'
  return isUnreachable(err) ? 'unreachable' : 'refused'
}

/**
 * After an owner failed or went silent in the middle of a write, it may
 * have applied it: a refusal by the next owner, which ordered the write
 * against a copy that lacks it (404, 409, 412), is then not the truth, and
 * the outcome is unknown. Other errors are kept as they are.
 */
export function unknownOutcome (err: unknown, shard: string, required: number): unknown {
  if (!(err instanceof NtsoekheError) || !['NOT_FOUND', 'CONFLICT', 'PRECONDITION_FAILED'].includes(err.code)) return err
  return new NtsoekheError('UNAVAILABLE', `${shard}: an owner that did not answer may have applied the write, and the next refused it (${err.message}); the write may or may not have been applied (retry with the same Idempotency-Key)`, { cause: err, durable: 0, required, outcome: 'unknown' })
}

export interface WriteRouteInit {
  /** The key's owners in the order to try them (alive first, ring order) */
  order: string[]
  self: string
  /** The write's consistency is `one` */
  one: boolean
  /** Owners that must have it on disk at the write's level */
  required: number
  /** The key's shard value, for messages */
  shard: string
  /** The replication timeout, ms */
  timeoutMs: number
  /** How long a forwarded write may take above `one` (the primary's own wait for its replicas and a round trip) */
  forwardTimeoutMs: number
  /** The time the write began, ms */
  now: number
}

/** One client write's route (see the file comment); inputs: start(now), failed(error, now), and own() for the answer of a local or sloppy step */
export class WriteRoute {
  private readonly init: WriteRouteInit
  private readonly deadline: number
  private at = 0
  private retry = false
  private lastError: unknown
  private last?: RouteStep

  constructor (init: WriteRouteInit) {
    this.init = init
    this.deadline = init.now + init.timeoutMs
  }

  start (now: number): RouteStep {
    if (this.init.order.length === 0) return { type: 'fail', error: new UnavailableError('No members on the ring yet') }
    return this.advance(now)
  }

  /** The forwarded write failed (see failureKind) */
  failed (error: unknown, now: number): RouteStep {
    const kind = failureKind(error)
    // At `one` a silent owner is passed over like an unreachable one. It may have applied the write: then
    // the same write exists twice (the same write id), which shows as a conflict, never a loss.
    if (kind === 'timeout' && this.init.one) {
      this.lastError = error
      this.retry = true
      return this.advance(now)
    }
    // A primary that took the write but did not answer in time may have applied it: trying the next owner
    // would write it twice. Say the outcome is unknown instead.
    if (kind === 'timeout') {
      return { type: 'fail', error: new NtsoekheError('UNAVAILABLE', `${this.init.shard}: the primary did not answer in time; the write may or may not have been applied (retry with the same Idempotency-Key)`, { cause: error, durable: 0, required: this.init.required, outcome: 'unknown' }) }
    }
    // An owner refused: that is the answer, unless an owner before it went silent (then it may be wrong).
    if (kind === 'refused') return { type: 'fail', error: this.retry ? unknownOutcome(error, this.init.shard, this.init.required) : error }
    // The primary is unreachable, or no longer thinks it owns the key: the next owner takes over.
    this.lastError = error
    this.retry = true
    return this.advance(now)
  }

  /** The error a local or sloppy step failed with, as the client's answer (a refusal after an owner went silent is an unknown outcome) */
  own (error: unknown): unknown {
    const step = this.last
    if (step === undefined || (step.type !== 'local' && step.type !== 'sloppy') || !step.retry) return error
    return unknownOutcome(error, this.init.shard, step.type === 'sloppy' ? 1 : this.init.required)
  }

  private advance (now: number): RouteStep {
    const { order, self, one } = this.init
    while (this.at < order.length) {
      const primary = order[this.at++] as string
      if (primary === self) return this.take({ type: 'local', retry: this.retry })
      // At `one`, past the shared deadline no more owners are waited on.
      if (one && now >= this.deadline) continue
      return this.take(one
        ? { type: 'forward', peer: primary, retry: this.retry, timeoutMs: this.deadline - now, bounded: true }
        : { type: 'forward', peer: primary, retry: this.retry, timeoutMs: this.init.forwardTimeoutMs, bounded: false })
    }
    if (one) return this.take({ type: 'sloppy', retry: this.retry })
    return { type: 'fail', error: new UnavailableError(`No owner of ${this.init.shard} could take the write`, { cause: this.lastError }) }
  }

  private take (step: RouteStep): RouteStep {
    this.last = step
    return step
  }
}

/** A group's answer in a batched write (the shape of GroupOutcome) */
export type GroupAnswer = { ok: true, results: unknown[] } | { ok: false, error: { code: string, message: string } }

/**
 * A batch of groups (each group one record's writes, or a few records of
 * one shard) split by primary, the first owner to try for each: one
 * message per primary. An empty group is answered at once; a group with no
 * owner fails at once.
 */
export function groupsByPrimary<M> (groups: ReadonlyArray<readonly M[]>, primaryOf: (first: M) => string | undefined): { byPrimary: Map<string, number[]>, answered: Map<number, GroupAnswer> } {
  const byPrimary = new Map<string, number[]>()
  const answered = new Map<number, GroupAnswer>()
  groups.forEach((group, i) => {
    const first = group[0]
    if (first === undefined) { answered.set(i, { ok: true, results: [] }); return }
    const primary = primaryOf(first)
    if (primary === undefined) { answered.set(i, { ok: false, error: { code: 'UNAVAILABLE', message: 'No members on the ring yet' } }); return }
    const list = byPrimary.get(primary)
    if (list === undefined) byPrimary.set(primary, [i])
    else list.push(i)
  })
  return { byPrimary, answered }
}

/**
 * What a primary that could not take a whole batch means for each of its
 * groups: after a timeout they may have landed, so they are not tried
 * elsewhere (UNAVAILABLE); an unreachable primary passes them on (NOT_OWNER,
 * see batchAnswerStands). Undefined: a refusal the caller must see.
 */
export function batchFailure (err: unknown): GroupAnswer | undefined {
  if (!isUnreachable(err)) return undefined
  return { ok: false, error: { code: err instanceof TimeoutError ? 'UNAVAILABLE' : 'NOT_OWNER', message: (err as Error).message } }
}

/** Whether a group's answer from its primary stands; else (none, or NOT_OWNER) the group takes the one-group route, which tries the next owners */
export function batchAnswerStands (answer: GroupAnswer | undefined): boolean {
  return answer !== undefined && !(answer.ok === false && answer.error.code === 'NOT_OWNER')
}
