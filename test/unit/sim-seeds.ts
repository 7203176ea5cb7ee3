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

export const REGRESSION_SEEDS: RegressionSeed[] = [
  {
    seed: 25,
    steps: 150,
    nodes: 5,
    found: 'an update at one whose primary applied it but whose answer was lost fell back to a sloppy write on a node without the record, which answered 404 for a write that had taken effect; a refusal after an owner went silent is now an unknown outcome (503)'
  },
  {
    seed: 12,
    steps: 150,
    nodes: 5,
    found: 'a batch request delivered twice to its primary: the second copy answered 409 "already exists" for the group the first had written, and that answer reached the client; a head carrying the write\'s own id now answers the write (as a retry does)'
  }
]
