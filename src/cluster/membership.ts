import { ConflictError, ForbiddenError, InvalidMessageError, NotFoundError, ValidationError } from '../errors/index.js'
import type { MemberStatus } from './coordinator.js'
import { countersInRange, REMOVAL_BUMP, signClaim, verifyClaim, type Signer } from './member-claims.js'
import type { PeerTransport } from './transport.js'
import { MAX_CLOCK_SKEW_MS } from '../storage/version.js'
import { REAL_ENV, type Environment, type TimerHandle } from '../util/env.js'

export interface MemberRecord {
  peerId: string
  addresses: string[]
  /** Start time of the member's current run: a restarted member outranks its old self */
  incarnation: number
  /** Counter the member bumps every heartbeat */
  heartbeat: number
  /** The member announced it is leaving, or was removed (see `removedBy`) */
  left?: boolean
  zone?: string
  /** The member that removed this one (`ntsoekhe remove`) and signed the record; absent when the member speaks for itself */
  removedBy?: string
  /** Signature of the record by its member's identity key, or by `removedBy`'s (base64) */
  sig?: string
}

/**
 * A member as saved on disk: enough to dial it again after a restart, and for
 * one that left, the record that says so (its hints and share stay given away)
 */
export interface SavedMember {
  peerId: string
  addresses: string[]
  left?: true
  incarnation?: number
  heartbeat?: number
  /** Who removed it, and the signed record that says so: kept so it can be passed on after a restart */
  removedBy?: string
  sig?: string
  /** When this node last heard of it (ms since the epoch) */
  lastSeen?: number
}

interface Known extends MemberRecord {
  /** Local time the record last moved forward */
  updatedAt: number
}

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

/** How many members a gossip message may describe (a bound on hostile input) */
export const MAX_VIEW = 10_000

const PEER_ID_RE = /^[A-Za-z0-9]{8,128}$/
/** Peers heard of and not yet answered that are kept to be contacted (a bound on what others' gossip can add) */
const MAX_CANDIDATES = 1000

/**
 * The membership view: gossip-style heartbeats (each member bumps its own
 * counter; views are exchanged push-pull with a few random members per round)
 * and failure detection by silence: a member whose counter stops moving is
 * suspect, then down. A node bootstrapped from one member learns of all.
 */
export class Membership {
  private readonly c: MembershipComponents
  private readonly heartbeatMs: number
  private readonly suspectAfterMs: number
  private readonly downAfterMs: number
  private readonly fanout: number
  private readonly known = new Map<string, Known>()
  /** Peers heard of (bootstrap, DHT, disk) but not yet answered */
  private readonly candidates = new Map<string, string[]>()
  private readonly self: MemberRecord
  private timer?: TimerHandle
  private readonly listeners = new Set<() => void>()
  private lastLive = ''
  private persisted = ''
  private round = 0
  /** Senders reported lately (refused claims), and when: one line per sender per minute */
  private readonly reported = new Map<string, number>()
  /** Each member's clock minus this node's, as last measured by a gossip round with it (ms) */
  private readonly offsets = new Map<string, number>()

  constructor (components: MembershipComponents, init: MembershipInit = {}) {
    this.c = components
    this.heartbeatMs = init.heartbeatMs ?? 1000
    this.suspectAfterMs = init.suspectAfterMs ?? 3000
    this.downAfterMs = init.downAfterMs ?? 10_000
    this.fanout = init.fanout ?? 3
    this.self = { peerId: components.peerId, addresses: [], incarnation: this.now(), heartbeat: 0 }
    this.signSelf()
    if (!verifyClaim(this.self)) throw new Error(`membership: the signing key is not the key of ${components.peerId}`)
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
    for (const m of saved) {
      if (m.peerId === this.c.peerId) continue
      if (m.left === true && Number.isSafeInteger(m.incarnation) && Number.isSafeInteger(m.heartbeat) && typeof m.sig === 'string') {
        if (this.known.has(m.peerId)) continue
        // Known records are gossiped: only a record that peers would accept (well-formed, signed) is taken.
        let record: MemberRecord
        try {
          [record] = parseGossip({ type: 'gossip', view: [{ peerId: m.peerId, addresses: m.addresses, incarnation: m.incarnation, heartbeat: m.heartbeat, left: true, ...(m.removedBy === undefined ? {} : { removedBy: m.removedBy }), sig: m.sig }] }) as [MemberRecord]
          if (!verifyClaim(record)) throw new InvalidMessageError('bad signature')
        } catch {
          this.c.log?.('ignoring a malformed saved member %s', String(m.peerId).slice(0, 140))
          continue
        }
        const lastSeen = Number.isSafeInteger(m.lastSeen) && (m.lastSeen as number) <= this.now() ? m.lastSeen as number : this.now()
        this.known.set(m.peerId, { ...record, updatedAt: lastSeen })
        this.candidates.delete(m.peerId)
      } else {
        this.addCandidate(m.peerId, m.addresses)
      }
    }
  }

  /** A peer learned of elsewhere (bootstrap, DHT, disk): contacted on the next round */
  addCandidate (peerId: string, addresses: string[] = []): void {
    if (peerId === this.c.peerId || this.known.has(peerId)) return
    this.candidates.set(peerId, [...new Set([...(this.candidates.get(peerId) ?? []), ...addresses])])
  }

  /**
   * Whether a peer may use the replica protocol: a member this node knows,
   * or one that left by itself (it is still handing its records over). A
   * peer removed by another member is not, until it rejoins.
   */
  mayReplicate (peerId: string): boolean {
    if (peerId === this.c.peerId) return true
    const k = this.known.get(peerId)
    return k !== undefined && k.removedBy === undefined
  }

  stateOf (peerId: string): MemberStatus['state'] | undefined {
    if (peerId === this.c.peerId) return this.self.left === true ? 'left' : 'alive'
    const k = this.known.get(peerId)
    return k === undefined ? undefined : this.state(k)
  }

  private state (k: Known): MemberStatus['state'] {
    if (k.left === true) return 'left'
    const age = this.now() - k.updatedAt
    if (age > this.downAfterMs) return 'down'
    if (age > this.suspectAfterMs) return 'suspect'
    return 'alive'
  }

  /** Every member this node knows, itself first */
  members (): MemberStatus[] {
    const self: MemberStatus = { peerId: this.c.peerId, state: this.self.left === true ? 'left' : 'alive', addresses: this.c.addresses(), lastSeen: this.now() }
    const others = [...this.known.values()]
      .sort((a, b) => a.peerId < b.peerId ? -1 : 1)
      .map(k => {
        const offset = this.offsets.get(k.peerId)
        return { peerId: k.peerId, state: this.state(k), addresses: k.addresses, lastSeen: k.updatedAt, ...(offset === undefined ? {} : { clockOffsetMs: offset }) }
      })
    return [self, ...others]
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
   * refutes it with a new incarnation (see `merge`), and is a member again.
   */
  remove (peerId: string, by?: string): MemberStatus {
    if (peerId === this.c.peerId) throw new ValidationError('A node cannot remove itself')
    const k = this.known.get(peerId)
    if (k === undefined) throw new NotFoundError(`No member ${peerId}`)
    const state = this.state(k)
    if (state === 'alive' || state === 'suspect') {
      throw new ConflictError(`${peerId} is ${state}: only a down member can be removed (stop it, then wait until it is down)`)
    }
    if (state !== 'left') {
      // Far ahead of any heartbeat the member sent before it went down, so the mark wins everywhere.
      // Signed by this node, which names itself: a removal is the one claim a member makes about another.
      const { updatedAt: _, sig: _s, ...record } = k
      const removal = signClaim({ ...record, left: true, heartbeat: k.heartbeat + REMOVAL_BUMP, removedBy: this.c.peerId }, this.c.sign)
      this.known.set(peerId, { ...removal, updatedAt: this.now() })
      this.c.log?.('member %s removed%s', peerId, by === undefined ? '' : ` by ${by}`)
      this.checkChanges()
      void Promise.allSettled(this.pickTargets().map(async p => await this.gossip(p)))
    }
    const after = this.known.get(peerId) as Known
    return { peerId, state: 'left', addresses: after.addresses, lastSeen: after.updatedAt }
  }

  /**
   * Marks this node as leaving and tells a few members (the rest learn by
   * gossip): from now on no member, this one included, counts it on the ring.
   */
  async leave (): Promise<void> {
    this.self.left = true
    this.self.heartbeat++
    this.signSelf()
    this.checkChanges()
    await Promise.allSettled(this.pickTargets().map(async p => await this.gossip(p)))
  }

  /** This node has announced that it is leaving */
  get leaving (): boolean {
    return this.self.left === true
  }

  private async tick (): Promise<void> {
    this.round++
    this.self.heartbeat++
    this.self.addresses = this.c.addresses()
    this.signSelf()
    const targets = this.pickTargets()
    // Candidates are tried every round until they answer; a down member now and then, to see it return.
    const candidates = [...this.candidates.keys()].slice(0, 8)
    const down = [...this.known.values()].filter(k => this.state(k) === 'down')
    const revisit = down.length > 0 && this.round % 5 === 0 ? [down[this.round % down.length] as Known] : []
    await Promise.allSettled([
      ...targets.map(async p => await this.gossip(p)),
      ...candidates.map(async p => await this.gossip(p)),
      ...revisit.map(async k => await this.gossip(k.peerId))
    ])
    this.checkChanges()
  }

  private pickTargets (): string[] {
    const pool = [...this.known.values()].filter(k => { const s = this.state(k); return s === 'alive' || s === 'suspect' }).map(k => k.peerId)
    for (let i = pool.length - 1; i > 0; i--) {
      const j = Math.floor(this.env.random() * (i + 1))
      const t = pool[i] as string
      pool[i] = pool[j] as string
      pool[j] = t
    }
    return pool.slice(0, this.fanout)
  }

  private async gossip (peerId: string): Promise<void> {
    const addresses = this.known.get(peerId)?.addresses ?? this.candidates.get(peerId) ?? []
    try {
      const k = this.known.get(peerId)
      if (this.c.connect !== undefined && (k === undefined || this.state(k) !== 'alive')) {
        await this.c.connect(peerId, addresses)
      }
      const sent = this.now()
      const reply = parseGossipMessage(await this.c.transport.request(peerId, 'membership', { type: 'gossip', view: this.view(), now: sent }, { timeout: this.heartbeatMs * 2 }))
      const received = this.now()
      this.merge(reply.view, peerId)
      this.candidates.delete(peerId)
      if (reply.now !== undefined && this.known.has(peerId)) this.measureClock(peerId, reply.now, sent, received)
    } catch (err) {
      this.c.log?.('gossip with %s failed: %s', peerId, (err as Error).message)
    }
  }

  private async onMessage (msg: unknown, from: string): Promise<unknown> {
    const view = parseGossip(msg)
    if (!this.known.has(from)) {
      // A peer becomes a member only by a signed join of its own: its own record, signed with its key.
      const own = view.find(r => r.peerId === from)
      if (own === undefined || own.removedBy !== undefined || !verifyClaim(own) || !countersInRange(own, this.now())) {
        this.report(from, `refused membership gossip from ${from}: not a member, and the message carries no valid signed join of its own`)
        throw new ForbiddenError('Not a member of this network: a peer joins by sending its own record, signed with its identity key')
      }
    }
    this.merge(view, from)
    this.checkChanges()
    return { type: 'gossip', view: this.view(), now: this.now() }
  }

  /**
   * Compares a member's clock, read while it answered, with this node's. The
   * reading was taken somewhere within the round, so the offset is known to
   * within half of it; a member is reported only when it is beyond the
   * tolerated skew whatever the delays were.
   */
  private measureClock (peerId: string, theirs: number, sent: number, received: number): void {
    const round = Math.max(0, received - sent)
    const offset = Math.round(theirs - (sent + received) / 2)
    this.offsets.set(peerId, offset)
    if (Math.abs(offset) - round / 2 <= MAX_CLOCK_SKEW_MS) return
    const seconds = Math.round(Math.abs(offset) / 1000)
    const tolerated = `the network tolerates ${MAX_CLOCK_SKEW_MS / 1000} s`
    this.report(`${peerId}/clock`, offset > 0
      ? `member ${peerId}'s clock is ${seconds} s ahead of this node's (${tolerated}): its writes win conflicts they should not; fix its time (NTP)`
      : `member ${peerId}'s clock is ${seconds} s behind this node's (${tolerated}): its writes lose conflicts they should win; fix its time, or this node's (NTP)`)
  }

  private view (): MemberRecord[] {
    const out: MemberRecord[] = [{ ...this.self }]
    for (const k of this.known.values()) {
      const { updatedAt: _, ...record } = k
      out.push(record)
    }
    return out
  }

  private merge (view: MemberRecord[], from: string): void {
    for (const r of view) {
      if (r.peerId === this.c.peerId) {
        // Removed by an operator while this node was still running (cut off, not dead): it refutes the
        // mark with a new incarnation, which outranks it everywhere, rather than flapping in and out.
        if (r.left === true && this.self.left !== true && r.incarnation >= this.self.incarnation && this.acceptable(r, from)) {
          this.self.incarnation = Math.max(this.now(), r.incarnation + 1)
          this.self.heartbeat = 0
          this.signSelf()
          this.c.log?.('this node was marked as removed; rejoining with a new incarnation')
        }
        continue
      }
      const k = this.known.get(r.peerId)
      if (k === undefined && r.peerId !== from) {
        // A peer becomes a member only by a join of its own: one heard of through others is contacted
        // (it must answer, over a connection that carries the network key) before it counts.
        if (r.left !== true && !this.candidates.has(r.peerId) && this.candidates.size < MAX_CANDIDATES && this.acceptable(r, from)) {
          this.addCandidate(r.peerId, r.addresses)
          if (r.addresses.length > 0) this.c.learned?.(r.peerId, r.addresses)
        }
        continue
      }
      // A member is the authority on itself: a restart whose clock went back still counts.
      // Except that it cannot undo its removal within the same incarnation: it is told, and refutes it with a new one.
      const removed = k?.left === true && r.left !== true && r.incarnation <= k.incarnation
      const fromItself = r.peerId === from && !removed && (k === undefined || r.incarnation !== k.incarnation || r.heartbeat !== k.heartbeat)
      if (k === undefined || fromItself || r.incarnation > k.incarnation || (r.incarnation === k.incarnation && r.heartbeat > k.heartbeat)) {
        if (!this.acceptable(r, from)) continue
        this.known.set(r.peerId, { ...r, updatedAt: this.now() })
        this.candidates.delete(r.peerId)
        if (r.addresses.length > 0 && r.addresses.join(' ') !== k?.addresses.join(' ')) this.c.learned?.(r.peerId, r.addresses)
      }
    }
    // The sender answered, so it is alive now even if its record lags.
    const sender = this.known.get(from)
    if (sender !== undefined && !view.some(r => r.peerId === from)) sender.updatedAt = this.now()
  }

  /**
   * Whether a record that would change this node's view may: signed by its
   * member (or, for a removal, by another member this node knows and counts
   * as up), with counters in range. A refused record is reported and
   * dropped, never passed on.
   */
  private acceptable (r: MemberRecord, from: string): boolean {
    let why: string | undefined
    if (!countersInRange(r, this.now())) why = `counters out of range (incarnation ${r.incarnation}, heartbeat ${r.heartbeat})`
    else if (!verifyClaim(r)) why = r.removedBy === undefined ? 'not signed by the member itself' : `not a removal signed by ${r.removedBy}`
    else if (r.removedBy !== undefined) {
      const remover = this.known.get(r.removedBy)
      const target = this.known.get(r.peerId)
      if (r.removedBy !== this.c.peerId && (remover === undefined || remover.left === true)) why = `removed by ${r.removedBy}, which is not a member`
      // Only a down member may be removed: one this node hears from is not taken out on another's word.
      else if (target !== undefined && target.left !== true && this.state(target) === 'alive') why = `a removal of ${r.peerId}, which this node hears from`
    }
    if (why === undefined) return true
    this.report(from, `refused a membership claim about ${r.peerId} from ${from}: ${why}`)
    return false
  }

  /** Reports a refusal, at most once a minute per sender (a hostile peer could send thousands) */
  report (from: string, line: string): void {
    const now = this.now()
    const last = this.reported.get(from)
    if (last !== undefined && now - last < 60_000) return
    if (this.reported.size > 1000) this.reported.clear()
    this.reported.set(from, now)
    ;(this.c.warn ?? ((m: string) => this.c.log?.(m)))(line)
  }

  /** Signs this node's own record after any change to it */
  private signSelf (): void {
    Object.assign(this.self, signClaim(this.self, this.c.sign))
  }

  private checkChanges (): void {
    const live = this.members().map(m => `${m.peerId}:${m.state}`).sort().join(',')
    if (live !== this.lastLive) {
      this.lastLive = live
      for (const fn of this.listeners) fn()
    }
    const all: SavedMember[] = [...this.known.values()].map(k => k.left === true
      ? { peerId: k.peerId, addresses: k.addresses, left: true, incarnation: k.incarnation, heartbeat: k.heartbeat, ...(k.removedBy === undefined ? {} : { removedBy: k.removedBy }), ...(k.sig === undefined ? {} : { sig: k.sig }), lastSeen: k.updatedAt }
      : { peerId: k.peerId, addresses: k.addresses })
    const key = JSON.stringify(all)
    if (key !== this.persisted && this.c.persist !== undefined) {
      this.persisted = key
      void this.c.persist(all).catch(err => this.c.log?.('saving members failed: %s', (err as Error).message))
    }
  }
}

/** Checks a gossip message's shape; anything else is an InvalidMessageError */
export function parseGossip (msg: unknown): MemberRecord[] {
  return parseGossipMessage(msg).view
}

/** A gossip message: the view, and the sender's clock reading (ms since the epoch) when it sent one; older nodes do not */
export function parseGossipMessage (msg: unknown): { view: MemberRecord[], now?: number } {
  const m = msg as { type?: unknown, view?: unknown, now?: unknown }
  if (m === null || typeof m !== 'object' || m.type !== 'gossip' || !Array.isArray(m.view)) {
    throw new InvalidMessageError('membership: expected { type: "gossip", view: [...] }')
  }
  if (m.now !== undefined && (!Number.isSafeInteger(m.now) || (m.now as number) < 0)) {
    throw new InvalidMessageError('membership: malformed clock reading')
  }
  const view = parseView(m.view)
  return m.now === undefined ? { view } : { view, now: m.now as number }
}

function parseView (list: unknown[]): MemberRecord[] {
  if (list.length > MAX_VIEW) throw new InvalidMessageError(`membership: view of ${list.length} members exceeds ${MAX_VIEW}`)
  return list.map((r: any) => {
    if (r === null || typeof r !== 'object' || typeof r.peerId !== 'string' || !PEER_ID_RE.test(r.peerId) ||
        !Array.isArray(r.addresses) || r.addresses.length > 64 || !r.addresses.every((a: unknown) => typeof a === 'string' && a.length < 512) ||
        !Number.isSafeInteger(r.incarnation) || !Number.isSafeInteger(r.heartbeat)) {
      throw new InvalidMessageError('membership: malformed member record')
    }
    if ((r.removedBy !== undefined && (typeof r.removedBy !== 'string' || !PEER_ID_RE.test(r.removedBy))) ||
        (r.sig !== undefined && (typeof r.sig !== 'string' || r.sig.length > 200)) ||
        (r.zone !== undefined && (typeof r.zone !== 'string' || r.zone.length > 100))) {
      throw new InvalidMessageError('membership: malformed member record')
    }
    const rec: MemberRecord = { peerId: r.peerId, addresses: r.addresses, incarnation: r.incarnation, heartbeat: r.heartbeat }
    if (r.left === true) rec.left = true
    if (typeof r.zone === 'string') rec.zone = r.zone
    if (typeof r.removedBy === 'string') rec.removedBy = r.removedBy
    if (typeof r.sig === 'string') rec.sig = r.sig
    return rec
  })
}
