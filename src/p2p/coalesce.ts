import type { Socket } from 'node:net'
import { tcp, type TCPComponents, type TCPOptions } from '@libp2p/tcp'
import type { MultiaddrConnection, Transport, Upgrader } from '@libp2p/interface'

/**
 * @libp2p/tcp with socket writes coalesced. Each yamux frame goes through
 * Noise and reaches the socket as its own `write()` (a length prefix and a
 * ciphertext, each a syscall), so one replicated write cost a node about
 * five write syscalls. Here a connection's socket is corked on its first
 * write and uncorked on the next tick: everything written in the same
 * synchronous run (one RPC flush, whatever yamux and Noise make of it)
 * leaves as one `writev`. A later point (`setImmediate`) would coalesce
 * more but hold every message back a whole event-loop turn, and the RPC
 * flush already runs from `setImmediate`. Node's Writable does the
 * buffering, so back-pressure (`write()` returning false, then 'drain')
 * works as before.
 */
export function coalescedTcp (init: TCPOptions = {}): (components: TCPComponents) => Transport {
  const factory = tcp(init)
  return (components) => {
    const inner = factory(components)
    const wrap = (upgrader: Upgrader): Upgrader => new Proxy(upgrader, {
      get (target, prop, receiver) {
        if (prop === 'upgradeInbound' || prop === 'upgradeOutbound') {
          return async (maConn: MultiaddrConnection, opts: unknown) => {
            coalesceWrites(maConn)
            return await (target[prop] as (c: MultiaddrConnection, o: unknown) => Promise<unknown>).call(target, maConn, opts)
          }
        }
        const v = Reflect.get(target, prop, receiver)
        return typeof v === 'function' ? v.bind(target) : v
      }
    })
    return new Proxy(inner, {
      get (target, prop, receiver) {
        if (prop === 'dial') {
          return async (ma: unknown, opts: { upgrader: Upgrader }) => await target.dial(ma as never, { ...opts, upgrader: wrap(opts.upgrader) } as never)
        }
        if (prop === 'createListener') {
          return (opts: { upgrader: Upgrader }) => target.createListener({ ...opts, upgrader: wrap(opts.upgrader) } as never)
        }
        const v = Reflect.get(target, prop, receiver)
        return typeof v === 'function' ? v.bind(target) : v
      }
    })
  }
}

/**
 * What these wrappers lean on, checked by test/unit/patches.test.ts: the
 * exact version package.json pins, and the SHA-256 of the source of the TCP
 * connection's sendData() (it writes each buffer with socket.write, which is
 * what corking batches). The test also dials through the wrappers to see that
 * dial() and the listener still hand the upgrader a connection with `socket`
 * and `sendData`. A new version means reading those again before moving the pin.
 */
export const TCP_PATCH = {
  package: '@libp2p/tcp',
  version: '11.0.28',
  replaces: 'the upgrader given to dial() and createListener(); TCPSocketMultiaddrConnection.prototype.sendData',
  sourceSha256: '37dde6631833a5dd12c72079c9c7df86cd578536e9a31fc69e7b775d230f7e42'
} as const

/** Corks the connection's socket on a first write, until the next tick */
export function coalesceWrites (maConn: MultiaddrConnection): void {
  const conn = maConn as MultiaddrConnection & { socket?: Socket, sendData?: (data: unknown) => unknown }
  const socket = conn.socket
  const sendData = conn.sendData
  // Only the TCP connection class has both; anything else is left as it is.
  if (socket === undefined || typeof socket.cork !== 'function' || typeof sendData !== 'function') return
  let corked = false
  const uncork = (): void => {
    corked = false
    if (!socket.destroyed) socket.uncork()
  }
  conn.sendData = function (data: unknown) {
    if (!corked && !socket.destroyed) {
      corked = true
      socket.cork()
      process.nextTick(uncork)
    }
    return sendData.call(this, data)
  }
}
