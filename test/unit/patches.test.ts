/**
 * The runtime patches of dependency internals (src/p2p/lp-decoder.ts,
 * yamux-window.ts, coalesce.ts) are written against one exact version each.
 * These tests fail when that version is not the one installed or pinned, or
 * when the code a patch replaces or leans on has changed, so that a bump of
 * the dependency makes someone read the new code before moving the pin.
 */
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { Socket } from 'node:net'
import { join } from 'node:path'
import type { MultiaddrConnection, Upgrader } from '@libp2p/interface'
import { LengthPrefixedDecoder } from '@libp2p/utils'
import { StreamState, YamuxStream } from '@libp2p/yamux/stream'
import { multiaddr } from '@multiformats/multiaddr'
import { describe, expect, it } from 'vitest'
import { TCP_PATCH, coalescedTcp } from '../../src/p2p/coalesce.js'
import { LP_DECODER_PATCH, installLengthPrefixedDecoderFix, stockDecode } from '../../src/p2p/lp-decoder.js'
import { YAMUX_WINDOW_PATCH, installYamuxWindowUpdateFix, stockSendWindowUpdate } from '../../src/p2p/yamux-window.js'

const ROOT = join(import.meta.dirname, '..', '..')

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex')

async function json (path: string): Promise<any> {
  return JSON.parse(await readFile(join(ROOT, path), 'utf8'))
}

/** The installed version, package.json's spec and the lockfile's version of `pkg` */
async function versions (pkg: string): Promise<{ installed: string, declared: string, locked: string }> {
  const lock = await json('package-lock.json')
  return {
    installed: (await json(join('node_modules', pkg, 'package.json'))).version,
    declared: (await json('package.json')).dependencies[pkg],
    locked: lock.packages[`node_modules/${pkg}`].version
  }
}

const PATCHES = [LP_DECODER_PATCH, YAMUX_WINDOW_PATCH, TCP_PATCH]

describe('patched dependencies', () => {
  it.each(PATCHES.map(p => [p.package, p] as const))('%s is pinned to the exact version its patch was written for', async (_, patch) => {
    const v = await versions(patch.package)
    expect(v.declared, `package.json must pin ${patch.package} to ${patch.version} exactly (the patch replaces ${patch.replaces})`).toBe(patch.version)
    expect(v.locked).toBe(patch.version)
    expect(v.installed, `node_modules holds ${patch.package} ${v.installed}; the patch was written for ${patch.version}`).toBe(patch.version)
    // One copy in the tree: a nested copy (another version wanted by some dependency) would go unpatched.
    const copies = Object.keys((await json('package-lock.json')).packages).filter(k => k.endsWith(`node_modules/${patch.package}`))
    expect(copies, `${patch.package} must be installed once (the patch changes that copy only)`).toEqual([`node_modules/${patch.package}`])
  })

  it('LengthPrefixedDecoder.decode is the method the fix replaces, with the fields the fix reads', () => {
    installLengthPrefixedDecoderFix()
    const stock = stockDecode()
    expect(stock).not.toBe(LengthPrefixedDecoder.prototype.decode)
    expect(sha256(stock.toString()), 'LengthPrefixedDecoder.prototype.decode changed: read it again and update src/p2p/lp-decoder.ts').toBe(LP_DECODER_PATCH.sourceSha256)
    const decoder = new LengthPrefixedDecoder() as unknown as Record<string, unknown>
    for (const field of ['buffer', 'maxBufferSize', 'maxDataLength', 'lengthDecoder', 'encodingLength']) {
      expect(decoder[field], `LengthPrefixedDecoder has no ${field}`).toBeDefined()
    }
    expect(typeof (decoder.buffer as { sublist?: unknown }).sublist).toBe('function')
    expect(typeof (decoder.buffer as { consume?: unknown }).consume).toBe('function')
  })

  it('YamuxStream.sendWindowUpdate is the method the fix wraps, with the fields and states the fix reads', () => {
    installYamuxWindowUpdateFix()
    const stock = stockSendWindowUpdate()
    expect(stock).not.toBe(YamuxStream.prototype.sendWindowUpdate)
    const source = stock.toString()
    expect(sha256(source), 'YamuxStream.prototype.sendWindowUpdate changed: read it again and update src/p2p/yamux-window.ts').toBe(YAMUX_WINDOW_PATCH.sourceSha256)
    // The skip the fix widens, and the fields it reads, as the stock method has them.
    expect(source).toContain('if (this.recvWindowCapacity >= this.recvWindow && flags === 0)')
    expect(source).toContain('StreamState.Paused')
    expect(StreamState.Established).toBeDefined()
    const cls = YamuxStream.toString()
    for (const assignment of ['this.state = ', 'this.recvWindow = ', 'this.recvWindowCapacity = ']) expect(cls).toContain(assignment)
  })

  it('@libp2p/tcp hands the wrapped upgrader connections with a socket and sendData, both ways, and sendData is the one corking batches', async () => {
    const log = Object.assign(() => {}, { error: () => {}, trace: () => {}, enabled: false, newScope: () => log })
    const logger = { forComponent: () => log }
    const transport = coalescedTcp()({ logger } as never)
    const seen: Array<{ direction: string, conn: MultiaddrConnection }> = []
    const upgrader = {
      upgradeInbound: async (conn: MultiaddrConnection) => { seen.push({ direction: 'inbound', conn }) },
      upgradeOutbound: async (conn: MultiaddrConnection) => { seen.push({ direction: 'outbound', conn }); return conn }
    } as unknown as Upgrader
    const listener = transport.createListener({ upgrader } as never)
    await listener.listen(multiaddr('/ip4/127.0.0.1/tcp/0'))
    try {
      const address = listener.getAddrs()[0]
      expect(address).toBeDefined()
      await transport.dial(address as never, { upgrader, signal: AbortSignal.timeout(10_000) } as never)
      const deadline = Date.now() + 10_000
      while (seen.length < 2 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 10))
      expect(seen.map(s => s.direction).sort(), 'the upgrader saw an inbound and an outbound connection').toEqual(['inbound', 'outbound'])
      for (const { direction, conn } of seen) {
        const c = conn as MultiaddrConnection & { socket?: unknown, sendData?: unknown }
        expect(c.socket, `${direction}: the connection has no socket`).toBeInstanceOf(Socket)
        const stock = (Object.getPrototypeOf(c) as { sendData?: () => unknown }).sendData
        expect(typeof stock).toBe('function')
        // coalesceWrites put its own sendData on the connection, over the stock one.
        expect(Object.prototype.hasOwnProperty.call(c, 'sendData'), `${direction}: sendData was not wrapped`).toBe(true)
        expect(c.sendData).not.toBe(stock)
        expect(sha256(String(stock)), 'TCPSocketMultiaddrConnection.prototype.sendData changed: read it again and update src/p2p/coalesce.ts').toBe(TCP_PATCH.sourceSha256)
      }
    } finally {
      for (const { conn } of seen) conn.abort(new Error('test over'))
      await listener.close()
    }
  })
})
