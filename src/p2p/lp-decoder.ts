import { InvalidParametersError } from '@libp2p/interface'
import { InvalidMessageLengthError, LengthPrefixedDecoder } from '@libp2p/utils'

/** The frames decode() yields (a Uint8ArrayList, named through the class so no extra dependency is needed) */
type Frames = ReturnType<LengthPrefixedDecoder['decode']>
type List = Frames extends Generator<infer T> ? T : never

/**
 * A faster `LengthPrefixedDecoder.decode` for @libp2p/utils 7, which Noise
 * uses to split every chunk read from a connection into its frames.
 *
 * The stock loop learns that its buffer is used up by calling the length
 * decoder on the empty buffer and catching the `RangeError` it throws. So
 * every chunk read off a socket built an Error with a stack trace: about
 * 3.3 µs of the 3.7 µs spent per frame here, and 4% of a replicating
 * daemon's CPU in profiles. This version stops when the buffer is empty;
 * everything else (limits, errors, what it yields) is the same loop. A
 * partial length prefix still ends the loop through the decoder's
 * RangeError, as before.
 *
 * Installed once, for the whole process, when the p2p layer is imported
 * (the class is shared: there is one @libp2p/utils in the tree).
 */
export function installLengthPrefixedDecoderFix (): void {
  const proto = LengthPrefixedDecoder.prototype as unknown as { decode: unknown, [FIXED]?: true, [ORIGINAL]?: unknown }
  if (proto[FIXED] === true) return
  proto[ORIGINAL] = proto.decode
  proto.decode = decode
  proto[FIXED] = true
}

/**
 * What this patch replaces, checked by test/unit/patches.test.ts: the exact
 * version package.json pins, and the SHA-256 of the replaced method's source.
 * A new version means reading its decode() again before moving the pin.
 */
export const LP_DECODER_PATCH = {
  package: '@libp2p/utils',
  version: '7.4.1',
  replaces: 'LengthPrefixedDecoder.prototype.decode',
  sourceSha256: 'c5f365bb64c2c0f7b9d3543343b994b9dd4f0e205300f90c4d6b93187bff26d7'
} as const

/** The stock decode(), whether or not the fix is installed */
export function stockDecode (): (...args: unknown[]) => unknown {
  const proto = LengthPrefixedDecoder.prototype as unknown as { decode: (...args: unknown[]) => unknown, [ORIGINAL]?: (...args: unknown[]) => unknown }
  return proto[ORIGINAL] ?? proto.decode
}

const FIXED = Symbol.for('ntsoekhe.lengthPrefixedDecoderFix')
const ORIGINAL = Symbol.for('ntsoekhe.lengthPrefixedDecoderFix.original')

interface DecoderFields {
  buffer: List
  maxBufferSize: number
  maxDataLength: number
  lengthDecoder: (buf: List) => number
  encodingLength: (n: number) => number
}

function * decode (this: DecoderFields, buf: Uint8Array | List): Frames {
  this.buffer.append(buf)
  if (this.buffer.byteLength > this.maxBufferSize) {
    throw new InvalidParametersError(`Buffer length limit exceeded - ${this.buffer.byteLength}/${this.maxBufferSize}`)
  }
  while (this.buffer.byteLength > 0) {
    let dataLength: number
    try {
      dataLength = this.lengthDecoder(this.buffer)
    } catch (err) {
      // Not enough bytes for the length prefix yet
      if (err instanceof RangeError) break
      throw err
    }
    if (dataLength < 0 || dataLength > this.maxDataLength) {
      throw new InvalidMessageLengthError('Invalid message length')
    }
    const lengthLength = this.encodingLength(dataLength)
    const chunkLength = lengthLength + dataLength
    if (this.buffer.byteLength < chunkLength) break
    const frame = this.buffer.sublist(lengthLength, chunkLength)
    this.buffer.consume(chunkLength)
    if (frame.byteLength > 0) yield frame
  }
}
