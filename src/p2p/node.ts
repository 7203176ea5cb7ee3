import { noise } from '@chainsafe/libp2p-noise'
import { identify, type Identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper, removePrivateAddressesMapper, type KadDHT } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping, type Ping } from '@libp2p/ping'
import { generateKey, preSharedKey } from '@libp2p/pnet'
import { coalescedTcp } from './coalesce.js'
import { describeHandshakeFailure, watchHandshakes } from './handshake-report.js'
import { installLengthPrefixedDecoderFix } from './lp-decoder.js'
import { installYamuxWindowUpdateFix } from './yamux-window.js'
import { installXsalsa20MemoryFix } from './xsalsa20-memory.js'
import { yamux } from '@libp2p/yamux'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import type { Libp2p, PeerId, PrivateKey } from '@libp2p/interface'
import { ValidationError } from '../errors/index.js'

/** The libp2p node a daemon runs: identify, ping and a Kademlia DHT */
export type NtsoekheNode = Libp2p<{ identify: Identify, ping: Ping, dht: KadDHT }>

export interface NodeComponents {
  /** The node's identity, see `loadOrCreateIdentity` */
  privateKey: PrivateKey
}

export interface NodeInit {
  /**
   * Multiaddrs to listen on
   *
   * @default ['/ip4/0.0.0.0/tcp/4100']
   */
  listen?: string[]

  /**
   * Peers to dial once started, as multiaddrs ending in `/p2p/<peer id>`. They
   * are added to the peer store; one that cannot be reached is logged, it does
   * not fail the start.
   *
   * @default []
   */
  bootstrap?: string[]

  /**
   * Prefix of the DHT protocol: the DHT speaks `<dhtProtocol>/kad/1.0.0`, so
   * nodes only find each other, never the public IPFS DHT
   *
   * @default '/ntsoekhe'
   */
  dhtProtocol?: string

  /**
   * When true the node queries the DHT but does not answer DHT queries
   *
   * @default false
   */
  dhtClientMode?: boolean

  /**
   * Keep private (LAN, loopback) addresses of peers in the DHT. Needed on a
   * LAN or loopback; set false on the public internet.
   *
   * @default true
   */
  keepPrivateAddresses?: boolean

  /**
   * A libp2p private-network swarm key (see `generatePnetKey`). When given,
   * only nodes holding the same key can connect.
   *
   * @default undefined (no private network)
   */
  pnetKey?: Uint8Array

  /**
   * How long a dial may take, in ms
   *
   * @default 10_000
   */
  dialTimeout?: number

  /**
   * Where to report unreachable bootstrap peers and connections that closed
   * before their handshake (a peer with another network key, or none)
   *
   * @default the libp2p debug logger `ntsoekhe:p2p`
   */
  log?: (msg: string) => void
}

/** Handshake failures are reported once per remote host per this many ms */
const HANDSHAKE_REPORT_INTERVAL = 60_000

export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/4100']
export const DEFAULT_DHT_PROTOCOL = '/ntsoekhe'
export const DEFAULT_DIAL_TIMEOUT = 10_000

/** A new private-network swarm key (the `/key/swarm/psk/1.0.0/` text format) */
export function generatePnetKey (): Uint8Array {
  // the key is '/key/swarm/psk/1.0.0/\n/base16/\n' followed by 64 hex digits
  const key = new Uint8Array(95)
  generateKey(key)
  return key
}

interface BootstrapPeer {
  addr: Multiaddr
  peerId: PeerId
}

function parseBootstrap (addrs: string[]): BootstrapPeer[] {
  return addrs.map(str => {
    let addr: Multiaddr
    try {
      addr = multiaddr(str)
    } catch (err) {
      throw new ValidationError(`Invalid bootstrap multiaddr ${str}`, { cause: err })
    }
    const id = addr.getComponents().filter(c => c.name === 'p2p').pop()?.value
    if (id === undefined) throw new ValidationError(`Bootstrap multiaddr ${str} has no /p2p/<peer id>`)
    try {
      return { addr, peerId: peerIdFromString(id) }
    } catch (err) {
      throw new ValidationError(`Bootstrap multiaddr ${str} has an invalid peer id`, { cause: err })
    }
  })
}

/**
 * Creates and starts a libp2p node: TCP, Noise, yamux, optional pnet, and the
 * identify, ping and kad-dht services. Bootstrap peers are dialled before this
 * resolves (each bounded by `dialTimeout`); failures are logged only.
 */
export async function createNode (components: NodeComponents, init: NodeInit = {}): Promise<NtsoekheNode> {
  installLengthPrefixedDecoderFix()
  installYamuxWindowUpdateFix()
  installXsalsa20MemoryFix()
  const listen = init.listen ?? DEFAULT_LISTEN
  const bootstrap = parseBootstrap(init.bootstrap ?? [])
  const dialTimeout = init.dialTimeout ?? DEFAULT_DIAL_TIMEOUT
  const dhtProtocol = `${(init.dhtProtocol ?? DEFAULT_DHT_PROTOCOL).replace(/\/+$/, '')}/kad/1.0.0`

  let connectionProtector: ReturnType<typeof preSharedKey> | undefined
  if (init.pnetKey !== undefined) {
    connectionProtector = preSharedKey({ psk: init.pnetKey })
    try {
      connectionProtector() // decodes the key now, so a bad key fails here with a clear error
    } catch (err) {
      throw new ValidationError('Invalid pnet swarm key (expected the /key/swarm/psk/1.0.0/ format)', { cause: err })
    }
  }

  let log: (msg: string) => void = () => {}
  const reported = new Map<string, number>()
  const watched = watchHandshakes(connectionProtector, noise(), failure => {
    const host = failure.remote.split('/tcp/')[0] ?? failure.remote
    const now = Date.now()
    if (now - (reported.get(host) ?? -Infinity) < HANDSHAKE_REPORT_INTERVAL) return
    if (reported.size > 10_000) reported.clear()
    reported.set(host, now)
    log(describeHandshakeFailure(failure))
  })
  const node = await createLibp2p({
    privateKey: components.privateKey,
    addresses: { listen },
    transports: [coalescedTcp()],
    connectionEncrypters: [watched.connectionEncrypter],
    streamMuxers: [yamux()],
    connectionProtector: watched.connectionProtector,
    connectionManager: { dialTimeout },
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: dhtProtocol,
        clientMode: init.dhtClientMode ?? false,
        peerInfoMapper: (init.keepPrivateAddresses ?? true) ? passthroughMapper : removePrivateAddressesMapper
      })
    }
  })

  const logger = node.logger.forComponent('ntsoekhe:p2p')
  log = init.log ?? ((msg: string) => { logger(msg) })

  const self = node.peerId.toString()
  await Promise.all(bootstrap.map(async ({ addr, peerId }) => {
    if (peerId.toString() === self) return
    try {
      await node.peerStore.merge(peerId, { multiaddrs: [addr], tags: { bootstrap: { value: 50 } } })
      await node.dial(addr, { signal: AbortSignal.timeout(dialTimeout) })
    } catch (err) {
      log(`bootstrap peer ${addr.toString()} unreachable: ${(err as Error).message}`)
    }
  }))

  return node
}
