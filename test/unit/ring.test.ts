import { describe, expect, it } from 'vitest'
import { HashRing } from '../../src/cluster/ring.js'
import { tokenOf } from '../../src/cluster/token.js'

const peers = (n: number, prefix = 'peer'): Array<{ peerId: string }> => Array.from({ length: n }, (_, i) => ({ peerId: `${prefix}-${i}` }))
const keys = (n: number): string[] => Array.from({ length: n }, (_, i) => tokenOf(`patient_id:${i}`))

describe('hash ring', () => {
  it('places deterministically, whatever the order members were added in', () => {
    const a = new HashRing()
    const b = new HashRing()
    a.setMembers(peers(10))
    b.setMembers(peers(10).reverse())
    for (const k of keys(500)) expect(a.preferenceList(k, 3)).toEqual(b.preferenceList(k, 3))
  })

  it('gives N distinct owners, and every member when there are fewer than N', () => {
    const ring = new HashRing()
    ring.setMembers(peers(7))
    for (const k of keys(1000)) {
      const owners = ring.preferenceList(k, 3)
      expect(owners).toHaveLength(3)
      expect(new Set(owners).size).toBe(3)
    }
    const small = new HashRing()
    small.setMembers(peers(2))
    expect(new Set(small.preferenceList(tokenOf('x'), 3))).toEqual(new Set(['peer-0', 'peer-1']))
    expect(new HashRing().preferenceList(tokenOf('x'), 3)).toEqual([])
  })

  it('moves only about 1/members of the primaries when a member joins', () => {
    const ring = new HashRing()
    ring.setMembers(peers(10))
    const ks = keys(20_000)
    const before = ks.map(k => ring.preferenceList(k, 1)[0])
    ring.add({ peerId: 'newcomer' })
    const after = ks.map(k => ring.preferenceList(k, 1)[0])
    const moved = before.filter((p, i) => p !== after[i]).length / ks.length
    // Ideal is 1/11 ≈ 0.091; every moved key must have moved to the newcomer.
    expect(moved).toBeGreaterThan(0.05)
    expect(moved).toBeLessThan(0.14)
    before.forEach((p, i) => { if (p !== after[i]) expect(after[i]).toBe('newcomer') })
  })

  it('keeps max/mean load at or under 1.25 on a simulated 1,000-member ring', () => {
    const ring = new HashRing()
    ring.setMembers(peers(1000, 'node'))
    const shares = [...ring.shares().values()]
    const mean = 1 / 1000
    const ratio = Math.max(...shares) / mean
    console.log(`1,000-member ring, 256 vnodes: max/mean token share ${ratio.toFixed(3)}`)
    expect(shares.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6)
    expect(ratio).toBeLessThanOrEqual(1.25)
  })
})
