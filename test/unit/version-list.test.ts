import { describe, expect, it } from 'vitest'
import { decodeVersionLists, encodeVersionLists } from '../../src/storage/version-list.js'
import { formatVersion, HybridClock } from '../../src/storage/version.js'
import { prng } from '../helpers/prng.js'

const sorted = (xs: string[]): string[] => [...new Set(xs)].sort()

describe('version lists: the compact stored form (format 5)', () => {
  it('gives back exactly the sets it was given, whatever their writers, counters and flags', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const rand = prng(seed)
      const nodes = ['aB3-_x9Qz0', 'node2', 'Z'.repeat(64), 'q']
      let wall = 1_700_000_000_000 + Math.floor(rand() * 1e9)
      const all: string[] = []
      for (let i = 0, n = Math.floor(rand() * 150); i < n; i++) {
        wall += rand() < 0.3 ? 0 : Math.floor(rand() * 5_000_000)
        all.push(formatVersion({ wall, counter: rand() < 0.3 ? Math.floor(rand() * 999_999) : 0, node: nodes[Math.floor(rand() * nodes.length)] as string }))
      }
      const seen = all.filter(() => rand() < 0.8)
      const superseded = all.filter(v => !seen.includes(v) || rand() < 0.7)
      const stored = JSON.parse(JSON.stringify(encodeVersionLists(seen, superseded)))
      const back = decodeVersionLists(stored)
      expect(back.seen).toEqual(sorted(seen))
      expect(back.superseded).toEqual(sorted(superseded))
    }
  })

  it('writes a record\'s one first version as the general form would, and reads it back', () => {
    for (const h of [{ wall: 1_732_300_000_000, counter: 0, node: 'abc' }, { wall: 1_732_300_000_123, counter: 42, node: 'x_y-Z' }, { wall: 0, counter: 999_999, node: 'Z'.repeat(64) }]) {
      const v = formatVersion(h)
      const one = encodeVersionLists([v], [])
      // Listed twice, it takes the general path: the same set, so the same stored form.
      expect(one).toEqual(encodeVersionLists([v, v], []))
      expect(decodeVersionLists(one)).toEqual({ seen: [v], superseded: [] })
    }
    expect(encodeVersionLists(['v1'], [])).toEqual({ v: ';', raw: [['v1', 1]] })
  })

  it('keeps strings that are not clock versions as they are', () => {
    const v = formatVersion({ wall: 5, counter: 0, node: 'n' })
    const stored = encodeVersionLists(['x', v, 'v1'], ['x', '000000000000005.000000.n'.replace('5.', '5.0')])
    expect(decodeVersionLists(stored)).toEqual({ seen: [v, 'v1', 'x'], superseded: ['000000000000005.0000000.n', 'x'] })
    expect(decodeVersionLists(encodeVersionLists([], []))).toEqual({ seen: [], superseded: [] })
  })

  it('stores a window of one writer\'s successive versions in a few bytes each', () => {
    const clock = new HybridClock('abcdefghij')
    const versions = Array.from({ length: 65 }, () => clock.tick())
    const head = versions.at(-1) as string
    const stored = JSON.stringify(encodeVersionLists(versions, versions.slice(0, -1)))
    const plain = JSON.stringify({ seen: versions, superseded: versions.slice(0, -1) })
    // At most 8 bytes a version, the first (its whole wall clock) and the writer's tag aside.
    expect(stored.length).toBeLessThan(40 + 65 * 8)
    expect(stored.length * 8).toBeLessThan(plain.length)
    expect(decodeVersionLists(JSON.parse(stored)).seen.at(-1)).toBe(head)
  })

  it('refuses a malformed stored form', () => {
    expect(() => decodeVersionLists({ v: 'no separator' })).toThrow(/malformed/)
    expect(() => decodeVersionLists({ v: 'a;1 $' })).toThrow(/malformed/)
    expect(() => decodeVersionLists({ v: 'a;1~5' })).toThrow(/names no writer/)
    expect(() => decodeVersionLists({ v: 7 } as unknown as { v: string })).toThrow(/malformed/)
  })
})
