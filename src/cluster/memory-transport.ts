import { NtsoekheError, UnavailableError, errorFromJSON } from '../errors/index.js'
import type { Handler, PeerTransport, ProtocolName, SendOptions } from './transport.js'

/**
 * Many nodes in one process: requests are delivered by direct calls, with a
 * JSON round trip on the way in and out (as on the wire), so tests exercise
 * the same message checks. Nodes can be taken down and links cut.
 */
export class MemoryNetwork {
  private readonly handlers = new Map<string, Map<ProtocolName, Handler>>()
  private readonly downed = new Set<string>()
  private readonly cut = new Set<string>()
  /** Links whose next replies are lost after the request was handled (a stream that closed after the send) */
  private readonly lost = new Map<string, number>()
  /** Peers whose requests hang (a machine frozen, or cut off while still counted alive), each with its waiters */
  private readonly stalled = new Map<string, Array<() => void>>()
  /** Peers whose requests of one protocol wait, then are delivered (a slow owner that answers late), each with its waiters */
  private readonly held = new Map<string, { protocol: ProtocolName, waiters: Array<() => void> }>()
  /** Messages delivered, per protocol */
  readonly delivered: Record<string, number> = {}

  transport (peerId: string): PeerTransport {
    return {
      handle: (protocol, handler) => {
        let map = this.handlers.get(peerId)
        if (map === undefined) { map = new Map(); this.handlers.set(peerId, map) }
        map.set(protocol, handler)
      },
      request: async (to, protocol, msg, options) => await this.deliver(peerId, to, protocol, msg, options)
    }
  }

  down (peerId: string): void { this.downed.add(peerId) }
  /** Requests to `peerId` hang until `release` (then they fail as unreachable) */
  stall (peerId: string): void { if (!this.stalled.has(peerId)) this.stalled.set(peerId, []) }
  release (peerId: string): void {
    const waiters = this.stalled.get(peerId) ?? []
    this.stalled.delete(peerId)
    for (const w of waiters) w()
  }
  /** Requests of `protocol` to `peerId` wait until `deliverHeld`, then are handled and answered as usual */
  hold (peerId: string, protocol: ProtocolName): void { if (!this.held.has(peerId)) this.held.set(peerId, { protocol, waiters: [] }) }
  deliverHeld (peerId: string): void {
    const waiters = this.held.get(peerId)?.waiters ?? []
    this.held.delete(peerId)
    for (const w of waiters) w()
  }
  up (peerId: string): void { this.downed.delete(peerId) }
  /** Cuts (or with `false` heals) the link between two nodes, both ways */
  partition (a: string, b: string, cut = true): void {
    for (const k of [`${a}|${b}`, `${b}|${a}`]) {
      if (cut) this.cut.add(k)
      else this.cut.delete(k)
    }
  }

  /** The next `count` replies from `to` to `from` are lost after `to` has handled the request */
  loseReplies (from: string, to: string, count = 1): void {
    this.lost.set(`${from}|${to}`, count)
  }

  private async deliver (from: string, to: string, protocol: ProtocolName, msg: unknown, _options?: SendOptions): Promise<unknown> {
    if (this.downed.has(from)) throw new UnavailableError(`${from} is down`)
    if (this.downed.has(to) || this.cut.has(`${from}|${to}`)) throw new UnavailableError(`${to} is unreachable`)
    const stall = this.stalled.get(to)
    if (stall !== undefined) {
      await new Promise<void>(resolve => { stall.push(resolve) })
      throw new UnavailableError(`${to} did not answer`)
    }
    const held = this.held.get(to)
    if (held !== undefined && held.protocol === protocol) await new Promise<void>(resolve => { held.waiters.push(resolve) })
    const handler = this.handlers.get(to)?.get(protocol)
    if (handler === undefined) throw new UnavailableError(`${to} does not speak ${protocol}`)
    this.delivered[protocol] = (this.delivered[protocol] ?? 0) + 1
    await Promise.resolve()
    let reply: unknown
    try {
      reply = await handler(JSON.parse(JSON.stringify(msg)), from)
    } catch (err) {
      const body = err instanceof NtsoekheError ? err.toJSON() : { code: 'INTERNAL', message: (err as Error).message }
      throw errorFromJSON(body)
    }
    if (this.downed.has(to)) throw new UnavailableError(`${to} went down before answering`)
    const lose = this.lost.get(`${from}|${to}`) ?? 0
    if (lose > 0) {
      this.lost.set(`${from}|${to}`, lose - 1)
      throw new UnavailableError(`the stream to ${to} closed before its answer arrived`)
    }
    return reply === undefined ? undefined : JSON.parse(JSON.stringify(reply))
  }
}
