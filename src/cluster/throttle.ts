import { SendBudget } from './core/budget.js'

export interface ByteThrottleInit {
  /** Bytes per second; at most one second's worth goes out in a burst */
  bytesPerSecond: number
  /** The clock, ms (injected in tests). @default Date.now */
  now?: () => number
  /** Waits `ms` (injected in tests). @default setTimeout */
  sleep?: (ms: number) => Promise<void>
  /** The budget to draw on, shared with other senders. @default a new one at `bytesPerSecond` */
  budget?: SendBudget
}

/**
 * A SendBudget with a clock and a sleep: a sender takes the bytes of each
 * message before sending it and waits while the bucket is in debt, so the
 * average rate stays at or under `bytesPerSecond`. Concurrent senders queue
 * behind each other's debt.
 */
export class ByteThrottle {
  readonly budget: SendBudget
  private readonly now: () => number
  private readonly sleep: (ms: number) => Promise<void>

  constructor (init: ByteThrottleInit) {
    if (!(init.bytesPerSecond > 0)) throw new Error('ByteThrottle needs a positive rate')
    this.now = init.now ?? Date.now
    this.sleep = init.sleep ?? (async ms => { await new Promise(resolve => setTimeout(resolve, ms)) })
    this.budget = init.budget ?? new SendBudget(init.bytesPerSecond, this.now())
  }

  /** Takes `bytes` from the bucket, waiting until the rate allows them */
  async take (bytes: number): Promise<void> {
    const wait = this.budget.take(bytes, this.now())
    if (wait > 0) await this.sleep(wait)
  }
}
