import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import type { SingleKadDHT } from '@libp2p/kad-dht'
import { NtsoekheError, NotFoundError } from '../../src/errors/index.js'
import { IDENTITY_FILE, loadOrCreateIdentity, peerIdFromKey } from '../../src/p2p/identity.js'
import { createNode, generatePnetKey, type NodeInit, type NtsoekheNode } from '../../src/p2p/node.js'
import { MAX_JSON_CONTAINERS, RpcService } from '../../src/p2p/rpc.js'
import { waitFor } from '../helpers/wait.js'

const LOOPBACK = ['/ip4/127.0.0.1/tcp/0']

/** Unsigned LEB128, the length prefix lpStream uses */
function varint (n: number): number[] {
  const out: number[] = []
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80)
    n = Math.floor(n / 128)
  }
  out.push(n)
  return out
}

async function newNode (init: NodeInit = {}): Promise<NtsoekheNode> {
  return await createNode({ privateKey: await generateKeyPair('Ed25519') }, { listen: LOOPBACK, ...init })
}

function addrOf (node: NtsoekheNode): string {
  const addr = node.getMultiaddrs().find(a => a.toString().startsWith('/ip4/127.0.0.1/'))
  if (addr === undefined) throw new Error('node has no loopback address')
  return addr.toString()
}

function routingTableSize (node: NtsoekheNode): number {
  return (node.services.dht as unknown as SingleKadDHT).routingTable.size
}

describe('identity', () => {
  let home = ''
  afterEach(async () => {
    if (home !== '') await rm(home, { recursive: true, force: true })
    home = ''
  })

  it('creates an Ed25519 key once (mode 0600) and loads the same one after', async () => {
    home = await mkdtemp(join(tmpdir(), 'ntsoekhe-id-'))
    const first = await loadOrCreateIdentity(home)
    const second = await loadOrCreateIdentity(home)
    expect(first.type).toBe('Ed25519')
    expect(peerIdFromKey(second)).toBe(peerIdFromKey(first))
    expect(peerIdFromKey(first)).toBe(peerIdFromPrivateKey(first).toString())
    expect((await stat(join(home, IDENTITY_FILE))).mode & 0o777).toBe(0o600)
  })

  it('refuses a corrupt key file, naming it, and leaves it in place', async () => {
    home = await mkdtemp(join(tmpdir(), 'ntsoekhe-id-'))
    const path = join(home, IDENTITY_FILE)
    await writeFile(path, 'not a key')
    await expect(loadOrCreateIdentity(home)).rejects.toThrow(path)
    expect(await readFile(path, 'utf8')).toBe('not a key')
  })
})

describe('p2p nodes', () => {
  const nodes: NtsoekheNode[] = []
  const services: RpcService[] = []
  let a: NtsoekheNode
  let b: NtsoekheNode
  let c: NtsoekheNode
  const logs: string[] = []
  const PROTO = '/ntsoekhe-test/rpc/1.0.0'

  const handler = async (msg: unknown, from: string): Promise<unknown> => {
    const m = msg as { op: string, v?: unknown, ms?: number }
    switch (m.op) {
      case 'echo': return { v: m.v, from }
      case 'not-found': throw new NotFoundError('no such row', { column: 'patient_id' })
      case 'boom': throw new Error('kaboom')
      case 'sleep':
        await new Promise(resolve => setTimeout(resolve, m.ms ?? 0))
        return 'slept'
      default: throw new NtsoekheError('INVALID', `unknown op ${m.op}`)
    }
  }

  function rpc (node: NtsoekheNode, protocol = PROTO, init: { timeout?: number, maxMessageBytes?: number } = {}): RpcService {
    const s = new RpcService({ node, logger: msg => { logs.push(msg) } }, { protocol, handler, ...init })
    services.push(s)
    return s
  }

  beforeAll(async () => {
    a = await newNode()
    nodes.push(a)
    b = await newNode({ bootstrap: [addrOf(a)] })
    nodes.push(b)
    c = await newNode({ bootstrap: [addrOf(a)] })
    nodes.push(c)
  })

  afterAll(async () => {
    await Promise.all(services.map(async s => { await s.stop() }))
    await Promise.all(nodes.map(async n => { await n.stop() }))
  })

  it('bootstraps and fills the DHT routing tables on loopback', async () => {
    expect(a.getConnections(b.peerId).length).toBeGreaterThan(0)
    expect(a.getProtocols()).toContain('/ntsoekhe/kad/1.0.0')
    await waitFor('A\'s DHT routing table to hold B and C', () => routingTableSize(a) >= 2)
    await waitFor('B\'s and C\'s DHT routing tables to hold A', () => routingTableSize(b) >= 1 && routingTableSize(c) >= 1)
    // B never dialled C; the DHT (through A) tells B where C is
    const found = await b.peerRouting.findPeer(c.peerId, { signal: AbortSignal.timeout(10_000) })
    expect(found.multiaddrs.map(String)).toContain(addrOf(c).replace(/\/p2p\/.*$/, ''))
  })

  it('does not fail start when a bootstrap peer is unreachable', async () => {
    const ghost = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
    const seen: string[] = []
    const n = await newNode({ bootstrap: [`/ip4/127.0.0.1/tcp/1/p2p/${ghost}`], dialTimeout: 2_000, log: msg => { seen.push(msg) } })
    nodes.push(n)
    expect(n.status).toBe('started')
    expect(seen.join('\n')).toContain(ghost)
    await expect(newNode({ bootstrap: ['/ip4/127.0.0.1/tcp/1'] })).rejects.toThrow(/\/p2p\//)
  })

  it('answers requests both ways, telling the handler who asked', async () => {
    const ra = rpc(a)
    const rb = rpc(b)
    await ra.start()
    await rb.start()
    expect(await ra.request(b.peerId.toString(), { op: 'echo', v: [1, 'x'] })).toEqual({ v: [1, 'x'], from: a.peerId.toString() })
    expect(await rb.request(a.peerId.toString(), { op: 'echo', v: { k: null } })).toEqual({ v: { k: null }, from: b.peerId.toString() })
    // a request to this node's own id runs the handler locally
    expect(await ra.request(a.peerId.toString(), { op: 'echo', v: 1 })).toEqual({ v: 1, from: a.peerId.toString() })
    // frames far larger than one read (split across many chunks), mixed with small ones on the same streams
    const big = 'x'.repeat(700_000)
    const answers = await Promise.all([0, 1, 2, 3].map(async i => await ra.request(b.peerId.toString(), { op: 'echo', v: i % 2 === 0 ? big + String(i) : i })))
    expect(answers.map(r => (r as { v: unknown }).v)).toEqual([big + '0', 1, big + '2', 3])
  })

  it('pipelines 2,000 concurrent requests over at most streamsPerPeer streams, sharing the first dial', async () => {
    const proto = '/ntsoekhe-test/burst/1.0.0'
    const ra = rpc(a, proto)
    const rb = rpc(b, proto)
    await rb.start()
    const dials = vi.spyOn(a, 'dialProtocol')
    try {
      const results = await Promise.all(Array.from({ length: 2_000 }, async (_, i) => await ra.request(b.peerId.toString(), { op: 'echo', v: i })))
      results.forEach((r, i) => { expect(r).toEqual({ v: i, from: a.peerId.toString() }) })
      const dialCount = dials.mock.calls.filter(call => call[1] === proto).length
      expect(dialCount).toBeGreaterThanOrEqual(1)
      expect(dialCount).toBeLessThanOrEqual(ra.streamsPerPeer)
    } finally {
      dials.mockRestore()
    }
    const open = a.getConnections(b.peerId).flatMap(conn => conn.streams).filter(s => s.protocol === proto && s.direction === 'outbound')
    expect(open.length).toBeGreaterThanOrEqual(1)
    expect(open.length).toBeLessThanOrEqual(ra.streamsPerPeer)
    expect(ra.stats()).toMatchObject({ pending: 0 })
    expect(ra.stats().outboundStreams).toBeLessThanOrEqual(ra.streamsPerPeer)
  })

  it('sends handler errors back with their code', async () => {
    const ra = rpc(a, '/ntsoekhe-test/errors/1.0.0')
    const rb = rpc(b, '/ntsoekhe-test/errors/1.0.0')
    await rb.start()
    const err = await ra.request(b.peerId.toString(), { op: 'not-found' }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(NtsoekheError)
    expect(err).toMatchObject({ code: 'NOT_FOUND', message: 'no such row', column: 'patient_id' })
    await expect(ra.request(b.peerId.toString(), { op: 'boom' })).rejects.toMatchObject({ code: 'INTERNAL' })
    // the stream survives handler errors
    expect(await ra.request(b.peerId.toString(), { op: 'echo', v: 2 })).toMatchObject({ v: 2 })
  })

  it('sends yamux window updates only once half the window is used, and still carries 4 MiB intact', async () => {
    const proto = '/ntsoekhe-test/window/1.0.0'
    let updates = 0
    const received: Uint8Array[] = []
    let finished = false
    await b.handle(proto, (stream) => {
      // count the window-update frames the receiving end sends (type 1, no flags: not SYN/ACK/FIN/RST)
      const s = stream as unknown as { sendFrame: (header: { type: number, flag: number }, data?: unknown) => boolean }
      const send = s.sendFrame
      s.sendFrame = (header, data) => {
        if (header.type === 1 && header.flag === 0) updates++
        return send(header, data)
      }
      void (async () => {
        for await (const chunk of stream) received.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
        finished = true
      })()
    })
    try {
      const raw = await a.dialProtocol(b.peerId, proto)
      const sent: Uint8Array[] = []
      const write = async (bytes: Uint8Array): Promise<void> => {
        sent.push(bytes)
        if (!raw.send(bytes)) await raw.onDrain({ signal: AbortSignal.timeout(5_000) })
      }
      // 200 small messages, each in its own turn: the stock stream answered every one with an update
      for (let i = 0; i < 200; i++) {
        await write(new TextEncoder().encode(`message ${i} `.padEnd(100, '.')))
        await new Promise(resolve => setImmediate(resolve))
      }
      const smallUpdates = updates
      // then 4 MiB, many times the 256 KiB initial window: the sender must never stall for an update
      for (let i = 0; i < 64; i++) await write(new Uint8Array(64 * 1024).fill(i))
      await raw.close({ signal: AbortSignal.timeout(5_000) })
      await waitFor('the receiver to read 4 MiB to the end of the stream', () => finished)
      expect(Buffer.concat(received).equals(Buffer.concat(sent))).toBe(true)
      expect(smallUpdates).toBe(0)
      // 4 MiB through a window of 256 KiB or more, refilled at half: at most 32 updates
      expect(updates).toBeGreaterThan(0)
      expect(updates).toBeLessThanOrEqual(32)
    } finally {
      await b.unhandle(proto)
    }
  })

  it('closes only the stream that carries a malformed frame, and keeps serving', async () => {
    const proto = '/ntsoekhe-test/garbage/1.0.0'
    const ra = rpc(a, proto)
    const rb = rpc(b, proto, { maxMessageBytes: 1024 })
    await rb.start()
    expect(await ra.request(b.peerId.toString(), { op: 'echo', v: 'before' })).toMatchObject({ v: 'before' })
    const slow = ra.request(b.peerId.toString(), { op: 'sleep', ms: 300 })

    const enc = new TextEncoder()
    const frames: Array<[string, Uint8Array]> = [
      ['non-JSON frame', new Uint8Array([...varint(8), ...enc.encode('not json')])],
      ['frame without an id', new Uint8Array([...varint(11), ...enc.encode('{"body":42}')])],
      ['oversized frame', new Uint8Array([...varint(1025), 1, 2, 3])],
      ['raw garbage bytes', new Uint8Array([0x07, 0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x10])],
      ['endless length prefix', new Uint8Array(new Array(12).fill(0xff))],
      ['empty frame', new Uint8Array([0x00])],
      ['length not in its shortest form', new Uint8Array([0x88, 0x00, ...enc.encode('{"id":1}')])]
    ]
    for (const [what, bytes] of frames) {
      const raw = await a.dialProtocol(b.peerId, proto)
      raw.send(bytes)
      await expect(lpStream(raw).read({ signal: AbortSignal.timeout(5_000) }), what).rejects.toThrow()
      await waitFor(`the ${what} stream to be closed`, () => raw.status !== 'open', 5_000)
    }
    const bad = logs.filter(l => l.includes(proto) && l.includes('bad request stream'))
    expect(bad.some(l => l.includes('Frame is not JSON'))).toBe(true)
    expect(bad.some(l => l.includes('Frame has no numeric id'))).toBe(true)
    expect(bad.some(l => l.includes('Message length too long'))).toBe(true)
    expect(bad.some(l => l.includes('length prefix too long'))).toBe(true)
    expect(bad.filter(l => l.includes('shortest form')).length).toBe(2)
    // the pooled stream and its in-flight request were not affected
    expect(await slow).toBe('slept')
    expect(await ra.request(b.peerId.toString(), { op: 'echo', v: 'after' })).toMatchObject({ v: 'after' })
    expect(rb.stats().inboundStreams).toBeGreaterThanOrEqual(1)
  })

  it('holds inbound request bytes per peer within the budget: a stream whose next frame does not fit is not read until earlier ones are answered', async () => {
    const proto = '/ntsoekhe-test/budget/1.0.0'
    const ra = rpc(a, proto, { maxMessageBytes: 1024 * 1024 })
    let running = 0
    let most = 0
    const release: Array<() => void> = []
    const blocking = new RpcService({ node: b, logger: msg => { logs.push(msg) } }, {
      protocol: proto,
      maxMessageBytes: 1024 * 1024,
      handler: async () => {
        running++
        most = Math.max(most, running)
        await new Promise<void>(resolve => { release.push(resolve) })
        running--
        return 'done'
      }
    })
    services.push(blocking)
    await blocking.start()
    // 2 MiB per peer: two 700 kB requests fit, a third must wait for one of them.
    expect(blocking.budget.perPeer).toBe(2 * 1024 * 1024)
    const big = 'x'.repeat(700_000)
    const answers = Array.from({ length: 6 }, async () => await ra.request(b.peerId.toString(), { v: big }, { timeout: 20_000 }))
    await waitFor('two requests to reach the handler', () => running === 2, 10_000)
    // the others are read only as budget frees up
    await new Promise(resolve => setTimeout(resolve, 200))
    expect(running).toBe(2)
    expect(blocking.budget.held(a.peerId.toString())).toBeLessThanOrEqual(blocking.budget.perPeer)
    let answered = 0
    while (answered < 6) {
      await waitFor('a blocked request to reach the handler', () => release.length > 0, 10_000)
      release.shift()?.()
      answered++
    }
    expect(await Promise.all(answers)).toEqual(Array(6).fill('done'))
    expect(most).toBe(2)
    expect(blocking.budget.held()).toBe(0)
  })

  it('refuses, unparsed, a frame of more objects than any message holds, and keeps serving', async () => {
    const proto = '/ntsoekhe-test/containers/1.0.0'
    const ra = rpc(a, proto)
    const rb = rpc(b, proto)
    await rb.start()
    // 8 MiB of [{},{},...] parses into hundreds of MB of heap: it is counted on the bytes and refused.
    const body = `{"id":1,"body":[${'{},'.repeat(MAX_JSON_CONTAINERS)}{}]}`
    const bytes = new TextEncoder().encode(body)
    const raw = await a.dialProtocol(b.peerId, proto)
    raw.send(new Uint8Array([...varint(bytes.byteLength)]))
    for (let i = 0; i < bytes.byteLength; i += 64 * 1024) raw.send(bytes.subarray(i, i + 64 * 1024))
    await waitFor('the stream with too many objects to be closed', () => raw.status !== 'open', 10_000)
    expect(logs.some(l => l.includes(proto) && l.includes(`more than ${MAX_JSON_CONTAINERS} JSON objects`))).toBe(true)
    // a large frame of real data passes
    const rows = Array.from({ length: 20_000 }, (_, i) => ({ id: i, name: `row ${i}` }))
    expect(await ra.request(b.peerId.toString(), { op: 'echo', v: rows })).toMatchObject({ v: rows })
  })

  it('rejects with TimeoutError when the handler is too slow, and the stream stays usable', async () => {
    const ra = rpc(a, '/ntsoekhe-test/timeout/1.0.0')
    const rb = rpc(b, '/ntsoekhe-test/timeout/1.0.0')
    await rb.start()
    const err = await ra.request(b.peerId.toString(), { op: 'sleep', ms: 1_000 }, { timeout: 100 }).catch((e: unknown) => e)
    expect(err).toMatchObject({ name: 'TimeoutError', code: 'TIMEOUT' })
    await expect(ra.request(b.peerId.toString(), { op: 'sleep', ms: 1_000 }, { signal: AbortSignal.timeout(100) }))
      .rejects.toMatchObject({ name: 'TimeoutError' })
    expect(await ra.request(b.peerId.toString(), { op: 'echo', v: 3 })).toMatchObject({ v: 3 })
  })

  it('rejects with UnavailableError when the peer does not speak the protocol or stops', async () => {
    const ra = rpc(a, '/ntsoekhe-test/absent/1.0.0')
    await expect(ra.request(c.peerId.toString(), { op: 'echo' })).rejects.toMatchObject({ code: 'UNAVAILABLE' })
    const rc = rpc(c, '/ntsoekhe-test/absent/1.0.0')
    await rc.start()
    const slow = ra.request(c.peerId.toString(), { op: 'sleep', ms: 2_000 })
    await waitFor('the request to reach C', () => rc.stats().inboundStreams > 0)
    await rc.stop()
    await expect(slow).rejects.toMatchObject({ code: 'UNAVAILABLE' })
    await waitFor('A to drop its closed streams to C', () => ra.stats().outboundStreams === 0)
    // the caller reopens a stream once the peer serves the protocol again
    const rc2 = rpc(c, '/ntsoekhe-test/absent/1.0.0')
    await rc2.start()
    expect(await ra.request(c.peerId.toString(), { op: 'echo', v: 5 })).toMatchObject({ v: 5 })
  })

  it('rejects a request too large to send without closing the stream', async () => {
    const ra = rpc(a, '/ntsoekhe-test/large/1.0.0', { maxMessageBytes: 1024 })
    const rb = rpc(b, '/ntsoekhe-test/large/1.0.0')
    await rb.start()
    await expect(ra.request(b.peerId.toString(), { op: 'echo', v: 'x'.repeat(2_000) })).rejects.toMatchObject({ code: 'TOO_LARGE' })
    expect(await ra.request(b.peerId.toString(), { op: 'echo', v: 4 })).toMatchObject({ v: 4 })
  })

  it.runIf(process.env.RPC_BENCH !== undefined)('measures pipelined RPC round trips per second (print only)', async () => {
    const proto = '/ntsoekhe-test/bench/1.0.0'
    const ra = rpc(a, proto)
    const rb = rpc(b, proto)
    await rb.start()
    const peer = b.peerId.toString()
    const concurrency = 64
    const run = async (ms: number): Promise<number> => {
      let done = 0
      const end = Date.now() + ms
      await Promise.all(Array.from({ length: concurrency }, async () => {
        while (Date.now() < end) {
          await ra.request(peer, { op: 'echo', v: done })
          done++
        }
      }))
      return done
    }
    await run(1_000) // warm up
    const ms = 5_000
    const done = await run(ms)
    console.log(`RPC: ${concurrency} concurrent, ${done} round trips in ${ms} ms = ${Math.round(done / (ms / 1000))}/s`)
  }, 30_000)
})

describe('private network', () => {
  const nodes: NtsoekheNode[] = []
  afterAll(async () => {
    await Promise.all(nodes.map(async n => { await n.stop() }))
  })

  it('connects nodes sharing the pnet key and refuses a node with another key', async () => {
    const key = generatePnetKey()
    expect(new TextDecoder().decode(key)).toMatch(/^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}$/)
    const p1 = await newNode({ pnetKey: key, dialTimeout: 3_000 })
    nodes.push(p1)
    const p2 = await newNode({ pnetKey: key, dialTimeout: 3_000, bootstrap: [addrOf(p1)] })
    nodes.push(p2)
    const outsider = await newNode({ pnetKey: generatePnetKey(), dialTimeout: 3_000 })
    nodes.push(outsider)
    const open = await newNode({ dialTimeout: 3_000 })
    nodes.push(open)

    expect(p2.getConnections(p1.peerId).length).toBeGreaterThan(0)
    expect(await p2.services.ping.ping(p1.peerId)).toBeGreaterThanOrEqual(0)
    const { multiaddr } = await import('@multiformats/multiaddr')
    await expect(outsider.dial(multiaddr(addrOf(p1)))).rejects.toThrow()
    await expect(open.dial(multiaddr(addrOf(p1)))).rejects.toThrow()
    expect(outsider.getConnections(p1.peerId)).toHaveLength(0)
    expect(p1.getConnections(outsider.peerId)).toHaveLength(0)
  })

  it('says in one clear line, on both sides, that a peer with another key or none cannot connect', async () => {
    const ours: string[] = []
    const theirs: string[] = []
    const member = await newNode({ pnetKey: generatePnetKey(), dialTimeout: 3_000, log: m => { ours.push(m) } })
    const keyless = await newNode({ dialTimeout: 3_000, log: m => { theirs.push(m) } })
    try {
      await expect(keyless.dial(member.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(3_000) })).rejects.toThrow()
      await waitFor('the member to report the connection', () => ours.length > 0, 10_000)
      await waitFor('the keyless node to report the connection', () => theirs.length > 0, 10_000)
      expect(ours).toEqual([expect.stringMatching(/^connection from \/ip4\/127\.0\.0\.1\/tcp\/\d+ closed before its handshake completed: that machine does not hold this network's key/)])
      expect(theirs).toEqual([expect.stringMatching(/^connection to \/ip4\/127\.0\.0\.1\/tcp\/\d+.* closed before its handshake completed: this node runs an open network/)])
      expect(member.getPeers()).toHaveLength(0)
      expect(keyless.getPeers()).toHaveLength(0)
    } finally {
      await member.stop()
      await keyless.stop()
    }
  })

  it('rejects a malformed pnet key', async () => {
    await expect(newNode({ pnetKey: new TextEncoder().encode('nope') })).rejects.toThrow(/pnet/)
  })
})

describe('coalesced TCP writes', () => {
  it('sends everything written in one synchronous run as one corked batch, and keeps the inner result', async () => {
    const { coalesceWrites } = await import('../../src/p2p/coalesce.js')
    const events: string[] = []
    const socket = { destroyed: false, cork: () => events.push('cork'), uncork: () => events.push('uncork') }
    const conn: any = { socket, sendData (data: string) { events.push(`send ${data}`); return { sentBytes: data.length, canSendMore: data !== 'full' } } }
    coalesceWrites(conn)
    expect(conn.sendData('a')).toEqual({ sentBytes: 1, canSendMore: true })
    conn.sendData('b')
    expect(conn.sendData('full')).toEqual({ sentBytes: 4, canSendMore: false })
    expect(events).toEqual(['cork', 'send a', 'send b', 'send full'])
    // Uncorked on the next tick, not a whole event-loop turn later.
    await new Promise(resolve => { process.nextTick(resolve) })
    expect(events.at(-1)).toBe('uncork')
    conn.sendData('c')
    await new Promise(resolve => setImmediate(resolve))
    expect(events.slice(4)).toEqual(['uncork', 'cork', 'send c', 'uncork'])
    // A connection without a socket (not TCP) is left alone.
    const plain: any = { sendData: () => 'x' }
    const before = plain.sendData
    coalesceWrites(plain)
    expect(plain.sendData).toBe(before)
  })
})

describe('length-prefixed decoding (the Noise frame splitter)', () => {
  it('yields the same frames as before without throwing when a chunk is used up', async () => {
    const { LengthPrefixedDecoder, InvalidMessageLengthError } = await import('@libp2p/utils')
    const { installLengthPrefixedDecoderFix } = await import('../../src/p2p/lp-decoder.js')
    installLengthPrefixedDecoderFix()
    installLengthPrefixedDecoderFix()
    let throws = 0
    const u16 = (data: any): number => {
      if (data.length < 2) { throws++; throw new RangeError('Could not decode int16BE') }
      return data.getUint16(0)
    }
    const make = (init = {}): InstanceType<typeof LengthPrefixedDecoder> => new LengthPrefixedDecoder({ lengthDecoder: u16, encodingLength: () => 2, ...init })
    const frame = (n: number, fill: number): Uint8Array => Uint8Array.from([n >> 8, n & 0xff, ...new Array(n).fill(fill)])
    const stream = Uint8Array.from([...frame(3, 1), ...frame(0, 9), ...frame(300, 2), ...frame(1, 3)])
    // Whole, and split at every byte: the same frames (an empty frame yields nothing), in order.
    for (let cut = 0; cut <= stream.length; cut++) {
      const d = make()
      const out = [...d.decode(stream.subarray(0, cut)), ...d.decode(stream.subarray(cut))].map(f => f.subarray())
      expect(out.map(f => [f.length, f[0]]), `cut at ${cut}`).toEqual([[3, 1], [300, 2], [1, 3]])
    }
    // A chunk that ends exactly on a frame boundary costs no exception; half a length prefix still waits.
    throws = 0
    const d = make()
    expect([...d.decode(frame(5, 7))]).toHaveLength(1)
    expect(throws).toBe(0)
    expect([...d.decode(Uint8Array.from([0]))]).toHaveLength(0)
    expect(throws).toBe(1)
    expect([...d.decode(Uint8Array.from([2, 4, 4]))].map(f => f.subarray())).toEqual([Uint8Array.from([4, 4])])
    // The limits hold as before.
    expect(() => [...make({ maxDataLength: 10 }).decode(frame(11, 0))]).toThrow(InvalidMessageLengthError)
    expect(() => [...make({ maxBufferSize: 8 }).decode(frame(20, 0))]).toThrow(/Buffer length limit exceeded/)
  })
})
