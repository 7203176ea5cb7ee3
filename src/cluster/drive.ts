import type { FailEffect, LogEffect } from './core/effects.js'

/**
 * What a driver's `perform` is given to carry out a core machine's effects
 * (src/cluster/core): a way to feed the machine the outcome of I/O and to
 * settle the run.
 */
export interface Driver<E, R> {
  /** Performs the effects `input` returns (a machine input: an answer, a timer's firing) */
  run: (input: () => readonly E[]) => void
  /** Once `work` settles, feeds the machine its value (`ok`) or its error (`bad`) and performs what follows */
  after: <T>(work: Promise<T>, ok: (value: T) => readonly E[], bad: (err: unknown) => readonly E[]) => void
  /** The run's answer (the machine may go on after it: late acknowledgements, hints, repairs) */
  resolve: (result: R) => void
  /** The run's refusal, as the machine decided it */
  reject: (err: unknown) => void
}

/**
 * Runs a core machine through its driver: `start` gives the first effects,
 * `perform` carries out each effect, and every I/O outcome goes back to the
 * machine through the Driver. The effects every machine shares are carried
 * out here: a `log` line goes to `log`, and a `fail` settles the run with
 * its error. I/O failures are inputs (the machine decides what they mean);
 * a machine or a performer that throws is a bug, and it settles the run
 * with that error and stops performing its effects, rather than leaving the
 * run waiting for an input that will not come (and the error unhandled).
 */
export async function drive<E extends { type: string }, R> (start: () => readonly E[], perform: (effect: E, d: Driver<E, R>) => void, log?: (msg: string, ...args: unknown[]) => void): Promise<R> {
  return await new Promise<R>((resolve, reject) => {
    let broken = false
    const run = (input: () => readonly E[]): void => {
      if (broken) return
      try {
        for (const e of input()) {
          if (isLog(e)) log?.(e.msg, ...e.args)
          else if (isFail(e)) reject(e.error)
          else perform(e, d)
        }
      } catch (err) {
        broken = true
        reject(err)
      }
    }
    const d: Driver<E, R> = {
      run,
      after: (work, ok, bad) => { work.then(value => { run(() => ok(value)) }, err => { run(() => bad(err)) }) },
      resolve,
      reject
    }
    run(start)
  })
}

const isLog = (e: { type: string }): e is LogEffect => e.type === 'log'
const isFail = (e: { type: string }): e is FailEffect => e.type === 'fail'
