/**
 * One operation of a LevelDB batch, already encoded: the key carries its
 * sublevel prefix and the value is JSON text. Encoding here, once, is far
 * cheaper than abstract-level's per-operation sublevel path.
 */
export type BatchOp =
  | { type: 'put', key: string, value: string }
  | { type: 'del', key: string }

interface Pending {
  ops: BatchOp[]
  resolve: () => void
  reject: (err: unknown) => void
}

export interface GroupCommitInit {
  /**
   * Write with `sync: true` so an acknowledged write survives a power cut.
   * @default true
   */
  sync?: boolean
  /** Most operations folded into one LevelDB batch. @default 20000 */
  maxOps?: number
  /** Runs a function after the current turn of the event loop (the simulation's is on fake time). @default setImmediate */
  defer?: (fn: () => void) => void
}

/**
 * Group commit: writes that arrive while one batch is being made durable are
 * folded into the next single batch, so each fsync carries many writes. Each
 * caller's operations land atomically (they are never split across batches).
 */
export class GroupCommitter {
  private queue: Pending[] = []
  private flushing = false
  private readonly sync: boolean
  private readonly maxOps: number
  private readonly write: (ops: BatchOp[], sync: boolean) => Promise<void>
  private readonly defer: (fn: () => void) => void
  /** Batches written, for status and tests */
  batches = 0
  opsWritten = 0

  constructor (write: (ops: BatchOp[], sync: boolean) => Promise<void>, init: GroupCommitInit = {}) {
    this.write = write
    this.sync = init.sync ?? true
    this.maxOps = init.maxOps ?? 20_000
    this.defer = init.defer ?? (fn => { setImmediate(fn) })
  }

  async commit (ops: BatchOp[]): Promise<void> {
    if (ops.length === 0) return
    await new Promise<void>((resolve, reject) => {
      this.queue.push({ ops, resolve, reject })
      if (!this.flushing) {
        this.flushing = true
        // Let the writes of this turn of the event loop join the first batch.
        this.defer(() => { void this.flush() })
      }
    })
  }

  private async flush (): Promise<void> {
    this.flushing = true
    try {
      while (this.queue.length > 0) {
        const group: Pending[] = []
        let count = 0
        while (this.queue.length > 0 && (group.length === 0 || count + (this.queue[0]?.ops.length ?? 0) <= this.maxOps)) {
          const p = this.queue.shift() as Pending
          group.push(p)
          count += p.ops.length
        }
        const ops = group.length === 1 ? (group[0] as Pending).ops : group.flatMap(p => p.ops)
        try {
          await this.write(ops, this.sync)
          this.batches++
          this.opsWritten += ops.length
          for (const p of group) p.resolve()
        } catch (err) {
          for (const p of group) p.reject(err)
        }
        // The writers just released usually write again at once: give them a turn to join the next batch.
        await new Promise<void>(resolve => { this.defer(resolve) })
      }
    } finally {
      this.flushing = false
    }
  }
}
