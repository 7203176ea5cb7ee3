// The raw one-way stream rate between two libp2p nodes on the product's own
// stack (createNode: TCP + pnet + Noise + yamux, the daemon's fixes): the
// baseline for the rate at which a joining node receives its share.
//
//   node test/bench/stream.js receive              prints {"addr","key"} on one line, then serves
//   node test/bench/stream.js send <addr> <key> <bytes>   prints {"bytes","seconds"}
//
// The sender opens one stream, writes an 8-byte length and then that many bytes
// in 64 KiB chunks; the receiver answers one byte once it has them all. Timed
// from opening the stream to the answer. Benchmark code: input is trusted.
import '../../dist/util/polyfill.js'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { generateKey } from '@libp2p/pnet'
import { byteStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import { performance } from 'node:perf_hooks'
import { createNode } from '../../dist/p2p/node.js'

const PROTOCOL = '/ntsoekhe-bench-stream/1.0.0'
const CHUNK = 64 * 1024
const [role, ...args] = process.argv.slice(2)

if (role === 'receive') {
  const key = new Uint8Array(95)
  generateKey(key)
  const node = await createNode({ privateKey: await generateKeyPair('Ed25519') }, { listen: ['/ip4/127.0.0.1/tcp/0'], pnetKey: key })
  await node.handle(PROTOCOL, async (stream) => {
    const bytes = byteStream(stream, { maxBufferSize: 16 * 1024 * 1024 })
    const head = await bytes.read({ bytes: 8 })
    const total = Number(head.subarray().slice(0, 8).reduce((n, b) => n * 256n + BigInt(b), 0n))
    let got = head.byteLength - 8
    while (got < total) {
      const chunk = await bytes.read()
      if (chunk === null) break
      got += chunk.byteLength
    }
    await bytes.write(new Uint8Array([got === total ? 1 : 0]))
    await stream.close()
  }, { maxInboundStreams: 4 })
  const addr = node.getMultiaddrs().find(a => a.toString().startsWith('/ip4/127.0.0.1/'))
  process.stdout.write(JSON.stringify({ addr: addr.toString(), key: Buffer.from(key).toString('hex') }) + '\n')
  process.on('SIGTERM', () => { node.stop().then(() => process.exit(0), () => process.exit(0)) })
} else if (role === 'send') {
  const [addr, keyHex, size] = args
  const total = Number(size)
  const node = await createNode({ privateKey: await generateKeyPair('Ed25519') }, { listen: ['/ip4/127.0.0.1/tcp/0'], pnetKey: Buffer.from(keyHex, 'hex') })
  await node.dial(multiaddr(addr))
  const payload = new Uint8Array(CHUNK).fill(0x61)
  const started = performance.now()
  const stream = await node.dialProtocol(multiaddr(addr), PROTOCOL)
  const bytes = byteStream(stream, { maxBufferSize: 16 * 1024 * 1024 })
  const head = new Uint8Array(8)
  new DataView(head.buffer).setBigUint64(0, BigInt(total))
  await bytes.write(head)
  for (let sent = 0; sent < total; sent += CHUNK) await bytes.write(sent + CHUNK <= total ? payload : payload.subarray(0, total - sent))
  const ack = await bytes.read({ bytes: 1 })
  const seconds = (performance.now() - started) / 1000
  if (ack.subarray()[0] !== 1) throw new Error('the receiver did not get every byte')
  process.stdout.write(JSON.stringify({ bytes: total, seconds }) + '\n')
  await node.stop()
  process.exit(0)
} else {
  console.error('usage: node test/bench/stream.js receive | send <addr> <keyHex> <bytes>')
  process.exit(2)
}
