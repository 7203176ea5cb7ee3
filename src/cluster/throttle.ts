export interface ByteThrottleInit {
  /** Bytes per second; at most one second's worth goes out in a burst */
  bytesPerSecond: number
  /** The clock, ms (injected in tests). @default Date.now */
  now?: () => number
  /** Waits `ms` (injected in tests). @default setTimeout */
  sleep?: (ms: number) => Promise<void>
}

/**
 * A token bucket on bytes sent: a sender takes the bytes of each message
 * before sending it and waits while the bucket is in debt, so the average
 * rate stays at or under `bytesPerSecond`. Concurrent senders queue behind
 * each other's debt.
 */
export class ByteThrottle {
  private readonly rate: number
  private readonly now: () => number
  private readonly sleep: (ms: number) => Promise<void>
  private tokens: number
  private at: number

  constructor (init: ByteThrottleInit) {
    if (!(init.bytesPerSecond > 0)) throw new Error('ByteThrottle needs a positive rate')
    this.rate = init.bytesPerSecond
    this.now = init.now ?? Date.now
    this.sleep = init.sleep ?? (async ms => { await new Promise(resolve => setTimeout(resolve, ms)) })
    this.tokens = this.rate
    this.at = this.now()
  }

  /** Takes `bytes` from the bucket, waiting until the rate allows them */
  async take (bytes: number): Promise<void> {
    const now = this.now()
    this.tokens = Math.min(this.rate, this.tokens + (now - this.at) * this.rate / 1000)
    this.at = now
    this.tokens -= bytes
    if (this.tokens < 0) await this.sleep(Math.ceil(-this.tokens * 1000 / this.rate))
  }
}
