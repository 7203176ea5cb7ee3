/** A line for the node's log: any machine may ask for one, and drive() writes it */
export interface LogEffect { type: 'log', msg: string, args: unknown[] }

/** The run's refusal, as the machine decided it: drive() settles the run with it */
export interface FailEffect { type: 'fail', error: unknown }

/** A step without the id its machine gives it (each member of a union on its own) */
export type WithoutId<T> = T extends unknown ? Omit<T, 'id'> : never

/**
 * The one step a machine whose body is a generator waits on (the sync
 * round and the sync answer): it numbers the steps it issues and tells
 * whether an input answers the step pending.
 */
export class PendingStep<S extends { id: number, type: string }> {
  private step?: S
  private issued = 0

  /** `op` as the step now pending, with the next id */
  issue (op: WithoutId<S>): S {
    const step = { ...op, id: ++this.issued } as unknown as S
    this.step = step
    return step
  }

  /**
   * Takes the step `id` off as answered and says so; a stale or repeated
   * id (not the step pending) is no answer. With `kinds`, the step must be
   * one of them: an input of another kind is a bug in the driver.
   */
  answer (id: number, kinds?: ReadonlyArray<S['type']>, machine = 'machine'): boolean {
    const step = this.step
    if (step?.id !== id) return false
    if (kinds !== undefined && !kinds.includes(step.type)) throw new Error(`${machine}: step ${id} is a ${step.type}, not a ${kinds.join(' or ')}`)
    this.step = undefined
    return true
  }
}
