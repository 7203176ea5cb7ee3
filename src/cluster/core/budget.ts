/**
 * A token bucket on bytes sent, with no timers: the caller takes the bytes
 * of each message before sending it, with the time now, and is told how
 * long to hold it (0: send at once). At most one second's worth goes out in
 * a burst; a debt is paid off at `bytesPerSecond`, so the average rate
 * stays at or under it. Every sender of one node shares one budget (the
 * anti-entropy round's pushes and the sync protocol's replies), so they
 * queue behind each other's debt.
 */
export class SendBudget {
  private readonly rate: number
  private tokens: number
  private at: number

  /** `now`: the time the bucket starts full, ms */
  constructor (bytesPerSecond: number, now: number) {
    if (!(bytesPerSecond > 0)) throw new Error('SendBudget needs a positive rate')
    this.rate = bytesPerSecond
    this.tokens = bytesPerSecond
    this.at = now
  }

  /** Takes `bytes` at time `now` (ms); returns how long to hold them before sending, ms */
  take (bytes: number, now: number): number {
    this.tokens = Math.min(this.rate, this.tokens + Math.max(0, now - this.at) * this.rate / 1000)
    this.at = Math.max(this.at, now)
    this.tokens -= bytes
    return this.tokens < 0 ? Math.ceil(-this.tokens * 1000 / this.rate) : 0
  }
}
