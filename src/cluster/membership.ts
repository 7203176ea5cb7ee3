import type { MemberStatus } from './coordinator.js'
import type { Signer } from './member-claims.js'
import { MemberView, parseGossipMessage, type MemberEffect, type SavedMember } from './core/members.js'
import type { PeerTransport } from './transport.js'
import { UnavailableError } from '../errors/index.js'
import { REAL_ENV, sleep, type Environment, type TimerHandle } from '../util/env.js'

export { MAX_VIEW, parseGossip, parseGossipMessage, type MemberRecord, type SavedMember } from './core/members.js'

export interface MembershipComponents {
  transport: PeerTransport
  peerId: string
  /** Signs with this node's identity key (the key of `peerId`): every claim this node makes about itself is signed */
  sign: Signer
  /** The addresses this node can be reached on, now */
  addresses: () => string[]
  /** Saves the member list, so a restarted node rejoins without a bootstrap address */
  persist?: (members: SavedMember[]) => Promise<void>
  /** Asks the network layer to dial a peer at these addresses before gossiping with it */
  connect?: (peerId: string, addresses: string[]) => Promise<void>
  /**
   * Tells the network layer where a member can be reached, as soon as gossip
   * says so: a member heard of only through others is then dialable by its
   * peer id when a request (a replica write) is the first thing sent to it
   */
  learned?: (peerId: string, addresses: string[]) => void
  log?: (msg: string, ...args: unknown[]) => void
  /** Where refused claims and non-members are reported (one line per sender per minute). @default log */
  warn?: (msg: string) => void
  /** The clock, when it is not the environment's (tests run a node's clock ahead) */
  now?: () => number
  /** Timers and random draws (gossip targets). @default REAL_ENV */
  env?: Environment
}

export interface MembershipInit {
  /** Gossip round interval, ms. @default 1000 */
  heartbeatMs?: number
  /** Silence after which a member is suspect, ms. @default 3000 */
  suspectAfterMs?: number
  /** Silence after which a member is down and leaves the ring, ms. @default 10000 */
  downAfterMs?: number
  /** Members gossiped with per round. @default 3 */
  fanout?: number
}

/**
 * The membership view: gossip-style heartbeats (each member bumps its own
 * counter; views are exchanged push-pull with a few random members per round)
 * and failure detection by silence: a member whose counter stops moving is
 * suspect, then down. A node bootstrapped from one member learns of all.
 */
export class Membership {
  private readonly c: MembershipComponents
  private readonly heartbeatMs: number
  /** The view and the failure detector, with no I/O (core/members.ts): this class runs its timer, gossip and saves */
  private readonly core: MemberView
  private timer?: TimerHandle
  private readonly listeners = new Set<() => void>()

  constructor (components: MembershipComponents, init: MembershipInit = {}) {
    this.c = components
    this.heartbeatMs = init.heartbeatMs ?? 1000
    this.core = new MemberView({
      peerId: components.peerId,
      sign: components.sign,
      now: this.now(),
      suspectAfterMs: init.suspectAfterMs ?? 3000,
      downAfterMs: init.downAfterMs ?? 10_000,
      fanout: init.fanout ?? 3
    })
    components.transport.handle('membership', async (msg, from) => await this.onMessage(msg, from))
  }

  private now (): number {
    return this.c.now === undefined ? this.env.now() : this.c.now()
  }

  private get env (): Environment {
    return this.c.env ?? REAL_ENV
  }

  start (): void {
    if (this.timer !== undefined) return
    this.timer = this.env.setInterval(() => { void this.tick() }, this.heartbeatMs)
    this.timer.unref?.()
    void this.tick()
  }

  stop (): void {
    if (this.timer !== undefined) this.env.clearInterval(this.timer)
    this.timer = undefined
  }

  /** Called when the view of live members changes */
  onChange (fn: () => void): () => void {
    this.listeners.add(fn)
    return () => this.listeners.delete(fn)
  }

  /**
   * Members saved by an earlier run: those that left are known as left again
   * (so, after every node restarts, hints kept for a removed member are still
   * dropped and it gets no ring share back); the others are contacted on the
   * next round. A left entry without its incarnation and heartbeat is only a
   * candidate, as saved files of earlier versions are.
   */
  restore (saved: SavedMember[]): void {
    this.core.restore(saved, this.now())
    void this.flush()
  }

  /** A peer learned of elsewhere (bootstrap, DHT, disk): contacted on the next round */
  addCandidate (peerId: string, addresses: string[] = []): void {
    this.core.addCandidate(peerId, addresses)
  }

  /**
   * Whether a peer may use the replica protocol: a member this node knows,
   * or one that left by itself (it is still handing its records over). A
   * peer removed by another member is not, until it rejoins.
   */
  mayReplicate (peerId: string): boolean {
    return this.core.mayReplicate(peerId)
  }

  stateOf (peerId: string): MemberStatus['state'] | undefined {
    return this.core.stateOf(peerId, this.now())
  }

  /** Every member this node knows, itself first */
  members (): MemberStatus[] {
    return this.core.members(this.now(), this.c.addresses())
  }

  /**
   * Members that hold ring shares: every member that has not left. A down
   * member keeps its share (requests go to its live co-owners first, and what
   * it misses is kept as hints), so a quorum never shrinks to the members
   * that happen to be up; only leaving gives a share away.
   */
  ringMembers (): string[] {
    return this.members().filter(m => m.state !== 'left').map(m => m.peerId)
  }

  /** Members believed up or only slow: alive or suspect */
  liveMembers (): string[] {
    return this.members().filter(m => m.state === 'alive' || m.state === 'suspect').map(m => m.peerId)
  }

  /** Members believed up right now */
  isAlive (peerId: string): boolean {
    return this.stateOf(peerId) === 'alive'
  }

  /**
   * Declares a down member gone for good (its machine will not come back):
   * it is marked left, which every member learns by gossip, so its ring share
   * passes to the others and the records it held are copied to their new
   * owners. A member that is still answering cannot be removed. If the
   * machine was only cut off and comes back, it hears of its removal and
   * refutes it with a new incarnation (see MemberView.merge), and is a member again.
   */
  remove (peerId: string, by?: string): MemberStatus {
    const removed = this.core.remove(peerId, this.now(), this.env.random, by)
    void this.flush()
    return removed
  }

  /**
   * Marks this node as leaving and tells the members it can reach (the rest
   * learn by gossip): from now on no member, this one included, counts it on
   * the ring. Returns once some member has heard it: a node that stopped
   * before any did would stay on every ring as a down member for good (the
   * sim found one that left across a partition). Tries again each heartbeat;
   * fails after `timeoutMs`, still leaving (a retry goes on).
   */
  async leave (timeoutMs = 30_000): Promise<void> {
    this.core.leave(this.now())
    void this.flush()
    const deadline = this.now() + timeoutMs
    for (;;) {
      const heard = await Promise.all(this.core.livePeers(this.now()).map(async p => await this.gossip(p)))
      if (heard.some(Boolean)) return
      if (this.now() >= deadline) throw new UnavailableError('No member heard that this node is leaving (none answered): try again once members are reachable')
      await sleep(this.env, this.heartbeatMs)
    }
  }

  /** This node has announced that it is leaving */
  get leaving (): boolean {
    return this.core.leaving
  }

  /** A heartbeat: the core picks whom to gossip with; once every exchange ended, the changes are announced and saved */
  private async tick (): Promise<void> {
    this.core.tick(this.now(), this.c.addresses(), this.env.random)
    await this.flush()
    this.core.roundDone(this.now())
    await this.flush()
  }

  /**
   * Performs what the core asked for since the last call: gossip exchanges
   * (resolved once all of them ended), change listeners, saves, the network
   * layer's address book, logs and reports.
   */
  private async flush (): Promise<void> {
    const exchanges: Array<Promise<boolean>> = []
    for (const e of this.core.ready()) this.perform(e, exchanges)
    await Promise.allSettled(exchanges)
  }

  private perform (e: MemberEffect, exchanges: Array<Promise<boolean>>): void {
    switch (e.type) {
      case 'gossip':
        exchanges.push(this.gossip(e.peer))
        break
      case 'changed':
        for (const fn of this.listeners) fn()
        break
      case 'persist':
        void this.c.persist?.(e.members).catch(err => this.c.log?.('saving members failed: %s', (err as Error).message))
        break
      case 'learned':
        this.c.learned?.(e.peerId, e.addresses)
        break
      case 'warn':
        ;(this.c.warn ?? ((m: string) => this.c.log?.(m)))(e.line)
        break
      case 'log':
        this.c.log?.(e.msg, ...e.args)
        break
    }
  }

  /** One push-pull exchange with a peer; whether it answered */
  private async gossip (peerId: string): Promise<boolean> {
    const { addresses, dial } = this.core.contact(peerId, this.now())
    try {
      if (this.c.connect !== undefined && dial) await this.c.connect(peerId, addresses)
      const sent = this.now()
      const reply = parseGossipMessage(await this.c.transport.request(peerId, 'membership', this.core.message(sent), { timeout: this.heartbeatMs * 2 }))
      this.core.answered(peerId, reply, sent, this.now())
      void this.flush()
      return true
    } catch (err) {
      this.c.log?.('gossip with %s failed: %s', peerId, (err as Error).message)
      return false
    }
  }

  private async onMessage (msg: unknown, from: string): Promise<unknown> {
    const { view } = parseGossipMessage(msg)
    try {
      return this.core.receive(view, from, this.now())
    } finally {
      void this.flush()
    }
  }

  /** Reports a refusal, at most once a minute per sender (a hostile peer could send thousands) */
  report (from: string, line: string): void {
    this.core.report(from, line, this.now())
    void this.flush()
  }
}
