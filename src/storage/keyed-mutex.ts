/**
 * Per-key exclusive locks. `lock(keys)` takes every key in sorted order (so
 * two callers never deadlock) and returns a release function.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>()

  async lock (keys: Iterable<string>): Promise<() => void> {
    const sorted = [...new Set(keys)].sort()
    const releases: Array<() => void> = []
    for (const key of sorted) {
      const prev = this.tails.get(key) ?? Promise.resolve()
      let release!: () => void
      const mine = new Promise<void>(resolve => { release = resolve })
      const tail = prev.then(async () => await mine)
      this.tails.set(key, tail)
      releases.push(() => {
        release()
        if (this.tails.get(key) === tail) this.tails.delete(key)
      })
      await prev
    }
    return () => { for (const r of releases) r() }
  }

  get size (): number {
    return this.tails.size
  }
}
