import { createRequire } from 'node:module'

/**
 * A fix for the xsalsa20 cipher that @libp2p/pnet runs every byte of a
 * private network through (xsalsa20 1.2.0, pinned in package.json).
 *
 * All ciphers share one WebAssembly memory, and each keeps its own view of
 * it. When one cipher grows the memory for a large chunk, every other
 * cipher's view is left on the old, detached buffer (length 0), and its next
 * update "grows" the memory by the whole size it needs again, however large
 * the memory already is. With a few connections sending chunks of hundreds
 * of kilobytes the memory climbs by megabytes per update until
 * `WebAssembly.Memory.grow()` fails with an uncaught RangeError, which ends
 * the daemon. Here a cipher's view is brought up to date before each update,
 * so a grow happens only when the memory really is too small.
 *
 * Installed once, for the whole process (there is one xsalsa20 in the tree,
 * loaded through the same CommonJS cache as @libp2p/pnet's import).
 */
export function installXsalsa20MemoryFix (): void {
  const require = createRequire(import.meta.url)
  const xsalsa20 = require('xsalsa20') as (nonce: Uint8Array, key: Uint8Array) => { _xor: unknown, finalize: () => void }
  const probe = xsalsa20(new Uint8Array(24), new Uint8Array(32))
  const proto = Object.getPrototypeOf(probe._xor) as Patchable
  if (proto[FIXED] === true) {
    probe.finalize()
    return
  }
  const view = (probe._xor as WasmCipher)._memory
  if (typeof proto.update !== 'function' || typeof proto.realloc !== 'function' || !(view instanceof Uint8Array)) {
    throw new Error('xsalsa20 internals changed (expected WASM ciphers with update, realloc and _memory): check the memory fix in src/p2p/xsalsa20-memory.ts against the installed version')
  }
  probe.finalize()
  // The freshest view of the shared memory: every grow goes through realloc, which makes a new one.
  let current = view
  const update = proto.update
  const realloc = proto.realloc
  proto.update = function (this: WasmCipher, input: Uint8Array, output: Uint8Array) {
    if (this._memory.buffer !== current.buffer) this._memory = current
    update.call(this, input, output)
  }
  proto.realloc = function (this: WasmCipher, size: number) {
    realloc.call(this, size)
    current = this._memory
  }
  proto[FIXED] = true
}

const FIXED = Symbol.for('ntsoekhe.xsalsa20MemoryFix')

interface WasmCipher {
  _memory: Uint8Array
}

interface Patchable {
  update: (this: WasmCipher, input: Uint8Array, output: Uint8Array) => void
  realloc: (this: WasmCipher, size: number) => void
  [FIXED]?: boolean
}
