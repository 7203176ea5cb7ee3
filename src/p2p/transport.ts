import { NtsoekheError, UnavailableError } from '../errors/index.js'
import { PROTOCOLS, type Handler, type HandleOptions, type PeerTransport, type ProtocolName, type SendOptions } from '../cluster/transport.js'
import type { NtsoekheNode } from './node.js'
import { DEFAULT_MAX_MESSAGE_BYTES, RpcService } from './rpc.js'
import { ByteBudget } from './byte-budget.js'

export interface Libp2pTransportInit {
  /** Largest message accepted on a peer stream, bytes. @default 8 MiB */
  maxMessageBytes?: number
  /** Default request timeout, ms. @default 10000 */
  timeout?: number
}

/**
 * The cluster's peer transport over libp2p: one versioned protocol per
 * concern, each a pipelined request/response service on reused streams.
 */
export class Libp2pTransport implements PeerTransport {
  private readonly node: NtsoekheNode
  private readonly init: Libp2pTransportInit
  private readonly log: (msg: string) => void
  private readonly services = new Map<ProtocolName, RpcService>()
  /** One bound on inbound request bytes for all of this node's protocols */
  private readonly budget: ByteBudget
  private started = false

  constructor (node: NtsoekheNode, init: Libp2pTransportInit = {}) {
    this.node = node
    this.init = init
    const logger = node.logger.forComponent('ntsoekhe:p2p:transport')
    this.log = (msg: string) => { logger(msg) }
    const max = init.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
    this.budget = new ByteBudget({ perPeer: 2 * max, total: 8 * max })
  }

  handle (protocol: ProtocolName, handler: Handler, options: HandleOptions = {}): void {
    if (this.services.has(protocol)) throw new Error(`a handler for ${protocol} is already set`)
    const service = new RpcService({ node: this.node, logger: this.log, budget: this.budget }, {
      protocol: PROTOCOLS[protocol],
      handler,
      ...(options.accept === undefined ? {} : { accept: options.accept }),
      ...(this.init.maxMessageBytes === undefined ? {} : { maxMessageBytes: this.init.maxMessageBytes }),
      ...(this.init.timeout === undefined ? {} : { timeout: this.init.timeout })
    })
    this.services.set(protocol, service)
    if (this.started) void service.start()
  }

  async start (): Promise<void> {
    this.started = true
    for (const s of this.services.values()) await s.start()
  }

  async stop (): Promise<void> {
    this.started = false
    for (const s of this.services.values()) await s.stop()
  }

  async request (peerId: string, protocol: ProtocolName, msg: unknown, options: SendOptions = {}): Promise<unknown> {
    const service = this.services.get(protocol)
    if (service === undefined) throw new Error(`no service for ${protocol}`)
    try {
      return await service.request(peerId, msg, options)
    } catch (err) {
      // A refusal from the peer keeps its code; anything else (dial failure, reset) means "unreachable".
      if (err instanceof NtsoekheError) throw err
      throw new UnavailableError(`${peerId} unreachable on ${PROTOCOLS[protocol]}: ${(err as Error).message}`, { cause: err })
    }
  }
}
