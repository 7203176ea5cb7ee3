import type { ConnectionEncrypter, ConnectionProtector, MessageStream } from '@libp2p/interface'

/** A connection that closed before its handshake (network key, Noise) completed */
export interface HandshakeFailure {
  direction: 'inbound' | 'outbound'
  /** The remote address, e.g. `/ip4/10.0.0.7/tcp/4100` */
  remote: string
  /** This node runs with a network key (pnet) */
  keyed: boolean
}

/**
 * Makes handshake failures visible. A peer with another network key, or
 * none, fails in the middle of multistream-select or Noise on garbled bytes
 * ("Message length too long"), and libp2p only logs that at debug level. The
 * connection protector sees every raw connection first; the encrypter says
 * which ones got through; a raw connection that closes before that is
 * reported. Without a network key a pass-through protector does the watching.
 */
export function watchHandshakes (
  inner: (() => ConnectionProtector) | undefined,
  encrypter: (components: any) => ConnectionEncrypter,
  report: (failure: HandshakeFailure) => void
): { connectionProtector: (components: any) => ConnectionProtector, connectionEncrypter: (components: any) => ConnectionEncrypter } {
  const secured = new WeakMap<MessageStream, { done: boolean }>()
  const keyed = inner !== undefined
  const connectionProtector = (): ConnectionProtector => {
    const protector = inner?.()
    return {
      async protect (connection, options) {
        const state = { done: false }
        connection.addEventListener('close', () => {
          if (!state.done) {
            const remote = String((connection as { remoteAddr?: unknown }).remoteAddr ?? 'an unknown address')
            report({ direction: connection.direction, remote, keyed })
          }
        }, { once: true })
        const out = protector === undefined ? connection : await protector.protect(connection, options)
        secured.set(out, state)
        return out
      }
    }
  }
  const connectionEncrypter = (components: any): ConnectionEncrypter => {
    const e = encrypter(components)
    const done = (connection: MessageStream): void => {
      const state = secured.get(connection)
      if (state !== undefined) state.done = true
    }
    return {
      protocol: e.protocol,
      async secureInbound (connection, options) {
        const out = await e.secureInbound(connection, options)
        done(connection)
        return out
      },
      async secureOutbound (connection, options) {
        const out = await e.secureOutbound(connection, options)
        done(connection)
        return out
      }
    }
  }
  return { connectionProtector, connectionEncrypter }
}

/** The one line both sides log, rate-limited per remote host by the caller */
export function describeHandshakeFailure (f: HandshakeFailure): string {
  const where = f.direction === 'inbound' ? `from ${f.remote}` : `to ${f.remote}`
  return f.keyed
    ? `connection ${where} closed before its handshake completed: that machine does not hold this network's key (it has another one, or none), or is not an Ntsoekhe node; only machines given the key (ntsoekhe invite) can join`
    : `connection ${where} closed before its handshake completed: this node runs an open network, and that machine may hold a network key (a closed network), or is not an Ntsoekhe node`
}
