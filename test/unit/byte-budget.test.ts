import { describe, expect, it } from 'vitest'
import { ByteBudget } from '../../src/p2p/byte-budget.js'

describe('byte budget', () => {
  it('admits up to the per-peer bound, then makes that peer wait while other peers go on', async () => {
    const b = new ByteBudget({ perPeer: 10, total: 25 })
    await b.acquire('p', 6)
    await b.acquire('p', 4)
    let third = false
    const waiting = b.acquire('p', 1).then(() => { third = true })
    await b.acquire('q', 10)
    await Promise.resolve()
    expect(third).toBe(false)
    expect(b.held('p')).toBe(10)
    b.release('p', 6)
    await waiting
    expect(third).toBe(true)
    expect(b.held('p')).toBe(5)
    expect(b.held()).toBe(15)
  })

  it('bounds all peers together, and lets a frame larger than a budget through once nothing else is held', async () => {
    const b = new ByteBudget({ perPeer: 10, total: 12 })
    await b.acquire('p', 8)
    let q = false
    const waitingQ = b.acquire('q', 8).then(() => { q = true })
    await Promise.resolve()
    expect(q).toBe(false)
    b.release('p', 8)
    await waitingQ
    b.release('q', 8)
    await b.acquire('r', 50)
    expect(b.held()).toBe(50)
    b.release('r', 50)
    expect(b.held()).toBe(0)
  })
})
