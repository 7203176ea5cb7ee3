/**
 * Every seed the deterministic simulation ever failed on, with the run that
 * failed (steps, nodes) and what broke: each stays a regression test in
 * test/unit/sim.test.ts. Add a seed here before fixing what it found.
 */
export interface RegressionSeed {
  seed: number
  steps: number
  nodes: number
  /** What the run broke, and what fixed it */
  found: string
}

export const REGRESSION_SEEDS: RegressionSeed[] = []
