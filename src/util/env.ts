import { randomBytes } from 'node:crypto'

/** A pending timer, as `setTimeout` returns it: the real one can be unref'd so it does not hold the process open */
export interface TimerHandle {
  unref?: () => unknown
}

/**
 * Everything the cluster core reads from the outside world besides messages
 * and the disk: the wall clock, timers, deferred work and random draws. The
 * daemon runs on `REAL_ENV`; the deterministic simulation (src/sim) gives
 * each node one on fake time and a seeded generator, so a whole run of many
 * nodes is a pure function of its seed.
 */
export interface Environment {
  /** Wall-clock time, ms since the epoch (Date.now) */
  now: () => number
  setTimeout: (fn: () => void, ms: number) => TimerHandle
  clearTimeout: (handle: TimerHandle | undefined) => void
  setInterval: (fn: () => void, ms: number) => TimerHandle
  clearInterval: (handle: TimerHandle | undefined) => void
  /** Runs `fn` after the current turn of the event loop (setImmediate): used to fold work of one turn together */
  defer: (fn: () => void) => void
  /** A number in [0, 1), as Math.random */
  random: () => number
  /** `n` random bytes, as crypto.randomBytes */
  randomBytes: (n: number) => Buffer
}

/** The real world: Node's clock, timers and CSPRNG */
export const REAL_ENV: Environment = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: handle => { clearTimeout(handle as ReturnType<typeof setTimeout> | undefined) },
  setInterval: (fn, ms) => setInterval(fn, ms),
  clearInterval: handle => { clearInterval(handle as ReturnType<typeof setInterval> | undefined) },
  defer: fn => { setImmediate(fn) },
  random: () => Math.random(),
  randomBytes: n => randomBytes(n)
}

/** Waits `ms` on the environment's timers */
export async function sleep (env: Environment, ms: number): Promise<void> {
  await new Promise<void>(resolve => { env.setTimeout(resolve, ms) })
}
