/**
 * Every seed the deterministic simulation ever failed on, with the run that
 * failed (steps, nodes) and what broke: each stays a regression test in
 * test/unit/sim.test.ts. Add a seed here before fixing what it found.
 *
 * A seed replays the run it found only while the simulation draws the same
 * workload and faults from it; when the simulation itself changes (a new
 * fault, a new kind of write), the seed goes on as one more run, and what
 * it found is pinned as a scenario in test/unit/sim-findings.test.ts.
 * Seeds 25 and 12 failed with the simulation at commit 1ac9883, seed 6 at the commit that added it.
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
  },
  {
    seed: 6,
    steps: 16,
    nodes: 6,
    found: 'a node that was paused, then crashed, while a member left kept its hints for the member that left forever: after its restart the member was only a candidate (saved members come back as candidates), and a left record heard through others of a peer not known was ignored, so its state stayed unknown and handoff waited on it; a candidate\'s signed left record is now taken'
  },
  {
    seed: 129,
    steps: 16,
    nodes: 9,
    found: 'a node that left while partitioned from the members it told (a leave told a few random members, and none answered) drained at once and stopped unheard: every member kept it on the ring as a down member for good; leaving now returns only once some member has heard it, and fails (still leaving, so a retry goes on) if none does'
  }
]
