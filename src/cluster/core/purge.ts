import type { FailEffect, LogEffect } from './effects.js'

/** What a purge's fan-out wants done */
export type PurgeEffect =
  /** Send the purge to this member (answered() or failed()) */
  | { type: 'send', peer: string }
  /** Keep the purge as a hint for this member (hinted(), or hintFailed() when it could not be written) */
  | { type: 'hint', peer: string }
  | LogEffect
  /** Every member has it or a hint for it: `reached` nodes purged it now, this one included */
  | { type: 'answer', reached: number }
  | FailEffect

export interface PurgeFanOutInit {
  /** The record, for messages */
  table: string
  id: string
  /** Every member but this node and those that left, each with whether it is known to be down */
  members: Array<{ peer: string, down: boolean }>
}

/**
 * The fan-out of a purge (erasure of a record on every node), as a state
 * machine with no I/O. This node has purged its copy and kept a marker
 * before it starts. Every other member is sent the purge, since any may
 * still hold a copy or hints with its versions; one that is down, does not
 * answer, or answers anything but `{ ok: true }` gets the purge as a hint.
 * The answer counts the nodes that purged it now; a hint that cannot be
 * written fails the purge (it would otherwise be lost for that member).
 */
export class PurgeFanOut {
  private readonly init: PurgeFanOutInit
  private readonly open = new Set<string>()
  private reached = 1
  private done = false

  constructor (init: PurgeFanOutInit) {
    this.init = init
  }

  start (): PurgeEffect[] {
    const out: PurgeEffect[] = []
    for (const { peer, down } of this.init.members) {
      this.open.add(peer)
      if (down) out.push(...this.missed(peer, `${peer} is down`))
      else out.push({ type: 'send', peer })
    }
    return [...out, ...this.answerWhenDone()]
  }

  /** A member's answer to the purge */
  answered (peer: string, reply: unknown): PurgeEffect[] {
    if (!this.open.has(peer)) return []
    if ((reply as { ok?: unknown } | null)?.ok !== true) return this.missed(peer, 'replica: malformed purge reply')
    this.open.delete(peer)
    this.reached++
    return this.answerWhenDone()
  }

  failed (peer: string, error: unknown): PurgeEffect[] {
    if (!this.open.has(peer)) return []
    return this.missed(peer, (error as Error)?.message ?? String(error))
  }

  hinted (peer: string): PurgeEffect[] {
    if (!this.open.delete(peer)) return []
    return this.answerWhenDone()
  }

  hintFailed (peer: string, error: unknown): PurgeEffect[] {
    this.open.delete(peer)
    return this.finish({ type: 'fail', error })
  }

  private missed (peer: string, reason: string): PurgeEffect[] {
    return [
      { type: 'log', msg: 'purge of %s %s did not reach %s (%s); keeping it as a hint', args: [this.init.table, this.init.id, peer, reason] },
      { type: 'hint', peer }
    ]
  }

  private answerWhenDone (): PurgeEffect[] {
    if (this.open.size > 0) return []
    return this.finish({ type: 'answer', reached: this.reached })
  }

  private finish (e: PurgeEffect): PurgeEffect[] {
    if (this.done) return []
    this.done = true
    return [e]
  }
}
