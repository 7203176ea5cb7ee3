import { describe, expect, it } from 'vitest'
import { ID_EPOCH_MS, ID_TAGS, IdGenerator, idMs, idTag, idTime } from '../../src/query/ids.js'
import { orderMutations } from '../../src/cluster/mutations.js'
import { tokenOf } from '../../src/cluster/token.js'
import { recordKey } from '../../src/storage/keys.js'
import type { RecordState, VersionEntry } from '../../src/storage/store.js'
import {
  HybridClock, MAX_CLOCK_DRIFT_MS, compareVersions, formatVersion, isVersion, nodeTag, parseVersion
} from '../../src/storage/version.js'

/** A clock function the test moves by hand */
function manualTime (start: number): { now: () => number, set: (t: number) => void } {
  let t = start
  return { now: () => t, set: v => { t = v } }
}

const T0 = Date.UTC(2026, 0, 1)
/** T0 as the 15-digit wall field of a version */
const W0 = String(T0).padStart(15, '0')

describe('hybrid logical clock', () => {
  it('issues strictly increasing versions across many ticks in one millisecond', () => {
    const time = manualTime(T0)
    const clock = new HybridClock('nodeA', time.now)
    let prev = clock.tick()
    for (let i = 0; i < 10_000; i++) {
      const v = clock.tick()
      expect(v > prev).toBe(true)
      prev = v
    }
    expect(parseVersion(prev)).toEqual({ wall: T0, counter: 10_000, node: 'nodeA' })
  })

  it('stays monotonic when the wall clock goes backwards', () => {
    const time = manualTime(T0)
    const clock = new HybridClock('nodeA', time.now)
    const a = clock.tick()
    time.set(T0 - 5_000)
    const b = clock.tick()
    expect(compareVersions(b, a)).toBe(1)
    time.set(T0 + 1)
    const c = clock.tick()
    expect(parseVersion(c)).toEqual({ wall: T0 + 1, counter: 0, node: 'nodeA' })
  })

  it('moves to the next millisecond when the counter overflows', () => {
    const time = manualTime(T0)
    const clock = new HybridClock('nodeA', time.now)
    clock.observe(formatVersion({ wall: T0, counter: 999_998, node: 'other' }))
    const a = clock.tick()
    expect(parseVersion(a)).toMatchObject({ wall: T0, counter: 999_999 })
    const b = clock.tick()
    expect(parseVersion(b)).toMatchObject({ wall: T0 + 1, counter: 0 })
    expect(b > a).toBe(true)
  })

  it('moves forward past a remote version it observes', () => {
    const time = manualTime(T0)
    const clock = new HybridClock('nodeA', time.now)
    const local = clock.tick()
    const remote = formatVersion({ wall: T0 + 30_000, counter: 5, node: 'nodeB' })
    clock.observe(remote)
    const next = clock.tick()
    expect(next > remote).toBe(true)
    expect(next > local).toBe(true)
    expect(parseVersion(next)).toEqual({ wall: T0 + 30_000, counter: 6, node: 'nodeA' })
    // An older remote version does not move it back.
    clock.observe(formatVersion({ wall: T0 - 1000, counter: 0, node: 'nodeB' }))
    expect(clock.tick() > next).toBe(true)
  })

  it('does not adopt a version more than 60 s in the future', () => {
    const time = manualTime(T0)
    const clock = new HybridClock('nodeA', time.now)
    clock.observe(formatVersion({ wall: T0 + MAX_CLOCK_DRIFT_MS + 1, counter: 0, node: 'broken' }))
    expect(parseVersion(clock.tick())).toEqual({ wall: T0, counter: 0, node: 'nodeA' })
    clock.observe(formatVersion({ wall: T0 + MAX_CLOCK_DRIFT_MS, counter: 0, node: 'nodeB' }))
    expect(parseVersion(clock.tick())).toEqual({ wall: T0 + MAX_CLOCK_DRIFT_MS, counter: 1, node: 'nodeA' })
  })

  it('makes a child above a parent from a clock 75 s ahead, without following that clock', () => {
    const time = manualTime(T0)
    const clock = new HybridClock('nodeA', time.now)
    const parent = formatVersion({ wall: T0 + 75_000, counter: 3, node: 'ahead' })
    clock.observe(parent)
    const child = clock.tickAfter([formatVersion({ wall: T0 - 5, counter: 0, node: 'nodeB' }), parent])
    expect(compareVersions(child, parent)).toBe(1)
    expect(parseVersion(child)).toEqual({ wall: T0 + 75_000, counter: 4, node: 'nodeA' })
    // The clock itself stays on local time: a write with no such parent is not dragged ahead.
    expect(parseVersion(clock.tickAfter([]))).toEqual({ wall: T0, counter: 1, node: 'nodeA' })
    // A parent at the counter's limit: the successor carries into the next millisecond.
    const full = formatVersion({ wall: T0 + 75_000, counter: 999_999, node: 'ahead' })
    expect(parseVersion(clock.tickAfter([full]))).toEqual({ wall: T0 + 75_001, counter: 0, node: 'nodeA' })
  })

  it('makes the same versions as tick for ordinary parents', () => {
    const time = manualTime(T0)
    const a = new HybridClock('nodeA', time.now)
    const b = new HybridClock('nodeA', time.now)
    const parents = [formatVersion({ wall: T0 - 1000, counter: 2, node: 'nodeB' }), formatVersion({ wall: T0 + 30_000, counter: 0, node: 'nodeC' })]
    for (const p of parents) { a.observe(p); b.observe(p) }
    expect(a.tickAfter(parents)).toBe(b.tick())
    time.set(T0 + 40_000)
    expect(a.tickAfter(parents)).toBe(b.tick())
    expect(a.tickAfter([])).toBe(b.tick())
  })

  it('orders a write over a head from a clock 75 s ahead above that head', () => {
    const time = manualTime(T0)
    const clock = new HybridClock('nodeA', time.now)
    const token = tokenOf('patient_id:1')
    const head: VersionEntry = { table: 'notes', id: 'n1', token, version: formatVersion({ wall: T0 + 75_000, counter: 0, node: 'ahead' }), parents: [], row: { text: 'a' } }
    const state: RecordState = { table: 'notes', id: 'n1', token, heads: [head], seen: [head.version], superseded: [] }
    const key = recordKey(token, 'notes', 'n1')
    const { entries } = orderMutations([
      { op: 'put', table: 'notes', id: 'n1', shard: 'patient_id:1', row: { text: 'b' } },
      { op: 'put', table: 'notes', id: 'n1', shard: 'patient_id:1', row: { text: 'c' } }
    ], { get: k => k === key ? state : undefined }, clock)
    expect(entries.map(e => e.parents)).toEqual([[head.version], [entries[0]?.version]])
    expect(compareVersions(entries[0]?.version ?? '', head.version)).toBe(1)
    expect(compareVersions(entries[1]?.version ?? '', entries[0]?.version ?? '')).toBe(1)
  })

  it('ignores what is not a version', () => {
    const clock = new HybridClock('nodeA', () => T0)
    clock.observe('garbage')
    expect(parseVersion(clock.tick())).toEqual({ wall: T0, counter: 0, node: 'nodeA' })
  })
})

describe('version strings', () => {
  it('sort lexicographically in (wall, counter, node) order', () => {
    const tuples: Array<{ wall: number, counter: number, node: string }> = []
    let seed = 7
    const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
    const nodes = ['a', 'B', 'node1', 'node10', 'node2', 'z_-9']
    for (let i = 0; i < 2000; i++) {
      tuples.push({ wall: T0 + rand(5) * (rand(2) === 0 ? 1 : 1_000_000_007), counter: rand(3) === 0 ? rand(1_000_000) : rand(11), node: nodes[rand(nodes.length)] as string })
    }
    const byTuple = [...tuples].sort((a, b) => a.wall - b.wall || a.counter - b.counter || (a.node < b.node ? -1 : a.node > b.node ? 1 : 0))
    const byString = tuples.map(formatVersion).sort(compareVersions)
    expect(byString).toEqual(byTuple.map(formatVersion))
  })

  it('parse back to what was formatted', () => {
    const h = { wall: T0, counter: 42, node: 'Ab_-9' }
    const v = formatVersion(h)
    expect(v).toBe(`${W0}.000042.Ab_-9`)
    expect(parseVersion(v)).toEqual(h)
    expect(isVersion(v)).toBe(true)
  })

  it('refuse malformed strings', () => {
    for (const bad of ['', 'x', '1.2.3', `${T0}.000001.node`, `${W0}.1.node`, `${W0}.000001.`,
      `${W0}.000001.no!de`, `${W0}.000001.${'n'.repeat(65)}`, ` ${W0}.000001.node`]) {
      expect(parseVersion(bad)).toBeUndefined()
      expect(isVersion(bad)).toBe(false)
    }
    expect(isVersion(42)).toBe(false)
    expect(isVersion(null)).toBe(false)
  })

  it('takes a short node tag that a version accepts from a peer id', () => {
    const tag = nodeTag('12D3KooWGzYJ5k6L4eT9hPGEjF1bnZ1qDPUr8Nq9ek8BxpR4wmRA')
    expect(tag).toHaveLength(10)
    expect(isVersion(formatVersion({ wall: T0, counter: 0, node: tag }))).toBe(true)
  })
})

describe('id generator', () => {
  it('draws strictly increasing safe integers, 100k in a tight loop', () => {
    const ids = new IdGenerator(201)
    const before = Date.now()
    let prev = ids.next()
    for (let i = 0; i < 100_000; i++) {
      const id = ids.next()
      if (!(id > prev) || id > Number.MAX_SAFE_INTEGER || !Number.isSafeInteger(id)) {
        throw new Error(`draw ${i}: ${id} after ${prev}`)
      }
      prev = id
    }
    // 16 ids per millisecond: a burst borrows future milliseconds, at most 6.25 s for 100k draws.
    expect(idTime(prev)).toBeGreaterThanOrEqual(before)
    expect(idTime(prev)).toBeLessThan(Date.now() + 100_000 / 16 + 1000)
    expect(idTag(prev)).toBe(201)
  })

  it('records when the id was made and which tag made it', () => {
    const now = Date.now()
    const id = new IdGenerator(7).next()
    expect(Math.abs(idTime(id) - now)).toBeLessThan(1000)
    expect(idTag(id)).toBe(7)
  })

  it('keeps ids within 53 bits up to the end of the 41-bit epoch, and refuses to go beyond', () => {
    const last = ID_EPOCH_MS + 2 ** 41 - 1
    const ids = new IdGenerator(ID_TAGS - 1, () => last)
    for (let i = 0; i < 16; i++) expect(ids.next()).toBeLessThanOrEqual(Number.MAX_SAFE_INTEGER)
    expect(() => ids.next()).toThrow(/2094/)
    expect(idTime(new IdGenerator(0, () => last).next())).toBe(last)
  })

  it('refuses a tag outside the tag bits', () => {
    expect(() => new IdGenerator(ID_TAGS)).toThrow(RangeError)
    expect(() => new IdGenerator(-1)).toThrow(RangeError)
  })

  it('borrows the next millisecond once 16 ids are drawn in one', () => {
    const time = manualTime(T0)
    const ids = new IdGenerator(3, time.now)
    const drawn = Array.from({ length: 17 }, () => ids.next())
    expect(idTime(drawn[15] as number)).toBe(T0)
    expect(idTime(drawn[16] as number)).toBe(T0 + 1)
    // The clock catching up does not repeat an id.
    time.set(T0 + 1)
    expect(ids.next()).toBeGreaterThan(drawn[16] as number)
  })

  it('starts above its floor, whatever the clock says (a restart after the clock was set back)', () => {
    const time = manualTime(T0)
    const before = new IdGenerator(3, time.now)
    const made = Array.from({ length: 40 }, () => before.next())
    time.set(T0 - 60_000)
    const floor = idMs(made[made.length - 1] as number)
    const after = new IdGenerator(3, time.now, floor)
    expect(after.next()).toBeGreaterThan(made[made.length - 1] as number)
  })

  it('gives every tag disjoint ids in the same millisecond: all 256 tags, 16 ids each, no two equal', () => {
    const all = new Set<number>()
    for (let tag = 0; tag < ID_TAGS; tag++) {
      const g = new IdGenerator(tag, () => T0)
      for (let i = 0; i < 16; i++) all.add(g.next())
    }
    expect(all.size).toBe(ID_TAGS * 16)
    expect([...all].every(id => idTime(id) === T0)).toBe(true)
  })
})
