import { NtsoekheError } from '../errors/index.js'
import type { VersionEntry } from '../storage/store.js'
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

/** Splits groups into messages of at most MAX_GROUPS_PER_MESSAGE groups and MAX_ENTRIES_PER_MESSAGE entries (a larger group goes alone) */
export function chunkGroups<T> (groups: T[], size: (g: T) => number): T[][] {
  const out: T[][] = []
  let current: T[] = []
  let entries = 0
  for (const g of groups) {
    const n = size(g)
    if (current.length > 0 && (current.length >= MAX_GROUPS_PER_MESSAGE || entries + n > MAX_ENTRIES_PER_MESSAGE)) {
      out.push(current)
      current = []
      entries = 0
    }
    current.push(g)
    entries += n
  }
  if (current.length > 0) out.push(current)
  return out
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

  constructor (transport: PeerTransport, timeout: number) {
    this.transport = transport
    this.timeout = timeout
  }

  async send (peerId: string, entries: VersionEntry[]): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      let queue = this.queues.get(peerId)
      if (queue === undefined) {
        queue = []
        this.queues.set(peerId, queue)
        setImmediate(() => { this.flush(peerId) })
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
          const results = (reply as { results?: unknown } | null | undefined)?.results
          part.forEach((w, j) => {
            const r = Array.isArray(results) ? results[j] as { ok?: unknown, error?: { message?: unknown } } | undefined : undefined
            if (r?.ok === true) w.resolve()
            else w.reject(new NtsoekheError('UNAVAILABLE', `replica ${peerId} refused the write: ${String(r?.error?.message ?? 'no answer')}`))
          })
        })
        .catch(err => { for (const w of part) w.reject(err) })
    }
  }
}
