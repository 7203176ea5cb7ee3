import { NtsoekheError, TimeoutError, UnavailableError, errorFromJSON } from '../errors/index.js'
import type { Handler, PeerTransport, ProtocolName, SendOptions } from '../cluster/transport.js'
import type { SeededRandom } from './random.js'
import type { SimScheduler } from './scheduler.js'

/** How the simulated network misbehaves; probabilities are per message */
export interface NetworkFaults {
  /** A request or a reply vanishes (the sender sees a timeout) */
  loss: number
  /** A request is delivered twice (the second answer is thrown away) */
  duplicate: number
  /** One-way delay, ms: uniform in [min, max], so messages overtake each other */
  minDelayMs: number
  maxDelayMs: number
}

/** What the libp2p transport waits for an answer when the caller names no timeout, ms */
const DEFAULT_TIMEOUT_MS = 10_000

interface Endpoint {
  /** The node's run (`<index>:<incarnation>`): timers of a run die with it */
  owner: string
  handlers: Map<ProtocolName, Handler>
}

/**
 * Many nodes in one process on fake time, their requests and replies
 * delivered as scheduler events: late, lost, duplicated, reordered, or
 * refused across a partition. Messages go through a JSON round trip, as on
 * the wire, so every peer-message check runs. A node that crashed answers
 * nothing, and nothing it had sent is answered.
 */
export class SimNetwork {
  private readonly endpoints = new Map<string, Endpoint>()
  private readonly cuts = new Set<string>()
  private readonly sched: SimScheduler
  private readonly random: SeededRandom
  faults: NetworkFaults
  /** Called for every message delivered (the trace) */
  onDeliver?: (line: string) => void
  delivered = 0

  constructor (sched: SimScheduler, random: SeededRandom, faults: NetworkFaults) {
    this.sched = sched
    this.random = random
    this.faults = faults
  }

  /** The transport of one run of a node; it goes deaf and mute when `down` is called for that run */
  transport (peerId: string, owner: string): PeerTransport {
    const endpoint: Endpoint = { owner, handlers: new Map() }
    this.endpoints.set(peerId, endpoint)
    return {
      handle: (protocol, handler) => { endpoint.handlers.set(protocol, handler) },
      request: async (to, protocol, msg, options) => await this.request(peerId, endpoint, to, protocol, msg, options)
    }
  }

  /** The node's run ended (a crash): it receives nothing more */
  down (peerId: string): void {
    this.endpoints.delete(peerId)
  }

  /** Cuts (or heals) the link between two nodes, both ways */
  partition (a: string, b: string, cut = true): void {
    for (const k of [`${a}|${b}`, `${b}|${a}`]) {
      if (cut) this.cuts.add(k)
      else this.cuts.delete(k)
    }
  }

  healAll (): void {
    this.cuts.clear()
  }

  isCut (a: string, b: string): boolean {
    return this.cuts.has(`${a}|${b}`)
  }

  private alive (peerId: string, endpoint: Endpoint): boolean {
    return this.endpoints.get(peerId) === endpoint
  }

  private delay (): number {
    return this.random.int(this.faults.minDelayMs, this.faults.maxDelayMs)
  }

  private async request (from: string, endpoint: Endpoint, to: string, protocol: ProtocolName, msg: unknown, options: SendOptions = {}): Promise<unknown> {
    const wire = JSON.stringify(msg)
    const timeout = options.timeout ?? DEFAULT_TIMEOUT_MS
    return await new Promise<unknown>((resolve, reject) => {
      let settled = false
      const finish = (fn: () => void): void => {
        if (settled || !this.alive(from, endpoint)) return
        settled = true
        fn()
      }
      this.sched.at(this.sched.now + timeout, endpoint.owner, () => { finish(() => { reject(new TimeoutError(`${to}: no answer within ${timeout} ms`)) }) })
      // A cut link or a dead peer: the dial fails after a moment (or, now and then, hangs until the timeout).
      if (this.cuts.has(`${from}|${to}`) || !this.endpoints.has(to)) {
        if (this.random.chance(0.8)) {
          this.sched.at(this.sched.now + this.delay(), endpoint.owner, () => { finish(() => { reject(new UnavailableError(`${to} is unreachable`)) }) })
        }
        return
      }
      const copies = this.random.chance(this.faults.duplicate) ? 2 : 1
      for (let copy = 0; copy < copies; copy++) {
        if (this.random.chance(this.faults.loss)) continue
        const target = this.endpoints.get(to) as Endpoint
        this.sched.at(this.sched.now + this.delay(), 'net', () => {
          if (!this.alive(to, target) || this.cuts.has(`${from}|${to}`)) return
          const handler = target.handlers.get(protocol)
          this.delivered++
          this.onDeliver?.(`${from.slice(-6)}>${to.slice(-6)} ${protocol} ${(msg as { type?: unknown } | null)?.type as string}`)
          const reply = (answer: () => void): void => {
            // The reply travels back over the same (possibly now cut) link, and may be lost.
            if (!this.alive(to, target) || this.cuts.has(`${to}|${from}`) || this.random.chance(this.faults.loss)) return
            this.sched.at(this.sched.now + this.delay(), 'net', () => { finish(answer) })
          }
          if (handler === undefined) {
            reply(() => { reject(new UnavailableError(`${to} does not speak ${protocol}`)) })
            return
          }
          let answer: Promise<unknown>
          try {
            answer = handler(JSON.parse(wire), from)
          } catch (err) {
            answer = Promise.reject(err)
          }
          answer.then(result => {
            const back = result === undefined ? undefined : JSON.stringify(result)
            reply(() => { resolve(back === undefined ? undefined : JSON.parse(back)) })
          }, (err: unknown) => {
            const body = err instanceof NtsoekheError ? err.toJSON() : { code: 'INTERNAL', message: (err as Error)?.message ?? String(err) }
            reply(() => { reject(errorFromJSON(body)) })
          })
        })
      }
    })
  }
}
