import { setMaxListeners } from 'node:events'
import { peerIdFromString } from '@libp2p/peer-id'
import { byteStream, InvalidMessageLengthError, LengthPrefixedDecoder, type ByteStream } from '@libp2p/utils'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'
import { concat } from 'uint8arrays'
import {
  InvalidMessageError,
  NtsoekheError,
  TimeoutError,
  UnavailableError,
  ValidationError,
  errorFromJSON
} from '../errors/index.js'
import { ByteBudget } from './byte-budget.js'

/**
 * Pipelined request/response over one libp2p protocol.
 *
 * Wire: length-prefixed (unsigned varint) JSON frames. A request is
 * `{ id, body }`, a response `{ id, ok: true, body }` or
 * `{ id, ok: false, error: { code, message, column? } }`. Any number of
 * requests may be in flight on one stream; the handler side runs them
 * concurrently and answers in completion order, the caller matches by id.
 * Streams are long-lived and reused: the caller keeps up to `streamsPerPeer`
 * per peer and picks one round-robin.
 */

export interface RpcComponents {
  node: Libp2p
  /** Where protocol violations and stream failures are reported. @default the libp2p debug logger `ntsoekhe:rpc` */
  logger?: (msg: string) => void
  /**
   * Bounds the bytes of inbound requests being handled, per peer and in all;
   * share one among the services of a node.
   * @default a budget of its own: 2 x maxMessageBytes per peer, 8 x in all
   */
  budget?: ByteBudget
}

export type RpcHandler = (msg: unknown, from: string) => Promise<unknown>

export interface RpcInit {
  /** The libp2p protocol id, e.g. `/ntsoekhe/replica/1.0.0` */
  protocol: string
  /** Answers one request; `from` is the caller's peer id. Throw a `NtsoekheError` to send its code back */
  handler: RpcHandler
  /**
   * Whether a peer may open streams of this protocol: a stream from one that
   * may not is reset before anything on it is read.
   * @default every peer
   */
  accept?: (peerId: string) => boolean
  /**
   * Streams one connection may have open to this protocol at once: each
   * can hold up to a frame of unread bytes.
   * @default 16
   */
  maxInboundStreams?: number
  /**
   * Largest frame accepted or sent, in bytes. A larger incoming frame closes
   * the stream; a larger outgoing request or response fails with TOO_LARGE.
   *
   * @default 8 MiB
   */
  maxMessageBytes?: number
  /**
   * Default per-request timeout in ms, including opening a stream
   *
   * @default 10_000
   */
  timeout?: number
  /**
   * How many streams the caller keeps open to each peer
   *
   * @default 2
   */
  streamsPerPeer?: number
  /**
   * Requests one inbound stream may have running in the handler at once;
   * beyond it the stream is not read until some finish (backpressure)
   *
   * @default 4096
   */
  maxConcurrentPerStream?: number
}

export interface RpcRequestOptions {
  signal?: AbortSignal
  /** ms. @default the service's `timeout` */
  timeout?: number
}

export interface RpcStats {
  /** Open streams this node opened, to all peers */
  outboundStreams: number
  /** Open streams peers opened to this node */
  inboundStreams: number
  /** Requests sent and not yet answered */
  pending: number
}

export const DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
export const DEFAULT_RPC_TIMEOUT = 10_000
export const DEFAULT_STREAMS_PER_PEER = 2
export const DEFAULT_MAX_CONCURRENT_PER_STREAM = 4096
export const DEFAULT_MAX_INBOUND_STREAMS = 16

/** Frames per stream write */
const MAX_FRAMES_PER_WRITE = 1024
/** Bytes per stream write (a larger frame goes alone): each write is one copied buffer */
const MAX_BYTES_PER_WRITE = 4 * 1024 * 1024
/** How long a graceful stream close may take before the stream is reset */
const CLOSE_TIMEOUT = 2_000

const encoder = new TextEncoder()
const decoder = new TextDecoder()

interface WireError { code: string, message: string, column?: string }

function errorToWire (err: unknown): WireError {
  if (err instanceof NtsoekheError) return err.toJSON()
  return { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) }
}

function isRecord (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/**
 * Objects and arrays one frame may hold. JSON.parse makes an object of a few
 * dozen bytes for every `{}` of two, so 8 MiB of `[{},{},...]` would be
 * hundreds of MB of heap; the largest real message (an apply of 10,000
 * versions) holds well under 100,000. Counted on the bytes, before parsing.
 */
export const MAX_JSON_CONTAINERS = 250_000

/** Whether `bytes` holds more than `limit` of the byte `b` (stops counting past the limit) */
function moreThan (bytes: Uint8Array, b: number, limit: number): boolean {
  // A view, not a copy: Buffer's indexOf is memchr, faster than a typed array's over megabytes.
  // eslint-disable-next-line no-restricted-properties
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let n = 0
  for (let i = buf.indexOf(b); i !== -1; i = buf.indexOf(b, i + 1)) {
    if (++n > limit) return true
  }
  return false
}

function parseFrame (bytes: Uint8Array): Record<string, unknown> & { id: number } {
  // Quotes and text may hold these bytes too: they only make the count larger, never smaller.
  if (bytes.byteLength > MAX_JSON_CONTAINERS && (moreThan(bytes, 0x7b, MAX_JSON_CONTAINERS) || moreThan(bytes, 0x5b, MAX_JSON_CONTAINERS))) {
    throw new InvalidMessageError(`Frame holds more than ${MAX_JSON_CONTAINERS} JSON objects or arrays`)
  }
  let frame: unknown
  try {
    frame = JSON.parse(decoder.decode(bytes))
  } catch (err) {
    throw new InvalidMessageError('Frame is not JSON', { cause: err })
  }
  if (!isRecord(frame) || typeof frame.id !== 'number' || !Number.isSafeInteger(frame.id)) {
    throw new InvalidMessageError('Frame has no numeric id')
  }
  return frame as Record<string, unknown> & { id: number }
}

/** Bytes of the unsigned varint of `n` */
function varintLength (n: number): number {
  let len = 1
  while (n >= 0x80) { n = Math.floor(n / 128); len++ }
  return len
}

/**
 * Reads a frame's unsigned-varint length prefix. Not enough bytes yet is a
 * RangeError (the decoder waits for more); a prefix longer than the largest
 * allowed length needs, not in its shortest form, or naming an empty frame
 * is an InvalidMessageError, which the decoder passes on and closes the stream.
 */
function lengthDecoder (maxPrefix: number): (buf: { byteLength: number, get?: (i: number) => number }) => number {
  return (buf) => {
    let value = 0
    for (let i = 0; i < buf.byteLength; i++) {
      if (i >= maxPrefix) throw new InvalidMessageError('Invalid message length: length prefix too long')
      const b = typeof buf.get === 'function' ? buf.get(i) : (buf as unknown as Uint8Array)[i] as number
      value += (b & 0x7f) * 2 ** (7 * i)
      if ((b & 0x80) === 0) {
        if (value === 0 || varintLength(value) !== i + 1) throw new InvalidMessageError('Invalid message length: empty frame or a length not in its shortest form')
        return value
      }
    }
    throw new RangeError('length prefix incomplete')
  }
}

/** How many frames from `start` go in one write: at most MAX_FRAMES_PER_WRITE and MAX_BYTES_PER_WRITE, at least one */
function batchLength (frames: Uint8Array[], start: number): number {
  let n = 0
  let bytes = 0
  while (start + n < frames.length && n < MAX_FRAMES_PER_WRITE) {
    const size = (frames[start + n] as Uint8Array).byteLength
    if (n > 0 && bytes + size > MAX_BYTES_PER_WRITE) break
    bytes += size
    n++
  }
  return n
}

/** Frames with their unsigned-varint length prefixes, as one buffer for one stream write */
function encodeFrames (frames: Uint8Array[]): Uint8Array {
  const parts: Uint8Array[] = []
  let length = 0
  for (const frame of frames) {
    const prefix: number[] = []
    let n = frame.byteLength
    while (n >= 0x80) {
      prefix.push((n & 0x7f) | 0x80)
      n >>>= 7
    }
    prefix.push(n)
    parts.push(Uint8Array.from(prefix), frame)
    length += prefix.length + frame.byteLength
  }
  return concat(parts, length)
}

function describe (err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`
  return String(err)
}

/**
 * A stream carrying length-prefixed frames. Writes are coalesced per turn of
 * the event loop (setImmediate, not a microtask): frames decoded from one
 * socket read are handled across many microtasks, so a microtask flush sends
 * them nearly one by one, and each yamux data frame costs several socket
 * writes (and, before yamux-window.ts, a window update back). Flushing once
 * per turn measured ~3x the request rate.
 */
abstract class FramedStream {
  private readonly bytes: ByteStream<Stream>
  private readonly decoder: LengthPrefixedDecoder
  /** The frames of the last chunk read, taken one at a time (a chunk may hold very many) */
  private frames?: Generator<{ subarray: () => Uint8Array }>
  closed = false
  private queue: Uint8Array[] = []
  private flushing = false

  constructor (readonly stream: Stream, protected readonly rpc: RpcService) {
    // several pipelined frames may sit in the read buffer besides a maximal one
    const maxBufferSize = Math.max(4 * 1024 * 1024, rpc.maxMessageBytes * 2 + 16)
    this.bytes = byteStream(stream, { maxBufferSize })
    // what is left of a frame cut by the last chunk, plus a whole next chunk
    this.decoder = new LengthPrefixedDecoder({
      maxDataLength: rpc.maxMessageBytes,
      maxBufferSize: maxBufferSize + rpc.maxMessageBytes + 16,
      lengthDecoder: lengthDecoder(varintLength(rpc.maxMessageBytes)),
      encodingLength: varintLength
    })
    stream.addEventListener('close', (evt) => {
      this.close(evt.error ?? new UnavailableError('Stream closed'))
    }, { once: true })
  }

  /**
   * The next frame, or null at the end of the stream (a frame cut short by
   * the end counts as the end). Whatever has arrived is read at once and
   * split into frames: lpStream's read took the length prefix a byte at a
   * time, an await and, for frames over 127 bytes, an exception each.
   */
  protected async readFrame (): Promise<Uint8Array | null> {
    for (;;) {
      if (this.frames !== undefined) {
        let next: IteratorResult<{ subarray: () => Uint8Array }>
        try {
          next = this.frames.next()
        } catch (err) {
          this.frames = undefined
          // the decoder's own limit on a frame's length
          if (err instanceof InvalidMessageLengthError) throw new InvalidMessageError(`Message length too long: a frame over the ${this.rpc.maxMessageBytes} byte limit`, { cause: err })
          throw err
        }
        if (next.done !== true) return next.value.subarray()
        this.frames = undefined
      }
      const chunk = await this.bytes.read()
      if (chunk === null) return null
      this.frames = this.decoder.decode(chunk)
    }
  }

  /**
   * The next parsed frame; null at the end of the stream; undefined when the
   * stream closed meanwhile or carried a bad frame (logged, and the stream
   * closed with the error).
   */
  protected async nextFrame (what: 'request' | 'response', admit?: (bytes: number) => Promise<void>): Promise<(Record<string, unknown> & { id: number }) | null | undefined> {
    try {
      const buf = await this.readFrame()
      if (buf === null) return null
      if (admit !== undefined) await admit(buf.byteLength)
      return parseFrame(buf)
    } catch (err) {
      if (this.closed) return undefined
      this.rpc.log(`${this.rpc.protocol}: bad ${what} stream from ${this.peer}, closing it: ${describe(err)}`)
      this.close(err)
      return undefined
    }
  }

  /** Queues a frame; all frames queued in this turn of the event loop go out in one write */
  write (frame: Uint8Array): void {
    if (this.closed) return
    this.queue.push(frame)
    if (!this.flushing) {
      this.flushing = true
      setImmediate(() => { void this.flush() })
    }
  }

  private async flush (): Promise<void> {
    try {
      while (this.queue.length > 0 && !this.closed) {
        const n = batchLength(this.queue, 0)
        const batch = n === this.queue.length ? this.queue : this.queue.slice(0, n)
        this.queue = batch === this.queue ? [] : this.queue.slice(n)
        // the bytes are handed to the stream synchronously; awaiting only waits for drain
        await this.bytes.write(encodeFrames(batch))
      }
    } catch (err) {
      this.rpc.log(`${this.rpc.protocol}: write to ${this.peer} failed, closing stream: ${describe(err)}`)
      this.close(err)
    } finally {
      this.flushing = false
    }
  }

  abstract get peer (): string

  /** Marks the stream closed, then ends it: gracefully when `err` is undefined, else with a reset */
  close (err?: unknown): void {
    if (this.closed) return
    this.closed = true
    const queued = this.queue
    this.queue = []
    this.onClose(err)
    const stream = this.stream
    if (stream.status !== 'open') return
    if (err === undefined) {
      // hand frames still queued for the next flush to the stream (synchronously,
      // after any being written) so they go out before the end of the stream
      try {
        for (let i = 0; i < queued.length;) {
          const n = batchLength(queued, i)
          this.bytes.write(encodeFrames(queued.slice(i, i + n))).catch(() => {})
          i += n
        }
      } catch {}
      stream.close({ signal: AbortSignal.timeout(CLOSE_TIMEOUT) }).catch((closeErr: unknown) => {
        stream.abort(closeErr instanceof Error ? closeErr : new Error(String(closeErr)))
      })
    } else {
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }

  protected abstract onClose (err: unknown): void
}

interface Pending {
  resolve: (v: unknown) => void
  reject: (err: Error) => void
}

/** The caller's end: sends requests, resolves them as responses arrive */
class ClientStream extends FramedStream {
  readonly pending = new Map<number, Pending>()

  constructor (stream: Stream, rpc: RpcService, readonly peer: string, private readonly onGone: (s: ClientStream) => void) {
    super(stream, rpc)
    void this.readLoop()
  }

  private async readLoop (): Promise<void> {
    while (!this.closed) {
      const frame = await this.nextFrame('response')
      if (frame === undefined) return
      if (frame === null) {
        if (!this.closed) this.close()
        return
      }
      const p = this.pending.get(frame.id)
      if (p === undefined) continue // answered after it timed out or was aborted
      this.pending.delete(frame.id)
      if (frame.ok === true) {
        p.resolve(frame.body)
      } else if (frame.ok === false && isRecord(frame.error)) {
        p.reject(errorFromJSON(frame.error as { code?: string, message?: string, column?: string }))
      } else {
        const err = new InvalidMessageError('Response frame has neither ok: true nor an error')
        this.rpc.log(`${this.rpc.protocol}: bad response from ${this.peer}, closing stream: ${err.message}`)
        p.reject(err)
        this.close(err)
        return
      }
    }
  }

  protected onClose (err: unknown): void {
    this.onGone(this)
    if (this.pending.size === 0) return
    const reason = err === undefined ? 'closed' : `closed (${describe(err)})`
    for (const p of this.pending.values()) {
      p.reject(new UnavailableError(`${this.rpc.protocol} stream to ${this.peer} ${reason}`, err === undefined ? {} : { cause: err }))
    }
    this.pending.clear()
  }
}

/** The handler's end: runs requests concurrently, writes responses as each finishes */
class ServerStream extends FramedStream {
  private inflight = 0
  private ended = false
  private wakeReader?: () => void

  constructor (stream: Stream, rpc: RpcService, readonly peer: string, private readonly onGone: (s: ServerStream) => void) {
    super(stream, rpc)
    void this.readLoop()
  }

  private async readLoop (): Promise<void> {
    while (!this.closed) {
      if (this.inflight >= this.rpc.maxConcurrentPerStream) {
        await new Promise<void>(resolve => { this.wakeReader = resolve })
        continue
      }
      // What a request costs is held from before its JSON is parsed until it is answered.
      let size = 0
      const frame = await this.nextFrame('request', async bytes => {
        size = bytes
        await this.rpc.budget.acquire(this.peer, bytes)
      })
      if (frame === undefined) {
        if (size > 0) this.rpc.budget.release(this.peer, size)
        return
      }
      if (frame === null) {
        if (this.closed) return
        // the caller is done sending; answer what is running, then close
        this.ended = true
        if (this.inflight === 0) this.close()
        return
      }
      if (this.closed) {
        this.rpc.budget.release(this.peer, size)
        return
      }
      this.inflight++
      void this.run(frame.id, frame.body, size)
    }
  }

  private async run (id: number, body: unknown, size: number): Promise<void> {
    let out: Uint8Array
    try {
      const result = await this.rpc.handler(body, this.peer)
      out = encoder.encode(JSON.stringify({ id, ok: true, body: result }))
    } catch (err) {
      if (!(err instanceof NtsoekheError)) this.rpc.log(`${this.rpc.protocol}: handler failed for a request from ${this.peer}: ${describe(err)}`)
      out = encoder.encode(JSON.stringify({ id, ok: false, error: errorToWire(err) }))
    }
    if (out.byteLength > this.rpc.maxMessageBytes) {
      const err = new NtsoekheError('TOO_LARGE', `Response of ${out.byteLength} bytes exceeds the ${this.rpc.maxMessageBytes} byte limit`)
      out = encoder.encode(JSON.stringify({ id, ok: false, error: err.toJSON() }))
    }
    this.write(out)
    this.rpc.budget.release(this.peer, size)
    this.inflight--
    const wake = this.wakeReader
    if (wake !== undefined) {
      this.wakeReader = undefined
      wake()
    }
    if (this.ended && this.inflight === 0) this.close()
  }

  protected onClose (): void {
    this.onGone(this)
    const wake = this.wakeReader
    this.wakeReader = undefined
    wake?.()
  }
}

interface PeerPool {
  streams: ClientStream[]
  next: number
  dialing?: Promise<ClientStream>
  /** After a failed dial, no extra stream is opened in the background before this time (ms) */
  growAfter: number
}

/** How long to wait before trying again to grow a peer's pool after a failed dial */
const GROW_BACKOFF = 1_000

export class RpcService {
  readonly protocol: string
  readonly handler: RpcHandler
  readonly maxMessageBytes: number
  readonly timeout: number
  readonly streamsPerPeer: number
  readonly maxConcurrentPerStream: number
  readonly log: (msg: string) => void
  readonly budget: ByteBudget
  readonly maxInboundStreams: number
  private readonly accept?: (peerId: string) => boolean

  private readonly node: Libp2p
  private readonly pools = new Map<string, PeerPool>()
  private readonly inbound = new Set<ServerStream>()
  private stopController = new AbortController()
  private started = false
  private stopped = false
  private nextId = 1

  constructor (components: RpcComponents, init: RpcInit) {
    this.node = components.node
    this.protocol = init.protocol
    this.handler = init.handler
    this.maxMessageBytes = init.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
    this.timeout = init.timeout ?? DEFAULT_RPC_TIMEOUT
    this.streamsPerPeer = Math.max(1, init.streamsPerPeer ?? DEFAULT_STREAMS_PER_PEER)
    this.maxConcurrentPerStream = Math.max(1, init.maxConcurrentPerStream ?? DEFAULT_MAX_CONCURRENT_PER_STREAM)
    this.budget = components.budget ?? new ByteBudget({ perPeer: 2 * this.maxMessageBytes, total: 8 * this.maxMessageBytes })
    this.maxInboundStreams = init.maxInboundStreams ?? DEFAULT_MAX_INBOUND_STREAMS
    if (init.accept !== undefined) this.accept = init.accept
    setMaxListeners(Infinity, this.stopController.signal)
    if (components.logger !== undefined) {
      this.log = components.logger
    } else {
      const logger = components.node.logger.forComponent('ntsoekhe:rpc')
      this.log = (msg: string) => { logger(msg) }
    }
  }

  /** Registers the protocol handler. Requests can be sent without it */
  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    this.stopped = false
    this.stopController = new AbortController()
    setMaxListeners(Infinity, this.stopController.signal)
    await this.node.handle(this.protocol, (stream: Stream, connection: Connection) => {
      this.onStream(stream, connection)
    }, { maxInboundStreams: this.maxInboundStreams, maxOutboundStreams: 256 })
  }

  /** Unregisters the handler and closes every stream; pending requests fail with UnavailableError */
  async stop (): Promise<void> {
    this.stopped = true
    this.stopController.abort(new UnavailableError('RPC service stopped'))
    if (this.started) {
      this.started = false
      await this.node.unhandle(this.protocol).catch((err: unknown) => {
        this.log(`${this.protocol}: unhandle failed: ${describe(err)}`)
      })
    }
    for (const pool of this.pools.values()) {
      for (const s of [...pool.streams]) s.close()
    }
    this.pools.clear()
    for (const s of [...this.inbound]) s.close()
    this.inbound.clear()
  }

  stats (): RpcStats {
    let outboundStreams = 0
    let pending = 0
    for (const pool of this.pools.values()) {
      for (const s of pool.streams) {
        outboundStreams++
        pending += s.pending.size
      }
    }
    return { outboundStreams, inboundStreams: this.inbound.size, pending }
  }

  /**
   * Sends `msg` to `peerId` and resolves with the handler's answer. Rejects
   * with the handler's error (same code), `TimeoutError`, `UnavailableError`
   * (no stream, or the stream closed), or TOO_LARGE/INVALID_MESSAGE for a
   * message that cannot be sent. A request to this node's own id runs the
   * handler directly (with the same JSON round trip).
   */
  async request (peerId: string, msg: unknown, options: RpcRequestOptions = {}): Promise<unknown> {
    if (this.stopped) throw new UnavailableError('RPC service stopped')
    options.signal?.throwIfAborted()
    const id = this.nextId++
    if (this.nextId >= Number.MAX_SAFE_INTEGER) this.nextId = 1
    let frame: Uint8Array
    try {
      frame = encoder.encode(JSON.stringify({ id, body: msg }))
    } catch (err) {
      throw new InvalidMessageError(`Request cannot be encoded as JSON: ${describe(err)}`, { cause: err })
    }
    if (frame.byteLength > this.maxMessageBytes) {
      throw new NtsoekheError('TOO_LARGE', `Request of ${frame.byteLength} bytes exceeds the ${this.maxMessageBytes} byte limit`)
    }
    if (peerId === this.node.peerId.toString()) return await this.requestSelf(peerId, frame, options)

    const timeout = options.timeout ?? this.timeout
    const signal = options.signal
    return await new Promise<unknown>((resolve, reject) => {
      let settled = false
      let stream: ClientStream | undefined
      const finish = (fn: () => void): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        stream?.pending.delete(id)
        fn()
      }
      const timer = setTimeout(() => {
        finish(() => { reject(new TimeoutError(`${this.protocol} request to ${peerId} timed out after ${timeout} ms`)) })
      }, timeout)
      const onAbort = (): void => {
        finish(() => { reject(abortError(signal?.reason)) })
      }
      signal?.addEventListener('abort', onAbort, { once: true })

      const send = (s: ClientStream): void => {
        if (settled) return
        if (s.closed) {
          finish(() => { reject(new UnavailableError(`${this.protocol} stream to ${peerId} closed`)) })
          return
        }
        stream = s
        s.pending.set(id, {
          resolve: (v) => { finish(() => { resolve(v) }) },
          reject: (e) => { finish(() => { reject(e) }) }
        })
        s.write(frame)
      }

      let ready: ClientStream | undefined
      try {
        ready = this.pickStream(peerId)
      } catch (err) {
        finish(() => { reject(err) })
        return
      }
      if (ready !== undefined) {
        send(ready)
      } else {
        this.openStream(peerId).then(send, (err: unknown) => {
          finish(() => { reject(err) })
        })
      }
    })
  }

  /** An open stream to the peer (round-robin), or undefined when one must be opened first */
  private pickStream (peerId: string): ClientStream | undefined {
    const pool = this.pools.get(peerId)
    if (pool === undefined || pool.streams.length === 0) return undefined
    if (pool.dialing === undefined && pool.streams.length < this.streamsPerPeer && Date.now() >= pool.growAfter) {
      // grow the pool in the background; meanwhile use what is open
      this.openStream(peerId).catch(() => {})
    }
    pool.next = (pool.next + 1) % pool.streams.length
    return pool.streams[pool.next]
  }

  /** Opens one more stream to the peer, sharing a dial already under way */
  private async openStream (peerId: string): Promise<ClientStream> {
    let pool = this.pools.get(peerId)
    if (pool === undefined) {
      pool = { streams: [], next: 0, growAfter: 0 }
      this.pools.set(peerId, pool)
    }
    if (pool.dialing !== undefined) return await pool.dialing
    let target: PeerId
    try {
      target = peerIdFromString(peerId)
    } catch (err) {
      throw new ValidationError(`Invalid peer id ${peerId}`, { cause: err })
    }
    const p = this.dial(peerId, target, pool)
    pool.dialing = p
    const clear = (): void => { if (pool.dialing === p) pool.dialing = undefined }
    p.then(clear, clear)
    return await p
  }

  private async dial (peerId: string, target: PeerId, pool: PeerPool): Promise<ClientStream> {
    let stream: Stream
    try {
      stream = await this.node.dialProtocol(target, this.protocol, {
        signal: AbortSignal.any([AbortSignal.timeout(this.timeout), this.stopController.signal])
      })
    } catch (err) {
      pool.growAfter = Date.now() + GROW_BACKOFF
      this.log(`${this.protocol}: cannot open a stream to ${peerId}: ${describe(err)}`)
      if (err instanceof NtsoekheError) throw err
      throw new UnavailableError(`Cannot reach ${peerId} on ${this.protocol}: ${describe(err)}`, { cause: err })
    }
    if (this.stopped) {
      stream.abort(new UnavailableError('RPC service stopped'))
      throw new UnavailableError('RPC service stopped')
    }
    const cs = new ClientStream(stream, this, peerId, (gone) => {
      const i = pool.streams.indexOf(gone)
      if (i >= 0) pool.streams.splice(i, 1)
    })
    if (!cs.closed) pool.streams.push(cs)
    return cs
  }

  private onStream (stream: Stream, connection: Connection): void {
    if (this.stopped) {
      stream.abort(new UnavailableError('RPC service stopped'))
      return
    }
    const peer = connection.remotePeer.toString()
    if (this.accept !== undefined && !this.accept(peer)) {
      this.log(`${this.protocol}: refused a stream from ${peer}: not accepted on this protocol`)
      stream.abort(new NtsoekheError('FORBIDDEN', `${peer} may not use ${this.protocol}`))
      return
    }
    const s = new ServerStream(stream, this, connection.remotePeer.toString(), (gone) => {
      this.inbound.delete(gone)
    })
    if (!s.closed) this.inbound.add(s)
  }

  private async requestSelf (peerId: string, frame: Uint8Array, options: RpcRequestOptions): Promise<unknown> {
    const timeout = options.timeout ?? this.timeout
    const { body } = parseFrame(frame)
    const run = (async () => {
      try {
        const result = await this.handler(body, peerId)
        const out = JSON.stringify(result)
        return out === undefined ? undefined : JSON.parse(out) as unknown
      } catch (err) {
        throw errorFromJSON(errorToWire(err))
      }
    })()
    let timer: ReturnType<typeof setTimeout> | undefined
    let onAbort: (() => void) | undefined
    try {
      return await Promise.race([
        run,
        new Promise<never>((_resolve, reject) => {
          timer = setTimeout(() => { reject(new TimeoutError(`${this.protocol} request to ${peerId} timed out after ${timeout} ms`)) }, timeout)
          onAbort = () => { reject(abortError(options.signal?.reason)) }
          options.signal?.addEventListener('abort', onAbort, { once: true })
        })
      ])
    } finally {
      clearTimeout(timer)
      if (onAbort !== undefined) options.signal?.removeEventListener('abort', onAbort)
    }
  }
}

function abortError (reason: unknown): Error {
  if (reason instanceof NtsoekheError) return reason
  if ((reason as Error | undefined)?.name === 'TimeoutError') return new TimeoutError('Request timed out', { cause: reason })
  return new UnavailableError('Request aborted', { cause: reason })
}
