/**
 * The byte work done with uint8arrays (the project's byte toolkit) gives the
 * very strings and bytes Node's Buffer gave before it: cursors, invites,
 * tokens, signatures and backup chunks written by an older node still read,
 * and the other way round.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto'
import { gunzipSync, gzipSync } from 'node:zlib'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { splitLines } from '../../src/api/import.js'
import { CHUNK_MAGIC, deriveKey, mac, macMatches, openChunk, sealChunk } from '../../src/backup/chunk.js'
import { signClaim, verifyClaim } from '../../src/cluster/member-claims.js'
import { decodeInvite, encodeInvite, keyHex } from '../../src/daemon/network-key.js'
import { preSharedKey } from '@libp2p/pnet'
import { decodeCursor, decodeQueryCursor, encodeCursor, encodeQueryCursor } from '../../src/query/database.js'
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

  it('a query cursor is q and the base64url of [order, key], as Buffer wrote it, and one written by Buffer reads back', () => {
    fc.assert(fc.property(fc.stringMatching(/^[0-9a-f!:-]{1,60}$/), fc.constantFrom('', 'patient_name', 'date:desc'), (key, order) => {
      const byBuffer = 'q' + Buffer.from(JSON.stringify([order, key]), 'utf8').toString('base64url')
      expect(encodeQueryCursor(key, order)).toBe(byBuffer)
      expect(decodeQueryCursor(byBuffer, order)).toBe(key)
    }), { seed: 7, numRuns: 300 })
    // Not base64url (uint8arrays refuses what Buffer skipped over), or not a cursor: the same 400.
    for (const bad of ['q***', 'q' + Buffer.from('[1]').toString('base64url'), 'x' + encodeQueryCursor('ab', ''), 'q=']) {
      expect(() => decodeQueryCursor(bad, ''), bad).toThrow(expect.objectContaining({ code: 'INVALID' }))
    }
  })

  it('a pnet key file reads as the text it is', () => {
    const hex = 'c0ffee'.repeat(10) + 'beef'
    expect(keyHex(Buffer.from(`/key/swarm/psk/1.0.0/\n/base16/\n${hex}\n`))).toBe(hex)
    expect(() => keyHex(Buffer.from([0xff, 0xfe, 0x00]))).toThrow(/Invalid network key/)
  })

  it('a pnet key file saved with a UTF-8 byte order mark reads as it did through TextDecoder (and as libp2p reads it)', () => {
    // Editors on Windows save one; TextDecoder dropped it, Buffer's and uint8arrays' utf8 keep it as U+FEFF.
    const hex = 'c0ffee'.repeat(10) + 'beef'
    const file = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(`/key/swarm/psk/1.0.0/\n/base16/\n${hex}\n`)])
    expect(keyHex(file)).toBe(hex)
    expect(() => preSharedKey({ psk: file })).not.toThrow()
  })

  it('an encrypted backup chunk has the layout Buffer built (magic, IV, ciphertext, tag), both ways', async () => {
    const key = deriveKey(randomBytes(32), randomBytes(16))
    const name = 'chunk-000003.ndjson.gz.enc'
    const text = '{"t":"patient_records","id":"1","h\u00e9":"\u00e9t\u00e9"}\n'
    // Sealed here, opened by hand with Buffer and Node's crypto.
    const sealed = Buffer.from(await sealChunk(text, name, key))
    expect(sealed.subarray(0, 8).toString('latin1')).toBe('NTSKBK01')
    const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(8, 20))
    decipher.setAAD(Buffer.from(name, 'utf8'))
    decipher.setAuthTag(sealed.subarray(sealed.length - 16))
    expect(gunzipSync(Buffer.concat([decipher.update(sealed.subarray(20, sealed.length - 16)), decipher.final()])).toString('utf8')).toBe(text)
    // Sealed by hand with Buffer, opened here.
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', key, iv)
    cipher.setAAD(Buffer.from(name, 'utf8'))
    const body = Buffer.concat([cipher.update(gzipSync(Buffer.from(text, 'utf8'))), cipher.final()])
    const byBuffer = Buffer.concat([Buffer.from(CHUNK_MAGIC), iv, body, cipher.getAuthTag()])
    expect(await openChunk(byBuffer, name, key)).toBe(text)
    expect(await openChunk(new Uint8Array(byBuffer), name, key)).toBe(text)
    // The magic checked byte for byte, and a clear chunk is gunzip alone.
    byBuffer[7] = 0x30
    await expect(openChunk(byBuffer, name, key)).rejects.toThrow(/not an encrypted chunk/)
    expect(await openChunk(await sealChunk(text, 'chunk-000001.ndjson.gz'), 'chunk-000001.ndjson.gz')).toBe(text)
  })

  it('a backup key is the HKDF Buffer derived, and a manifest MAC is compared as bytes: a malformed one does not match and does not throw', () => {
    const file = randomBytes(40)
    const salt = randomBytes(16)
    expect(Buffer.from(deriveKey(file, salt)).equals(Buffer.from(hkdfSync('sha256', file, salt, 'ntsoekhe backup v1', 32)))).toBe(true)
    const key = deriveKey(file, salt)
    const good = mac(key, 'manifest')
    expect(macMatches(key, 'manifest', good)).toBe(true)
    expect(macMatches(key, 'manifest!', good)).toBe(false)
    for (const bad of ['', good.slice(0, -2), `${good.slice(0, -1)}g`, good.slice(0, -1), good.toUpperCase().replace(/[0-9]/g, 'Z')]) {
      expect(macMatches(key, 'manifest', bad), bad).toBe(false)
    }
  })

  it('splitLines joins a line from Buffer and string chunks, a character split across chunks included', async () => {
    const line = 'caf\u00e9 \u{1f600} h\u00e9'
    const bytes = Buffer.from(`${line}\n${line}`, 'utf8')
    for (let cut = 1; cut < bytes.length; cut++) {
      async function * chunks (): AsyncGenerator<Uint8Array | string> {
        yield bytes.subarray(0, cut)
        yield new Uint8Array(bytes.subarray(cut))
        yield '\nlast'
      }
      const out = []
      for await (const l of splitLines(chunks(), 1024)) out.push(l)
      expect(out, `cut at ${cut}`).toEqual([{ n: 1, text: line }, { n: 2, text: line }, { n: 3, text: 'last' }])
    }
  })

  it('a member claim verified once is taken from the cache only for the very bytes it covered', () => {
    const id = testIdentity()
    const record = signClaim({ peerId: id.peerId, addresses: ['/ip4/127.0.0.1/tcp/1'], incarnation: 5, heartbeat: 9 }, id.sign)
    expect(verifyClaim(record)).toBe(true)
    expect(verifyClaim({ ...record })).toBe(true)
    // Same signer and signature (the cache key), other bytes: checked anew, and refused.
    expect(verifyClaim({ ...record, addresses: ['/ip4/127.0.0.1/tcp/2'] })).toBe(false)
    expect(verifyClaim({ ...record, heartbeat: 10 })).toBe(false)
    expect(verifyClaim(record)).toBe(true)
  })
})
