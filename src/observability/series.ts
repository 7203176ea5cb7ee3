/**
 * Request rate and latency over the last minutes, sampled at a fixed
 * interval: what the console draws as charts. Prometheus keeps history for
 * itself; this is for an operator who runs none.
 */

/** One sample: the interval that ended at `time` */
export interface SeriesPoint {
  /** End of the interval, ms since the epoch */
  time: number
  /** Requests answered per second over the interval */
  rate: number
  /** Latency quantiles of the interval's requests, ms (null: no request) */
  p50: number | null
  p95: number | null
  max: number | null
}

/** Durations kept per interval: past it, a uniform sample of them (reservoir) stands for all */
const RESERVOIR = 4096

export class RequestSeries {
  private readonly sampleMs: number
  private readonly keep: number
  private readonly samples: SeriesPoint[] = []
  private durations: number[] = []
  private count = 0
  private since = Date.now()
  private timer?: ReturnType<typeof setInterval>

  /** sampleMs: interval of one point (default 5 s); keepMs: how far back points are kept (default 15 min) */
  constructor (init: { sampleMs?: number, keepMs?: number } = {}) {
    this.sampleMs = init.sampleMs ?? 5000
    this.keep = Math.max(1, Math.round((init.keepMs ?? 15 * 60_000) / this.sampleMs))
  }

  /** One answered request that took `seconds` */
  record (seconds: number): void {
    this.count++
    const ms = seconds * 1000
    if (this.durations.length < RESERVOIR) this.durations.push(ms)
    else {
      const slot = Math.floor(Math.random() * this.count)
      if (slot < RESERVOIR) this.durations[slot] = ms
    }
  }

  /** Closes the current interval as a point */
  sample (now = Date.now()): SeriesPoint {
    const seconds = Math.max(0.001, (now - this.since) / 1000)
    const sorted = this.durations.sort((a, b) => a - b)
    const point: SeriesPoint = {
      time: now,
      rate: round(this.count / seconds),
      p50: quantile(sorted, 0.5),
      p95: quantile(sorted, 0.95),
      max: sorted.length === 0 ? null : round(sorted[sorted.length - 1] as number)
    }
    this.samples.push(point)
    if (this.samples.length > this.keep) this.samples.splice(0, this.samples.length - this.keep)
    this.durations = []
    this.count = 0
    this.since = now
    return point
  }

  /** The kept points, oldest first */
  points (): SeriesPoint[] {
    return this.samples.map(p => ({ ...p }))
  }

  start (): void {
    if (this.timer !== undefined) return
    this.since = Date.now()
    this.timer = setInterval(() => { this.sample() }, this.sampleMs)
    // Sampling never keeps a stopping daemon alive.
    this.timer.unref()
  }

  stop (): void {
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
  }
}

function quantile (sorted: number[], q: number): number | null {
  if (sorted.length === 0) return null
  const i = Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)
  return round(sorted[Math.max(0, i)] as number)
}

function round (n: number): number {
  return Math.round(n * 1000) / 1000
}
