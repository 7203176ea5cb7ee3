import { MemoryLevel } from 'memory-level'
import type { SeededRandom } from './random.js'

type Op = { type: 'put', key: string, value: string } | { type: 'del', key: string }

const base = MemoryLevel.prototype as unknown as {
  _put: (key: string, value: string, options: unknown) => Promise<void>
  _del: (key: string, options: unknown) => Promise<void>
  _batch: (ops: Op[], options: unknown) => Promise<void>
}

/**
 * A node's disk: what survives a crash. Writes reach it as LevelDB's do: a
 * write with `sync` makes itself and every write before it durable; writes
 * without are in the page cache until then, and a power cut keeps only some
 * prefix of them.
 */
export class SimDisk {
  /** Durable contents, key to value */
  readonly durable = new Map<string, string>()
  private current?: CrashableLevel

  /**
   * A database over what is on disk now, as a node opens it at start;
   * `fsync` is how long a synced write takes (a crash meanwhile loses it)
   */
  open (fsync?: () => Promise<void>): CrashableLevel {
    if (this.current !== undefined && !this.current.crashed) throw new Error('the disk is already open')
    const db = new CrashableLevel(this, fsync)
    this.current = db
    return db
  }

  /** Power cut: unsynced writes beyond a random prefix of them are lost, and the open database is dead */
  crash (random: SeededRandom): { lost: number } {
    const db = this.current
    if (db === undefined || db.crashed) return { lost: 0 }
    db.crashed = true
    const kept = random.int(0, db.unsynced.length)
    this.persist(db.unsynced.slice(0, kept))
    const lost = db.unsynced.length - kept
    db.unsynced = []
    return { lost }
  }

  /** @internal */
  persist (ops: Op[]): void {
    for (const op of ops) {
      if (op.type === 'put') this.durable.set(op.key, op.value)
      else this.durable.delete(op.key)
    }
  }

  /** Whether any durable key or value contains `text` */
  contains (text: string): boolean {
    for (const [k, v] of this.durable) if (k.includes(text) || v.includes(text)) return true
    return false
  }
}

/**
 * An in-memory abstract-level database (memory-level, string keys and
 * values) that tracks which of its writes are durable on its SimDisk, and
 * refuses everything once its node crashed
 */
export class CrashableLevel extends MemoryLevel<string, string> {
  crashed = false
  /** Writes since the last synced one, oldest first */
  unsynced: Op[] = []
  private readonly disk: SimDisk
  private readonly fsync?: () => Promise<void>

  constructor (disk: SimDisk, fsync?: () => Promise<void>) {
    super({ storeEncoding: 'utf8' })
    this.disk = disk
    if (fsync !== undefined) this.fsync = fsync
    const ops: Op[] = [...disk.durable].map(([key, value]) => ({ type: 'put', key, value }))
    // Straight into the tree: loading what is on disk is no new write.
    void base._batch.call(this, ops, {})
  }

  private record (ops: Op[], options: unknown): void {
    this.unsynced.push(...ops)
    if ((options as { sync?: boolean } | undefined)?.sync === true) {
      this.disk.persist(this.unsynced)
      this.unsynced = []
    }
  }

  /** Refuses a write once the node crashed; a synced write first waits for its fsync (and fails if the node crashes meanwhile) */
  private async alive (options?: unknown): Promise<void> {
    if (this.crashed) throw new Error('simulated crash: the process is gone')
    if (this.fsync !== undefined && (options as { sync?: boolean } | undefined)?.sync === true) {
      await this.fsync()
      if (this.crashed) throw new Error('simulated crash: the process is gone')
    }
  }

  async _put (key: string, value: string, options: unknown): Promise<void> {
    await this.alive(options)
    await base._put.call(this, key, value, options)
    this.record([{ type: 'put', key, value }], options)
  }

  async _del (key: string, options: unknown): Promise<void> {
    await this.alive(options)
    await base._del.call(this, key, options)
    this.record([{ type: 'del', key }], options)
  }

  async _batch (ops: Op[], options: unknown): Promise<void> {
    await this.alive(options)
    await base._batch.call(this, ops, options)
    this.record(ops.map(op => op.type === 'put' ? { type: 'put', key: op.key, value: op.value } : { type: 'del', key: op.key }), options)
  }
}
