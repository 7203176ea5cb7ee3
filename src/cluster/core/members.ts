import { ConflictError, ForbiddenError, InvalidMessageError, NotFoundError, ValidationError } from '../../errors/index.js'
import type { MemberStatus } from '../coordinator.js'
import { memberState } from '../decisions.js'
import { countersInRange, REMOVAL_BUMP, signClaim, verifyClaim, type Signer } from '../member-claims.js'
import { MAX_CLOCK_SKEW_MS } from '../../storage/version.js'
import type { LogEffect } from './effects.js'

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

/** How many members a gossip message may describe (a bound on hostile input) */
export const MAX_VIEW = 10_000

const PEER_ID_RE = /^[A-Za-z0-9]{8,128}$/
/** Peers heard of and not yet answered that are kept to be contacted (a bound on what others' gossip can add) */
const MAX_CANDIDATES = 1000

/** What the membership core wants done; the driver takes them with ready() after each input */
export type MemberEffect =
  /** Exchange views with this peer (push-pull); `connect`: dial it at `addresses` first (it is not known alive) */
  | { type: 'gossip', peer: string }
  /** The states of the members changed: the ring is to be recomputed */
  | { type: 'changed' }
  /** The member list to save (so a restarted node rejoins without a bootstrap address) */
  | { type: 'persist', members: SavedMember[] }
  /** Where a member can be reached, as gossip says (the network layer may dial it by its id) */
  | { type: 'learned', peerId: string, addresses: string[] }
  /** A refusal or a clock beyond the tolerated skew, to report (already limited to one per sender per minute) */
  | { type: 'warn', line: string }
  | LogEffect

export interface MemberViewInit {
  peerId: string
  /** Signs with this node's identity key: every claim this node makes about itself is signed */
  sign: Signer
  /** The time this run began (the incarnation), ms since the epoch */
  now: number
  suspectAfterMs: number
  downAfterMs: number
  /** Members gossiped with per round */
  fanout: number
}

/**
 * The membership view as a state machine with no I/O: gossip-style
 * heartbeats (each member bumps its own counter; views are exchanged
 * push-pull with a few random members per round) and failure detection by
 * silence (a member whose counter stops moving is suspect, then down).
 * Time and random draws come in as arguments; the gossip to send, the
 * saves, the changes and the lines to report come out through ready().
 * Membership (membership.ts) is its driver: it runs the heartbeat timer and
 * the transport, and saves the list.
 */
export class MemberView {
  private readonly init: MemberViewInit
  private readonly known = new Map<string, Known>()
  /** Peers heard of (bootstrap, DHT, disk) but not yet answered */
  private readonly candidates = new Map<string, string[]>()
  private readonly self: MemberRecord
  private lastLive = ''
  private persisted = ''
  private round = 0
  /** Senders reported lately (refused claims), and when: one line per sender per minute */
  private readonly reported = new Map<string, number>()
  /** Each member's clock minus this node's, as last measured by a gossip round with it (ms) */
  private readonly offsets = new Map<string, number>()
  private out: MemberEffect[] = []

  constructor (init: MemberViewInit) {
    this.init = init
    this.self = { peerId: init.peerId, addresses: [], incarnation: init.now, heartbeat: 0 }
    this.signSelf()
    if (!verifyClaim(this.self)) throw new Error(`membership: the signing key is not the key of ${init.peerId}`)
  }

  /** The effects of the inputs since the last call, in order (etcd's Ready) */
  ready (): MemberEffect[] {
    const out = this.out
    this.out = []
    return out
  }

  private log (msg: string, ...args: unknown[]): void {
    this.out.push({ type: 'log', msg, args })
  }

  /** See Membership.restore */
  restore (saved: SavedMember[], now: number): void {
    for (const m of saved) {
      if (m.peerId === this.init.peerId) continue
      if (m.left === true && Number.isSafeInteger(m.incarnation) && Number.isSafeInteger(m.heartbeat) && typeof m.sig === 'string') {
        if (this.known.has(m.peerId)) continue
        // Known records are gossiped: only a record that peers would accept (well-formed, signed) is taken.
        let record: MemberRecord
        try {
          [record] = parseGossip({ type: 'gossip', view: [{ peerId: m.peerId, addresses: m.addresses, incarnation: m.incarnation, heartbeat: m.heartbeat, left: true, ...(m.removedBy === undefined ? {} : { removedBy: m.removedBy }), sig: m.sig }] }) as [MemberRecord]
          if (!verifyClaim(record)) throw new InvalidMessageError('bad signature')
        } catch {
          this.log('ignoring a malformed saved member %s', String(m.peerId).slice(0, 140))
          continue
        }
        const lastSeen = Number.isSafeInteger(m.lastSeen) && (m.lastSeen as number) <= now ? m.lastSeen as number : now
        this.known.set(m.peerId, { ...record, updatedAt: lastSeen })
        this.candidates.delete(m.peerId)
      } else {
        this.addCandidate(m.peerId, m.addresses)
      }
    }
  }

  /** A peer learned of elsewhere (bootstrap, DHT, disk): contacted on the next round */
  addCandidate (peerId: string, addresses: string[] = []): void {
    if (peerId === this.init.peerId || this.known.has(peerId)) return
    this.candidates.set(peerId, [...new Set([...(this.candidates.get(peerId) ?? []), ...addresses])])
  }

  /** See Membership.mayReplicate */
  mayReplicate (peerId: string): boolean {
    if (peerId === this.init.peerId) return true
    const k = this.known.get(peerId)
    return k !== undefined && k.removedBy === undefined
  }

  stateOf (peerId: string, now: number): MemberStatus['state'] | undefined {
    if (peerId === this.init.peerId) return this.self.left === true ? 'left' : 'alive'
    const k = this.known.get(peerId)
    return k === undefined ? undefined : this.state(k, now)
  }

  private state (k: Known, now: number): MemberStatus['state'] {
    return memberState(k.left === true, now - k.updatedAt, this.init.suspectAfterMs, this.init.downAfterMs)
  }

  /** Every member this node knows, itself first (`addresses`: this node's own, now) */
  members (now: number, addresses: string[]): MemberStatus[] {
    const self: MemberStatus = { peerId: this.init.peerId, state: this.self.left === true ? 'left' : 'alive', addresses, lastSeen: now }
    const others = [...this.known.values()]
      .sort((a, b) => a.peerId < b.peerId ? -1 : 1)
      .map(k => {
        const offset = this.offsets.get(k.peerId)
        return { peerId: k.peerId, state: this.state(k, now), addresses: k.addresses, lastSeen: k.updatedAt, ...(offset === undefined ? {} : { clockOffsetMs: offset }) }
      })
    return [self, ...others]
  }

  /** Members alive or suspect, this node aside */
  livePeers (now: number): string[] {
    return [...this.known.values()].filter(k => { const s = this.state(k, now); return s === 'alive' || s === 'suspect' }).map(k => k.peerId)
  }

  /** See Membership.remove; gossips the removal to a few members */
  remove (peerId: string, now: number, random: () => number, by?: string): MemberStatus {
    if (peerId === this.init.peerId) throw new ValidationError('A node cannot remove itself')
    const k = this.known.get(peerId)
    if (k === undefined) throw new NotFoundError(`No member ${peerId}`)
    const state = this.state(k, now)
    if (state === 'alive' || state === 'suspect') {
      throw new ConflictError(`${peerId} is ${state}: only a down member can be removed (stop it, then wait until it is down)`)
    }
    if (state !== 'left') {
      // Far ahead of any heartbeat the member sent before it went down, so the mark wins everywhere.
      // Signed by this node, which names itself: a removal is the one claim a member makes about another.
      const { updatedAt: _, sig: _s, ...record } = k
      const removal = signClaim({ ...record, left: true, heartbeat: k.heartbeat + REMOVAL_BUMP, removedBy: this.init.peerId }, this.init.sign)
      this.known.set(peerId, { ...removal, updatedAt: now })
      this.log('member %s removed%s', peerId, by === undefined ? '' : ` by ${by}`)
      this.checkChanges(now)
      for (const p of this.pickTargets(now, random)) this.out.push({ type: 'gossip', peer: p })
    }
    const after = this.known.get(peerId) as Known
    return { peerId, state: 'left', addresses: after.addresses, lastSeen: after.updatedAt }
  }

  /** This node announces that it is leaving (the driver then gossips it until some member heard it) */
  leave (now: number): void {
    this.self.left = true
    this.self.heartbeat++
    this.signSelf()
    this.checkChanges(now)
  }

  /** This node has announced that it is leaving */
  get leaving (): boolean {
    return this.self.left === true
  }

  /**
   * A heartbeat: bumps this node's counter and picks whom to gossip with: a
   * few live members at random, every candidate until it answers (8 a
   * round), and a down member now and then, to see it return. The driver
   * calls roundDone() once those exchanges ended.
   */
  tick (now: number, addresses: string[], random: () => number): void {
    this.round++
    this.self.heartbeat++
    this.self.addresses = addresses
    this.signSelf()
    const targets = this.pickTargets(now, random)
    const candidates = [...this.candidates.keys()].slice(0, 8)
    const down = [...this.known.values()].filter(k => this.state(k, now) === 'down')
    const revisit = down.length > 0 && this.round % 5 === 0 ? [(down[this.round % down.length] as Known).peerId] : []
    for (const peer of [...targets, ...candidates, ...revisit]) this.out.push({ type: 'gossip', peer })
  }

  /** A heartbeat's exchanges ended: the changes they made are announced and saved */
  roundDone (now: number): void {
    this.checkChanges(now)
  }

  private pickTargets (now: number, random: () => number): string[] {
    const pool = this.livePeers(now)
    for (let i = pool.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1))
      const t = pool[i] as string
      pool[i] = pool[j] as string
      pool[j] = t
    }
    return pool.slice(0, this.init.fanout)
  }

  /** How to reach a peer to gossip with it: its addresses, and whether to dial it first (it is not known alive) */
  contact (peerId: string, now: number): { addresses: string[], dial: boolean } {
    const k = this.known.get(peerId)
    return { addresses: k?.addresses ?? this.candidates.get(peerId) ?? [], dial: k === undefined || this.state(k, now) !== 'alive' }
  }

  /** The gossip message this node sends (its view and its clock) */
  message (now: number): { type: 'gossip', view: MemberRecord[], now: number } {
    return { type: 'gossip', view: this.view(), now }
  }

  /** A peer answered this node's gossip (sent at `sent`, answered at `received`, this node's clock) */
  answered (peerId: string, reply: { view: MemberRecord[], now?: number }, sent: number, received: number): void {
    this.merge(reply.view, peerId, received)
    this.candidates.delete(peerId)
    if (reply.now !== undefined && this.known.has(peerId)) this.measureClock(peerId, reply.now, sent, received)
  }

  /**
   * A peer's gossip: merged, and answered with this node's message. A peer
   * not known becomes a member only by a signed join of its own (its own
   * record, signed with its key); anything else is refused (thrown).
   */
  receive (view: MemberRecord[], from: string, now: number): { type: 'gossip', view: MemberRecord[], now: number } {
    if (!this.known.has(from)) {
      const own = view.find(r => r.peerId === from)
      if (own === undefined || own.removedBy !== undefined || !verifyClaim(own) || !countersInRange(own, now)) {
        this.report(from, `refused membership gossip from ${from}: not a member, and the message carries no valid signed join of its own`, now)
        throw new ForbiddenError('Not a member of this network: a peer joins by sending its own record, signed with its identity key')
      }
    }
    this.merge(view, from, now)
    this.checkChanges(now)
    return this.message(now)
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
      : `member ${peerId}'s clock is ${seconds} s behind this node's (${tolerated}): its writes lose conflicts they should win; fix its time, or this node's (NTP)`, received)
  }

  private view (): MemberRecord[] {
    const out: MemberRecord[] = [{ ...this.self }]
    for (const k of this.known.values()) {
      const { updatedAt: _, ...record } = k
      out.push(record)
    }
    return out
  }

  private merge (view: MemberRecord[], from: string, now: number): void {
    for (const r of view) {
      if (r.peerId === this.init.peerId) {
        // Removed by an operator while this node was still running (cut off, not dead): it refutes the
        // mark with a new incarnation, which outranks it everywhere, rather than flapping in and out.
        if (r.left === true && this.self.left !== true && r.incarnation >= this.self.incarnation && this.acceptable(r, from, now)) {
          this.self.incarnation = Math.max(now, r.incarnation + 1)
          this.self.heartbeat = 0
          this.signSelf()
          this.log('this node was marked as removed; rejoining with a new incarnation')
        }
        continue
      }
      const k = this.known.get(r.peerId)
      if (k === undefined && r.peerId !== from) {
        // A member this node knew before it restarted (saved, so now a candidate) that left meanwhile: known
        // as left, so what is kept for it (hints) is given up, as for any member that left. Else it would
        // stay a candidate that never answers, and its hints would wait for it forever.
        if (r.left === true && this.candidates.has(r.peerId) && this.acceptable(r, from, now)) {
          this.known.set(r.peerId, { ...r, updatedAt: now })
          this.candidates.delete(r.peerId)
          continue
        }
        // A peer becomes a member only by a join of its own: one heard of through others is contacted
        // (it must answer, over a connection that carries the network key) before it counts.
        if (r.left !== true && !this.candidates.has(r.peerId) && this.candidates.size < MAX_CANDIDATES && this.acceptable(r, from, now)) {
          this.addCandidate(r.peerId, r.addresses)
          if (r.addresses.length > 0) this.out.push({ type: 'learned', peerId: r.peerId, addresses: r.addresses })
        }
        continue
      }
      // A member is the authority on itself: a restart whose clock went back still counts.
      // Except that it cannot undo its removal within the same incarnation: it is told, and refutes it with a new one.
      const removed = k?.left === true && r.left !== true && r.incarnation <= k.incarnation
      const fromItself = r.peerId === from && !removed && (k === undefined || r.incarnation !== k.incarnation || r.heartbeat !== k.heartbeat)
      if (k === undefined || fromItself || r.incarnation > k.incarnation || (r.incarnation === k.incarnation && r.heartbeat > k.heartbeat)) {
        if (!this.acceptable(r, from, now)) continue
        this.known.set(r.peerId, { ...r, updatedAt: now })
        this.candidates.delete(r.peerId)
        if (r.addresses.length > 0 && r.addresses.join(' ') !== k?.addresses.join(' ')) this.out.push({ type: 'learned', peerId: r.peerId, addresses: r.addresses })
      }
    }
    // The sender answered, so it is alive now even if its record lags.
    const sender = this.known.get(from)
    if (sender !== undefined && !view.some(r => r.peerId === from)) sender.updatedAt = now
  }

  /**
   * Whether a record that would change this node's view may: signed by its
   * member (or, for a removal, by another member this node knows and counts
   * as up), with counters in range. A refused record is reported and
   * dropped, never passed on.
   */
  private acceptable (r: MemberRecord, from: string, now: number): boolean {
    let why: string | undefined
    if (!countersInRange(r, now)) why = `counters out of range (incarnation ${r.incarnation}, heartbeat ${r.heartbeat})`
    else if (!verifyClaim(r)) why = r.removedBy === undefined ? 'not signed by the member itself' : `not a removal signed by ${r.removedBy}`
    else if (r.removedBy !== undefined) {
      const remover = this.known.get(r.removedBy)
      const target = this.known.get(r.peerId)
      if (r.removedBy !== this.init.peerId && (remover === undefined || remover.left === true)) why = `removed by ${r.removedBy}, which is not a member`
      // Only a down member may be removed: one this node hears from is not taken out on another's word.
      else if (target !== undefined && target.left !== true && this.state(target, now) === 'alive') why = `a removal of ${r.peerId}, which this node hears from`
    }
    if (why === undefined) return true
    this.report(from, `refused a membership claim about ${r.peerId} from ${from}: ${why}`, now)
    return false
  }

  /** Reports a refusal, at most once a minute per sender (a hostile peer could send thousands) */
  report (from: string, line: string, now: number): void {
    const last = this.reported.get(from)
    if (last !== undefined && now - last < 60_000) return
    if (this.reported.size > 1000) this.reported.clear()
    this.reported.set(from, now)
    this.out.push({ type: 'warn', line })
  }

  /** Signs this node's own record after any change to it */
  private signSelf (): void {
    Object.assign(this.self, signClaim(this.self, this.init.sign))
  }

  /** Announces a change of the members' states, and saves the list when it changed */
  checkChanges (now: number): void {
    const live = this.members(now, []).map(m => `${m.peerId}:${m.state}`).sort().join(',')
    if (live !== this.lastLive) {
      this.lastLive = live
      this.out.push({ type: 'changed' })
    }
    const all: SavedMember[] = [...this.known.values()].map(k => k.left === true
      ? { peerId: k.peerId, addresses: k.addresses, left: true, incarnation: k.incarnation, heartbeat: k.heartbeat, ...(k.removedBy === undefined ? {} : { removedBy: k.removedBy }), ...(k.sig === undefined ? {} : { sig: k.sig }), lastSeen: k.updatedAt }
      : { peerId: k.peerId, addresses: k.addresses })
    const key = JSON.stringify(all)
    if (key !== this.persisted) {
      this.persisted = key
      this.out.push({ type: 'persist', members: all })
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
