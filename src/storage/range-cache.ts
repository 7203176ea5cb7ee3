import { SEP } from './keys.js'

export interface RangeCacheInit {
  /** Key prefixes (sublevels, e.g. `!o!`) whose ranges are cached; writes to other keys are ignored */
  watched: string[]
  /** Most keys held over all ranges (least recently used ranges go first). @default 100000 */
  maxKeys?: number
  /** Most keys one range may hold to be cached; a larger one is read from LevelDB each time. @default 1000 */
  maxRangeKeys?: number
}

/** A load of one range under way: a write to the range while it runs makes its answer unfit to keep */
interface Load { stale: boolean, promise: Promise<string[] | undefined> }

/** Marks a range too large to cache, so it is not loaded again only to learn that */
const TOO_LARGE: readonly string[] = Object.freeze([])

/**
 * The keys under an index prefix (every entry of one doctor in the
 * doctor-and-date index, say), kept in memory so a query that reads the
 * range again answers without a LevelDB iterator: creating one and paging
 * it costs a thread-pool round trip and a seek through every level, where
 * the keys of a small range are a few hundred bytes.
 *
 * Never stale: every batch the store writes goes through `writing` before
 * LevelDB sees it, which drops each range a written key falls in and keeps
 * it uncached until the batch is durable (its `done`). A load that a write
 * to its range overlapped, at its start, middle or end, is answered but not
 * kept. A range is named by a prefix ending in SEP; a key falls in every
 * range whose prefix is the key cut after one of its SEPs, so a write finds
 * the ranges it changes without a search.
 */
export class RangeCache {
  private readonly watched: string[]
  private readonly maxKeys: number
  private readonly maxRangeKeys: number
  /** Cached ranges in least-recently-used order (a hit moves a range to the end) */
  private readonly ranges = new Map<string, readonly string[]>()
  private readonly loads = new Map<string, Load>()
  /** Ranges a batch being written changes, with how many such batches are under way */
  private readonly busy = new Map<string, number>()
  private held = 0
  /** Ranges answered from memory and read from LevelDB, for tests and status */
  readonly counts = { hits: 0, loads: 0 }

  constructor (init: RangeCacheInit) {
    this.watched = init.watched
    this.maxKeys = init.maxKeys ?? 100_000
    this.maxRangeKeys = init.maxRangeKeys ?? 1000
  }

  /**
   * Every key under `prefix` in order (`load(limit)` reads at most `limit`
   * of them from LevelDB when they are not held), or undefined when the
   * range holds more than maxRangeKeys: the caller reads it itself.
   */
  async keys (prefix: string, load: (limit: number) => Promise<string[]>): Promise<readonly string[] | undefined> {
    const held = this.peek(prefix)
    if (held !== undefined) return held === TOO_LARGE ? undefined : held
    let current = this.loads.get(prefix)
    if (current === undefined) {
      const entry: Load = { stale: this.busy.has(prefix), promise: Promise.resolve(undefined) }
      entry.promise = this.load(prefix, entry, load)
      this.loads.set(prefix, entry)
      current = entry
    }
    return await current.promise
  }

  private peek (prefix: string): readonly string[] | undefined {
    const held = this.ranges.get(prefix)
    if (held === undefined) return undefined
    // Least recently used goes first: a hit moves the range to the end.
    this.ranges.delete(prefix)
    this.ranges.set(prefix, held)
    this.counts.hits++
    return held
  }

  private async load (prefix: string, entry: Load, load: (limit: number) => Promise<string[]>): Promise<string[] | undefined> {
    this.counts.loads++
    try {
      const keys = await load(this.maxRangeKeys + 1)
      const fits = keys.length <= this.maxRangeKeys
      if (!entry.stale && !this.busy.has(prefix)) this.keep(prefix, fits ? keys : TOO_LARGE)
      return fits ? keys : undefined
    } finally {
      if (this.loads.get(prefix) === entry) this.loads.delete(prefix)
    }
  }

  private keep (prefix: string, keys: readonly string[]): void {
    if (keys.length > this.maxKeys) return
    this.drop(prefix)
    this.ranges.set(prefix, keys)
    this.held += keys.length
    for (const [oldest, old] of this.ranges) {
      if (this.held <= this.maxKeys && this.ranges.size <= this.maxKeys) break
      this.ranges.delete(oldest)
      this.held -= old.length
    }
  }

  private drop (prefix: string): void {
    const held = this.ranges.get(prefix)
    if (held === undefined) return
    this.ranges.delete(prefix)
    this.held -= held.length
  }

  /**
   * Called with a batch's operations before it is written: the ranges they
   * change are dropped and stay uncached until the returned `done` is
   * called, once the batch is durable (or failed).
   */
  writing (ops: ReadonlyArray<{ key: string }>): () => void {
    // Each prefix once per batch: a batch of many rows names a table's prefixes once per index entry.
    const touched = new Set<string>()
    for (const op of ops) {
      const start = this.watchedPrefixLength(op.key)
      if (start < 0) continue
      for (let i = op.key.indexOf(SEP, start); i >= 0; i = op.key.indexOf(SEP, i + 1)) touched.add(op.key.slice(0, i + 1))
    }
    if (touched.size === 0) return () => {}
    for (const p of touched) {
      this.busy.set(p, (this.busy.get(p) ?? 0) + 1)
      this.forget(p)
    }
    let done = false
    return () => {
      if (done) return
      done = true
      for (const p of touched) {
        const n = (this.busy.get(p) ?? 1) - 1
        if (n <= 0) this.busy.delete(p)
        else this.busy.set(p, n)
        // A load that began while the batch was under way may have read before it landed.
        this.forget(p)
      }
    }
  }

  /** Drops everything (the store reopened, or its indexes were rebuilt outside `writing`) */
  clear (): void {
    this.ranges.clear()
    this.held = 0
    for (const entry of this.loads.values()) entry.stale = true
    this.loads.clear()
  }

  private forget (prefix: string): void {
    this.drop(prefix)
    const load = this.loads.get(prefix)
    if (load !== undefined) {
      load.stale = true
      this.loads.delete(prefix)
    }
  }

  private watchedPrefixLength (key: string): number {
    for (const w of this.watched) if (key.startsWith(w)) return w.length
    return -1
  }
}
