/**
 * The byte work done with uint8arrays (the project's byte toolkit) gives the
 * very strings Node's Buffer gave before it: cursors, invites, tokens and
 * signatures written by an older node still read, and the other way round.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { signClaim, verifyClaim } from '../../src/cluster/member-claims.js'
import { decodeInvite, encodeInvite } from '../../src/daemon/network-key.js'
import { decodeCursor, encodeCursor } from '../../src/query/database.js'
import { newToken } from '../../src/security/tokens.js'
import { testIdentity } from '../helpers/identity.js'

describe('bytes: uint8arrays gives what Buffer gave', () => {
  it('a cursor is the base64url (unpadded) of its position, and reads back', () => {
    fc.assert(fc.property(fc.stringMatching(/^[0-9a-f]{16}![0-9:-]{1,40}$/), position => {
      const cursor = encodeCursor(position)
      expect(cursor).toBe(Buffer.from(position, 'utf8').toString('base64url'))
      expect(decodeCursor(cursor)).toBe(position)
    }), { seed: 12, numRuns: 300 })
    // Not base64url at all, or base64url of something else: the same 400.
    for (const bad of ['zzz', '!!!!', '%%', 'a', Buffer.from('hello').toString('base64url')]) {
      expect(() => decodeCursor(bad), bad).toThrow(expect.objectContaining({ code: 'INVALID' }))
    }
  })

  it('an invite line is base64url JSON, as Buffer wrote it', () => {
    const invite = { key: 'ab'.repeat(32), addresses: ['/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWExample', '/dns4/h\u00e9te.example/tcp/1/p2p/x'] }
    const line = encodeInvite(invite)
    expect(line.endsWith(Buffer.from(JSON.stringify(invite)).toString('base64url'))).toBe(true)
    expect(decodeInvite(line)).toEqual(invite)
    expect(() => decodeInvite(`${line.slice(0, -3)}***`)).toThrow(/damaged/)
  })

  it('a token is 32 random bytes as 43 base64url characters', () => {
    const tokens = new Set(Array.from({ length: 50 }, () => newToken()))
    expect(tokens.size).toBe(50)
    for (const t of tokens) {
      expect(t).toMatch(/^[A-Za-z0-9_-]{43}$/)
      expect(Buffer.from(t, 'base64url').toString('base64url')).toBe(t)
    }
  })

  it('a member claim\'s signature is padded base64, as Buffer wrote it, and a damaged one does not verify', () => {
    const id = testIdentity()
    const record = signClaim({ peerId: id.peerId, addresses: ['/ip4/127.0.0.1/tcp/1'], incarnation: 1, heartbeat: 2 }, id.sign)
    const { sig: _, ...unsigned } = record
    const expected = Buffer.from(id.sign(new TextEncoder().encode(JSON.stringify(['ntsoekhe/member/1', unsigned.peerId, 1, 2, false, unsigned.addresses, null, null])))).toString('base64')
    expect(record.sig).toBe(expected)
    expect(verifyClaim(record)).toBe(true)
    expect(verifyClaim({ ...record, heartbeat: 3 })).toBe(false)
    expect(verifyClaim({ ...record, sig: `${(record.sig ?? '').slice(0, -4)}!!!!` })).toBe(false)
  })
})
