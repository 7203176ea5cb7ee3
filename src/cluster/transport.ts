/** The peer protocols the cluster speaks, one libp2p protocol each */
export const PROTOCOLS = {
  membership: '/ntsoekhe/membership/1.0.0',
  replica: '/ntsoekhe/replica/1.0.0',
  sync: '/ntsoekhe/sync/1.0.0',
  backup: '/ntsoekhe/backup/1.0.0'
} as const

export type ProtocolName = keyof typeof PROTOCOLS

export type Handler = (msg: unknown, from: string) => Promise<unknown>

export interface HandleOptions {
  /**
   * Whether a peer may open streams of this protocol at all: one that may not
   * has its streams closed before a byte of them is read. The handler still
   * checks each request (a transport may not support this check).
   */
  accept?: (peerId: string) => boolean
}

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
  handle: (protocol: ProtocolName, handler: Handler, options?: HandleOptions) => void
  request: (peerId: string, protocol: ProtocolName, msg: unknown, options?: SendOptions) => Promise<unknown>
}
