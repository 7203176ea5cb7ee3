import { describe, expect, it } from 'vitest'
import { runChaos } from './chaos.js'

/**
 * The short chaos run of `npm test`: four real daemons (each in a network
 * namespace of its own when the run has root), sets, register and batch
 * workloads under kill -9, a partition, SIGSTOP, a full disk and one node's
 * skewed clock; then a heal and the checker. Any acknowledged write lost, any
 * replica that does not converge, a full disk that does not refuse writes
 * clearly or stops serving reads, fails it. The seed is printed for a replay
 * (`npm run chaos -- --seed <n> --short`).
 */
describe('the chaos suite (short run)', () => {
  it('loses no acknowledged write and converges after the heal', async () => {
    const log: string[] = []
    const result = await runChaos({ profile: 'short', log: line => { log.push(line) } })
    const report = log.join('\n')
    expect(result.problems, report).toEqual([])
    expect(result.results.map(r => r.workload)).toEqual(['sets', 'register', 'batch'])
    for (const r of result.results) {
      expect(r.lost, report).toBe(0)
      // A run in which nothing was acknowledged would check nothing.
      expect(r.acked, report).toBeGreaterThan(0)
    }
    expect(result.convergedSeconds, report).not.toBeNull()
    expect(result.ok, report).toBe(true)
    for (const line of result.lines) expect(line).toMatch(/^chaos (sets|register|batch): acked \d+, lost 0, unknown \d+, converged in \d+(\.\d+)? s$/)
  }, 150_000)
})
