import { NtsoekheError } from '../errors/index.js'
import type { RecordState, VersionEntry } from '../storage/store.js'
import type { PeerTransport } from './transport.js'

interface Waiting {
  entries: VersionEntry[]
  resolve: () => void
  reject: (err: unknown) => void
}

/** Most version groups sent to one peer in one message */
export const MAX_GROUPS_PER_MESSAGE = 512
/** Most versions in one message: well under what a replica accepts (MAX_ENTRIES) and the frame limit */
export const MAX_ENTRIES_PER_MESSAGE = 2000

/**
 * Splits items into messages of at most `maxItems` items, each `limits`
 * entry capping the sum of its measure over a message (an item over a cap
 * goes alone)
 */
export function chunkBy<T> (items: T[], maxItems: number, limits: Array<{ size: (item: T) => number, max: number }>): T[][] {
  const out: T[][] = []
  let current: T[] = []
  let sums = limits.map(() => 0)
  for (const item of items) {
    const sizes = limits.map(l => l.size(item))
    if (current.length > 0 && (current.length >= maxItems || limits.some((l, i) => (sums[i] as number) + (sizes[i] as number) > l.max))) {
      out.push(current)
      current = []
      sums = limits.map(() => 0)
    }
    current.push(item)
    sums = sums.map((s, i) => s + (sizes[i] as number))
  }
  if (current.length > 0) out.push(current)
  return out
}

/** Splits groups into messages of at most MAX_GROUPS_PER_MESSAGE groups and MAX_ENTRIES_PER_MESSAGE entries (a larger group goes alone) */
export function chunkGroups<T> (groups: T[], size: (g: T) => number): T[][] {
  return chunkBy(groups, MAX_GROUPS_PER_MESSAGE, [{ size, max: MAX_ENTRIES_PER_MESSAGE }])
}

/** Most records in one whole-record message (hand-off, anti-entropy) */
export const MAX_RECORDS_PER_MESSAGE = 512

/**
 * Splits whole records (state and history) into `records` messages of at
 * most MAX_RECORDS_PER_MESSAGE records, MAX_ENTRIES_PER_MESSAGE versions,
 * 50,000 version ids of state and about 4 MiB of rows each (one larger
 * record goes alone)
 */
export function chunkWhole<T extends { state: RecordState, versions: VersionEntry[] }> (records: T[]): T[][] {
  return chunkBy(records, MAX_RECORDS_PER_MESSAGE, [
    { size: q => q.versions.length + q.state.heads.length, max: MAX_ENTRIES_PER_MESSAGE },
    { size: q => q.state.seen.length + q.state.superseded.length, max: 50_000 },
    { size: q => rowBytes(q.state.heads) + rowBytes(q.versions), max: 4 * 1024 * 1024 }
  ])
}

/** About the bytes of some versions' rows as JSON: a bound for a message, not an exact count */
function rowBytes (versions: VersionEntry[]): number {
  let n = 0
  for (const v of versions) {
    if (v.row === null) continue
    for (const value of Object.values(v.row)) n += typeof value === 'string' ? value.length + 16 : 24
  }
  return n
}

/** Whether a peer's `{ results: [{ ok }] }` reply says item `i` succeeded */
export function resultOk (reply: unknown, i: number): boolean {
  return resultAt(reply, i)?.ok === true
}

function resultAt (reply: unknown, i: number): { ok?: unknown, error?: { message?: unknown } } | undefined {
  const results = (reply as { results?: unknown } | null | undefined)?.results
  return Array.isArray(results) ? results[i] as { ok?: unknown, error?: { message?: unknown } } | undefined : undefined
}

/**
 * Coalesces replica `apply` requests bound for the same peer within one turn
 * of the event loop into a single message: one stream round trip carries
 * many writes, and the replica's group commit makes them durable together.
 */
export class ApplyBatcher {
  private readonly transport: PeerTransport
  private readonly timeout: number
  private readonly queues = new Map<string, Waiting[]>()
  private readonly defer: (fn: () => void) => void

  /** `defer` runs a function after the current turn of the event loop (setImmediate, or the simulation's) */
  constructor (transport: PeerTransport, timeout: number, defer: (fn: () => void) => void = fn => { setImmediate(fn) }) {
    this.transport = transport
    this.timeout = timeout
    this.defer = defer
  }

  async send (peerId: string, entries: VersionEntry[]): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      let queue = this.queues.get(peerId)
      if (queue === undefined) {
        queue = []
        this.queues.set(peerId, queue)
        this.defer(() => { this.flush(peerId) })
      }
      queue.push({ entries, resolve, reject })
    })
  }

  private flush (peerId: string): void {
    const queue = this.queues.get(peerId) ?? []
    this.queues.delete(peerId)
    for (const part of chunkGroups(queue, w => w.entries.length)) {
      void this.transport.request(peerId, 'replica', { type: 'apply', groups: part.map(w => w.entries) }, { timeout: this.timeout })
        .then(reply => {
          part.forEach((w, j) => {
            const r = resultAt(reply, j)
            if (r?.ok === true) w.resolve()
            else w.reject(new NtsoekheError('UNAVAILABLE', `replica ${peerId} refused the write: ${String(r?.error?.message ?? 'no answer')}`))
          })
        })
        .catch(err => { for (const w of part) w.reject(err) })
    }
  }
}
