import { InvalidMessageError } from '../../errors/index.js'
import { MAX_COUNT_RANGES } from '../messages.js'
import { isNoAnswer } from './route.js'
import type { FailEffect, LogEffect } from './effects.js'

/** Live rows per table across the network, each record counted once */
export interface NetworkRowCounts {
  tables: Record<string, number>
  /** Every range was counted on one of its owners */
  complete: boolean
  /** Members that did not answer (their ranges were counted on their next owners) */
  unanswered: string[]
}

/** What a network row count wants done */
export type CountEffect =
  /** Count the rows in these `[from, to)` token ranges on `peer` (this node's store when it is this node): counted() or failed() */
  | { type: 'count', peer: string, ranges: Array<[string, string]> }
  | LogEffect
  | { type: 'done', counts: NetworkRowCounts }
  /** A member refused in a way the caller must see (not a missing answer) */
  | FailEffect

export interface RowCountInit {
  /** The token space cut into ranges, each with its owners in preference order (the ring's `ranges(N)`) */
  ranges: Array<{ from: string, to: string, owners: string[] }>
  /** Members known to be down now: their ranges are counted on the next owners from the start */
  down: (peerId: string) => boolean
}

type Range = { from: string, to: string, owners: string[], next: number }

/**
 * A network row count as a state machine with no I/O. Each range is
 * counted on one of its owners, the first that is not down, every owner's
 * ranges together (MAX_COUNT_RANGES a request, one after another). A member
 * that does not answer (or answers something malformed) is left out: once
 * the current wave of members has answered, its ranges are counted on their
 * next owners, from the copies those hold. A range that none of its owners
 * counted leaves the result incomplete. A refusal that is not a missing
 * answer (a bug) fails the count.
 */
export class RowCount {
  private readonly init: RowCountInit
  private readonly tables: Record<string, number> = {}
  private readonly unanswered = new Set<string>()
  /** Per member of the current wave: its ranges, the chunks still to ask, and what it counted so far */
  private readonly wave = new Map<string, { ranges: Range[], chunks: Array<Array<[string, string]>>, total: Record<string, number> }>()
  /** Ranges of this wave's silent members, for the next wave */
  private retry: Range[] = []
  private uncounted = 0
  private over = false

  constructor (init: RowCountInit) {
    this.init = init
  }

  start (): CountEffect[] {
    return this.nextWave(this.init.ranges.map(r => ({ ...r, next: 0 })))
  }

  /** `peer`'s answer for the chunk it was asked (a peer's raw reply, or this node's counts as `{ tables }`) */
  counted (peer: string, reply: unknown): CountEffect[] {
    const member = this.wave.get(peer)
    if (member === undefined || this.over) return []
    let counts: Record<string, number>
    try {
      counts = checkCounts(reply)
    } catch (err) {
      return this.failed(peer, err)
    }
    for (const [table, n] of Object.entries(counts)) member.total[table] = (member.total[table] ?? 0) + n
    const chunk = member.chunks.shift()
    if (chunk !== undefined) return [{ type: 'count', peer, ranges: chunk }]
    // Counted whole: only now does it add to the result (a member that fails part way is counted elsewhere, all of it).
    for (const [table, n] of Object.entries(member.total)) this.tables[table] = (this.tables[table] ?? 0) + n
    this.wave.delete(peer)
    return this.waveDone()
  }

  /** `peer` gave no answer (or a malformed one): its ranges go to their next owners; anything else fails the count */
  failed (peer: string, error: unknown): CountEffect[] {
    const member = this.wave.get(peer)
    if (member === undefined || this.over) return []
    if (!isNoAnswer(error)) return this.finish({ type: 'fail', error })
    this.wave.delete(peer)
    this.unanswered.add(peer)
    this.retry.push(...member.ranges)
    return [
      { type: 'log', msg: 'row count on %s failed (%s): its ranges go to their next owners', args: [peer, (error as Error).message] },
      ...this.waveDone()
    ]
  }

  private waveDone (): CountEffect[] {
    if (this.wave.size > 0) return []
    const retry = this.retry
    this.retry = []
    return this.nextWave(retry)
  }

  /** Gives each range to its first owner that is neither down nor silent, and asks every such owner for its first chunk */
  private nextWave (pending: Range[]): CountEffect[] {
    const byPeer = new Map<string, Range[]>()
    for (const r of pending) {
      while (r.next < r.owners.length && (this.unanswered.has(r.owners[r.next] as string) || this.init.down(r.owners[r.next] as string))) r.next++
      const owner = r.owners[r.next]
      if (owner === undefined) { this.uncounted++; continue }
      byPeer.set(owner, [...(byPeer.get(owner) ?? []), r])
    }
    if (byPeer.size === 0) {
      const tables = Object.fromEntries(Object.entries(this.tables).sort((a, b) => a[0] < b[0] ? -1 : 1))
      return this.finish({ type: 'done', counts: { tables, complete: this.uncounted === 0, unanswered: [...this.unanswered].sort() } })
    }
    const out: CountEffect[] = []
    for (const [peer, ranges] of byPeer) {
      const merged = mergeRanges(ranges)
      const chunks: Array<Array<[string, string]>> = []
      for (let i = 0; i < merged.length; i += MAX_COUNT_RANGES) chunks.push(merged.slice(i, i + MAX_COUNT_RANGES))
      const first = chunks.shift() as Array<[string, string]>
      this.wave.set(peer, { ranges, chunks, total: {} })
      out.push({ type: 'count', peer, ranges: first })
    }
    return out
  }

  private finish (e: CountEffect): CountEffect[] {
    if (this.over) return []
    this.over = true
    this.wave.clear()
    return [e]
  }
}

/** `[from, to)` token ranges as pairs, sorted, touching ones joined */
export function mergeRanges (ranges: ReadonlyArray<{ from: string, to: string }>): Array<[string, string]> {
  const out: Array<[string, string]> = []
  for (const r of [...ranges].sort((a, b) => a.from < b.from ? -1 : 1)) {
    const last = out[out.length - 1]
    if (last !== undefined && last[1] === r.from && r.from !== '') last[1] = r.to
    else out.push([r.from, r.to])
  }
  return out
}

/** A peer's answer to `count`: table names and non-negative integer counts */
export function checkCounts (reply: unknown): Record<string, number> {
  const tables = (reply as { tables?: unknown } | null)?.tables
  if (tables === null || typeof tables !== 'object' || Array.isArray(tables)) throw new InvalidMessageError('replica: malformed count reply')
  const out: Record<string, number> = {}
  for (const [table, n] of Object.entries(tables as Record<string, unknown>)) {
    if (!Number.isSafeInteger(n) || (n as number) < 0 || table.length > 100) throw new InvalidMessageError('replica: malformed count reply')
    out[table] = n as number
  }
  return out
}
