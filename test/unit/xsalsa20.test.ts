import { createRequire } from 'node:module'
import { describe, expect, it } from 'vitest'
import { installXsalsa20MemoryFix } from '../../src/p2p/xsalsa20-memory.js'

type Cipher = { update: (input: Uint8Array) => Uint8Array, finalize: () => void, _xor: { _memory: Uint8Array } }
const xsalsa20 = createRequire(import.meta.url)('xsalsa20') as (nonce: Uint8Array, key: Uint8Array) => Cipher

describe('xsalsa20 (the pnet cipher) with the memory fix', () => {
  it('keeps its shared memory bounded while several ciphers take large chunks in turn, and still round-trips', () => {
    installXsalsa20MemoryFix()
    installXsalsa20MemoryFix()
    const key = new Uint8Array(32).fill(7)
    const nonces = [1, 2, 3].map(n => new Uint8Array(24).fill(n))
    const senders = nonces.map(n => xsalsa20(n, key))
    const receivers = nonces.map(n => xsalsa20(n, key))
    const chunk = new Uint8Array(1024 * 1024).map((_, i) => i % 251)
    // Unfixed, memory grew by the chunk's size at nearly every update and failed within ~30 rounds.
    for (let round = 0; round < 200; round++) {
      const i = round % 3
      const sealed = (senders[i] as Cipher).update(chunk.subarray(0, 700_000 + round * 1000))
      const opened = (receivers[i] as Cipher).update(sealed)
      expect(opened.every((b, j) => b === (chunk[j] as number)), `round ${round}`).toBe(true)
    }
    const memoryBytes = (senders[0] as Cipher)._xor._memory.buffer.byteLength
    expect(memoryBytes).toBeLessThan(8 * 1024 * 1024)
    for (const c of [...senders, ...receivers]) c.finalize()
  })
})
