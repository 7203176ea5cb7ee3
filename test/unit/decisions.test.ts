import { describe, expect, it } from 'vitest'
import { differingIndexes, orderByLiveness, planRecordMove, requiredAcks, type StateOf } from '../../src/cluster/decisions.js'

const states = (map: Record<string, 'alive' | 'suspect' | 'down' | 'left'>): StateOf => p => map[p]

describe('requiredAcks', () => {
  it('one needs one, all needs every owner, quorum is capped at the owners there are', () => {
    expect(requiredAcks('one', 2, 3)).toBe(1)
    expect(requiredAcks('all', 2, 3)).toBe(3)
    expect(requiredAcks('quorum', 2, 3)).toBe(2)
    expect(requiredAcks(undefined, 2, 3)).toBe(2)
    expect(requiredAcks('quorum', 2, 1)).toBe(1)
  })
})

describe('orderByLiveness', () => {
  const alive = new Set(['a', 'c', 'self'])
  it('puts alive owners first, in ring order, for writes', () => {
    expect(orderByLiveness(['b', 'a', 'self', 'c'], 'self', p => alive.has(p), false, () => 0)).toEqual(['a', 'self', 'c', 'b'])
  })

  it('for reads keeps this node first and shuffles the other alive owners with the draw given', () => {
    const owners = ['b', 'a', 'self', 'c']
    expect(orderByLiveness(owners, 'self', p => alive.has(p), true, () => 0)).toEqual(['self', 'c', 'a', 'b'])
    expect(orderByLiveness(owners, 'self', p => alive.has(p), true, () => 0.99)).toEqual(['self', 'a', 'c', 'b'])
  })
})

describe('planRecordMove', () => {
  it('an owner that was the first live old owner sends the record to the owners that gained it, and keeps it', () => {
    expect(planRecordMove('a', ['a', 'b', 'n'], ['a', 'b', 'c'], states({ a: 'alive', b: 'alive', c: 'down', n: 'alive' }))).toEqual({ targets: ['n'], drop: false, missing: false })
  })

  it('leaves the newcomers to an old owner that lost its place and is alive: it sends to every owner before it drops its copy', () => {
    expect(planRecordMove('a', ['a', 'b', 'n'], ['a', 'b', 'c'], states({ a: 'alive', b: 'alive', c: 'alive', n: 'alive' }))).toBeUndefined()
    expect(planRecordMove('c', ['a', 'b', 'n'], ['a', 'b', 'c'], states({ a: 'alive', b: 'alive', c: 'alive', n: 'alive' }))).toEqual({ targets: ['a', 'b', 'n'], drop: true, missing: false })
  })

  it('another old owner does nothing; so does a node whose owners did not change', () => {
    expect(planRecordMove('b', ['a', 'b', 'n'], ['a', 'b', 'c'], states({ a: 'alive', b: 'alive', n: 'alive' }))).toBeUndefined()
    expect(planRecordMove('a', ['a', 'b', 'c'], ['a', 'b', 'c'], states({ a: 'alive', b: 'alive', c: 'alive' }))).toBeUndefined()
  })

  it('the next live old owner sends when the first is not alive', () => {
    expect(planRecordMove('b', ['b', 'c', 'n'], ['a', 'b', 'c'], states({ a: 'suspect', b: 'alive', c: 'alive', n: 'alive' }))).toEqual({ targets: ['n'], drop: false, missing: false })
  })

  it('a newcomer that is down is missing: the run is retried', () => {
    expect(planRecordMove('a', ['a', 'b', 'n'], ['a', 'b', 'c'], states({ a: 'alive', b: 'alive', n: 'down' }))).toEqual({ targets: [], drop: false, missing: true })
  })

  it('a copy this node does not own goes to every owner and is dropped only when none is down', () => {
    expect(planRecordMove('x', ['a', 'b', 'c'], ['x', 'a', 'b'], states({ a: 'alive', b: 'suspect', c: 'alive' }))).toEqual({ targets: ['a', 'b', 'c'], drop: true, missing: false })
    expect(planRecordMove('x', ['a', 'b', 'c'], ['a', 'b', 'c'], states({ a: 'alive', b: 'down', c: 'alive' }))).toEqual({ targets: ['a', 'c'], drop: false, missing: true })
  })
})
