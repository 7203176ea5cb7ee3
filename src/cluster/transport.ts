/** The peer protocols the cluster speaks, one libp2p protocol each */
export const PROTOCOLS = {
  membership: '/ntsoekhe/membership/1.0.0',
  replica: '/ntsoekhe/replica/1.0.0'
} as const

export type ProtocolName = keyof typeof PROTOCOLS

export type Handler = (msg: unknown, from: string) => Promise<unknown>

export interface SendOptions {
  signal?: AbortSignal
  /** ms */
  timeout?: number
}

/**
 * How the cluster reaches peers: request/response per protocol. The daemon
 * runs it over libp2p streams (Noise, yamux); unit tests run many nodes in one
 * process over an in-memory transport with the same message checks.
 */
export interface PeerTransport {
  handle: (protocol: ProtocolName, handler: Handler) => void
  request: (peerId: string, protocol: ProtocolName, msg: unknown, options?: SendOptions) => Promise<unknown>
}
