/** A line for the node's log: any machine may ask for one, and drive() writes it */
export interface LogEffect { type: 'log', msg: string, args: unknown[] }

/** The run's refusal, as the machine decided it: drive() settles the run with it */
export interface FailEffect { type: 'fail', error: unknown }
