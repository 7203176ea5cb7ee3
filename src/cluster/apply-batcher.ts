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
    for (let i = 0; i < queue.length; i += MAX_GROUPS_PER_MESSAGE) {
      const part = queue.slice(i, i + MAX_GROUPS_PER_MESSAGE)
      void this.transport.request(peerId, 'replica', { type: 'apply', groups: part.map(w => w.entries) }, { timeout: this.timeout })
        .then(reply => {
          const results = (reply as { results?: Array<{ ok: boolean, error?: { code: string, message: string } }> }).results
          part.forEach((w, j) => {
            const r = results?.[j]
            if (r?.ok === true) w.resolve()
            else w.reject(new NtsoekheError('UNAVAILABLE', `replica ${peerId} refused the write: ${r?.error?.message ?? 'no answer'}`))
          })
        }, err => { for (const w of part) w.reject(err) })
    }
  }
}
