import type { Environment, TimerHandle } from '../util/env.js'
import type { SeededRandom } from './random.js'

interface SimEvent {
  at: number
  seq: number
  fn: () => void
  owner: string
  cancelled: boolean
}

interface SimTimer extends TimerHandle {
  event?: SimEvent
  cancelled: boolean
}

/** Where fake time starts: a plausible wall clock, so versions and incarnations look as they do in a daemon */
export const SIM_EPOCH = 1_767_225_600_000

/**
 * Fake time for a whole simulated network: one queue of events ordered by
 * time (then by the order they were scheduled), run one at a time. After
 * each, the promise jobs it started are allowed to finish (the process
 * does nothing else: no real timers or I/O are involved), so every run of
 * the same events does the same things in the same order.
 */
export class SimScheduler {
  now = SIM_EPOCH
  private heap: SimEvent[] = []
  private seq = 0
  /** Events run so far */
  ran = 0

  /** Runs `fn` at fake time `at` (never before now) on behalf of `owner` (a node's run, so a crash can cancel it) */
  at (at: number, owner: string, fn: () => void): SimEvent {
    const ev: SimEvent = { at: Math.max(at, this.now), seq: this.seq++, fn, owner, cancelled: false }
    this.push(ev)
    return ev
  }

  /** Cancels every event an owner scheduled (its process died) */
  cancelOwner (owner: string): void {
    for (const ev of this.heap) if (ev.owner === owner) ev.cancelled = true
  }

  /**
   * An environment for one node's run: its clock is fake time plus `skew()`,
   * its timers are events it owns, its random draws come from `random`
   */
  env (owner: string, skew: () => number, random: SeededRandom): Environment {
    const timeout = (fn: () => void, ms: number): SimTimer => {
      const timer: SimTimer = { cancelled: false, unref: () => timer }
      timer.event = this.at(this.now + Math.max(0, ms), owner, () => { if (!timer.cancelled) fn() })
      return timer
    }
    const interval = (fn: () => void, ms: number): SimTimer => {
      const timer: SimTimer = { cancelled: false, unref: () => timer }
      const every = Math.max(1, ms)
      const tick = (): void => {
        if (timer.cancelled) return
        timer.event = this.at(this.now + every, owner, tick)
        fn()
      }
      timer.event = this.at(this.now + every, owner, tick)
      return timer
    }
    const cancel = (handle: TimerHandle | undefined): void => {
      const timer = handle as SimTimer | undefined
      if (timer === undefined) return
      timer.cancelled = true
      if (timer.event !== undefined) timer.event.cancelled = true
    }
    return {
      now: () => this.now + skew(),
      setTimeout: timeout,
      clearTimeout: cancel,
      setInterval: interval,
      clearInterval: cancel,
      defer: fn => { this.at(this.now, owner, fn) },
      random: () => random.next(),
      randomBytes: n => random.bytes(n)
    }
  }

  /** Runs every event due up to `until` (fake ms), then sets the clock there */
  async runUntil (until: number): Promise<void> {
    await settle()
    for (;;) {
      const next = this.peek()
      if (next === undefined || next.at > until) break
      this.pop()
      if (next.cancelled) continue
      this.now = next.at
      this.ran++
      next.fn()
      await settle()
    }
    this.now = Math.max(this.now, until)
  }

  /** Events still queued (cancelled ones aside) */
  get pending (): number {
    return this.heap.filter(e => !e.cancelled).length
  }

  private peek (): SimEvent | undefined {
    return this.heap[0]
  }

  private before (a: SimEvent, b: SimEvent): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq)
  }

  private push (ev: SimEvent): void {
    const h = this.heap
    h.push(ev)
    let i = h.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.before(h[i] as SimEvent, h[parent] as SimEvent)) break
      ;[h[i], h[parent]] = [h[parent] as SimEvent, h[i] as SimEvent]
      i = parent
    }
  }

  private pop (): SimEvent | undefined {
    const h = this.heap
    const top = h[0]
    const last = h.pop()
    if (h.length > 0 && last !== undefined) {
      h[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < h.length && this.before(h[l] as SimEvent, h[m] as SimEvent)) m = l
        if (r < h.length && this.before(h[r] as SimEvent, h[m] as SimEvent)) m = r
        if (m === i) break
        ;[h[i], h[m]] = [h[m] as SimEvent, h[i] as SimEvent]
        i = m
      }
    }
    return top
  }
}

/**
 * Lets every promise job already started run to its end: a real
 * setImmediate runs only once the microtask queues are empty, and nothing
 * else (no timer, no I/O) of the simulation is waiting for the event loop.
 */
export async function settle (): Promise<void> {
  await new Promise<void>(resolve => { setImmediate(resolve) })
}
