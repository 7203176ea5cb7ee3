import { describe, expect, it } from 'vitest'
import { replicationHealth } from '../../src/daemon/node.js'

const member = (peerId: string, state: string): { peerId: string, state: string } => ({ peerId, state })

describe('replication health (status, the console)', () => {
  it('ok only when N members are live and none is down', () => {
    expect(replicationHealth([member('a', 'alive'), member('b', 'alive'), member('c', 'alive')], 3, 3)).toBe('ok')
    // A member that left owns nothing: it is not a missing copy.
    expect(replicationHealth([member('a', 'alive'), member('b', 'alive'), member('c', 'alive'), member('d', 'left')], 3, 3)).toBe('ok')
  })

  it('too few live members for N is under-replicated', () => {
    expect(replicationHealth([member('a', 'alive'), member('b', 'alive'), member('c', 'down')], 3, 2)).toBe('under-replicated: 2 live members for 3 replicas')
  })

  it('a member down while enough others are up is named: the records it owns lack a copy (with N=1, their only one)', () => {
    expect(replicationHealth([member('a', 'alive'), member('b', 'down')], 1, 1)).toBe('degraded: member b down; the records it owns lack their only copy until it returns or is removed (ntsoekhe remove)')
    expect(replicationHealth([member('a', 'alive'), member('b', 'alive'), member('c', 'alive'), member('d', 'down'), member('e', 'down')], 3, 3))
      .toBe('degraded: members d, e down; the records they own lack a live copy until they return or are removed (ntsoekhe remove)')
  })
})
