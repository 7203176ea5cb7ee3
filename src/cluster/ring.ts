import { createHash } from 'node:crypto'
import { TOKEN_HEX } from './token.js'

/** Virtual nodes per member: enough for max/mean load under 1.25 on a 1,000-member ring */
export const DEFAULT_VNODES = 256

/** A ring member; `zone` is kept for zone-aware placement (planned) */
export interface RingMember {
  peerId: string
  zone?: string
}

export interface RingInit {
  /** Virtual nodes per member. @default 256 */
  vnodes?: number
}

/**
 * Consistent hashing with virtual nodes: each member owns the token ranges
 * that end at its points (SHA-256 of peer id and index). A key's preference
 * list is the first N distinct members clockwise from its token.
 *
 * Placement only ever needs this in-memory view. Past thousands of members a
 * different `Placement` (e.g. the DHT's XOR-closest peers) can stand in.
 */
export class HashRing implements Placement {
  private readonly vnodes: number
  private points: string[] = []
  private owners: string[] = []
  private readonly members = new Map<string, RingMember>()

  constructor (init: RingInit = {}) {
    this.vnodes = init.vnodes ?? DEFAULT_VNODES
  }

  get size (): number {
    return this.members.size
  }

  has (peerId: string): boolean {
    return this.members.has(peerId)
  }

  list (): RingMember[] {
    return [...this.members.values()]
  }

  /** Replaces the member set, rebuilding the ring only when it changed */
  setMembers (members: RingMember[]): boolean {
    const ids = members.map(m => m.peerId).sort()
    const current = [...this.members.keys()].sort()
    if (ids.length === current.length && ids.every((id, i) => id === current[i])) return false
    this.members.clear()
    for (const m of members) this.members.set(m.peerId, m)
    this.rebuild()
    return true
  }

  add (member: RingMember): void {
    if (this.members.has(member.peerId)) return
    this.members.set(member.peerId, member)
    this.rebuild()
  }

  remove (peerId: string): void {
    if (this.members.delete(peerId)) this.rebuild()
  }

  private rebuild (): void {
    const pairs: Array<[string, string]> = []
    for (const peerId of this.members.keys()) {
      for (let i = 0; i < this.vnodes; i++) pairs.push([pointOf(peerId, i), peerId])
    }
    pairs.sort((a, b) => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : 1)
    this.points = pairs.map(p => p[0])
    this.owners = pairs.map(p => p[1])
  }

  /** The first `n` distinct members clockwise from `token` (fewer when the ring is smaller) */
  preferenceList (token: string, n: number): string[] {
    const out: string[] = []
    const total = this.points.length
    if (total === 0) return out
    const want = Math.min(n, this.members.size)
    let i = lowerBound(this.points, token)
    for (let step = 0; step < total && out.length < want; step++, i++) {
      const owner = this.owners[i % total] as string
      if (!out.includes(owner)) out.push(owner)
    }
    return out
  }

  /**
   * The ring's arcs in token order, each with its preference list: arc `i`
   * holds the tokens after point `i - 1` up to and including point `i` (the
   * first arc also takes the tokens after the last point: it wraps). Every
   * token lies in exactly one arc.
   */
  arcs (n: number): Array<{ after?: string, upTo: string, owners: string[] }> {
    return this.points.map((upTo, i) => ({
      ...(i === 0 ? {} : { after: this.points[i - 1] as string }),
      upTo,
      owners: this.preferenceList(upTo, n)
    }))
  }

  /**
   * The token space cut into [from, to) ranges (`to` '' for the ring's end),
   * each with its first `n` distinct members: neighbouring arcs with the
   * same members are one range. A point belongs to the arc that ends at it.
   */
  ranges (n: number): Array<{ from: string, to: string, owners: string[] }> {
    const total = this.points.length
    if (total === 0) return []
    const out: Array<{ from: string, to: string, owners: string[] }> = []
    const push = (from: string, to: string, owners: string[]): void => {
      const last = out[out.length - 1]
      if (last !== undefined && last.to === from && sameSet(last.owners, owners)) last.to = to
      else out.push({ from, to, owners })
    }
    // Tokens are fixed-length hex: t > p exactly when t >= p + '\u0000'.
    push('', (this.points[0] as string) + '\u0000', this.preferenceList(this.points[0] as string, n))
    for (let i = 1; i < total; i++) {
      push((this.points[i - 1] as string) + '\u0000', (this.points[i] as string) + '\u0000', this.preferenceList(this.points[i] as string, n))
    }
    push((this.points[total - 1] as string) + '\u0000', '', this.preferenceList(this.points[0] as string, n))
    return out
  }

  /** Each member's fraction of the token space (as primary owner) */
  shares (): Map<string, number> {
    const shares = new Map<string, number>()
    const total = this.points.length
    if (total === 0) return shares
    const space = 2 ** (TOKEN_HEX * 4)
    for (let i = 0; i < total; i++) {
      const start = i === 0 ? tokenNumber(this.points[total - 1] as string) - space : tokenNumber(this.points[i - 1] as string)
      const width = (tokenNumber(this.points[i] as string) - start) / space
      const owner = this.owners[i] as string
      shares.set(owner, (shares.get(owner) ?? 0) + width)
    }
    return shares
  }
}

/** Where keys live: the ring, or any other strategy with the same answer shape */
export interface Placement {
  preferenceList: (token: string, n: number) => string[]
}

/** Point `index` of a member on the ring */
export function pointOf (peerId: string, index: number): string {
  return createHash('sha256').update(`${peerId}#${index}`).digest('hex').slice(0, TOKEN_HEX)
}

function lowerBound (sorted: string[], token: string): number {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((sorted[mid] as string) < token) lo = mid + 1
    else hi = mid
  }
  return lo
}

function sameSet (a: string[], b: string[]): boolean {
  return a.length === b.length && a.every(x => b.includes(x))
}

function tokenNumber (token: string): number {
  return parseInt(token, 16)
}
