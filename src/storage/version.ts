/**
 * Hybrid logical clock versions. A version is a string that sorts in causal
 * order within one node and by (wall ms, counter, node) across nodes:
 * `000001732300000000.000000.<node>`, so LevelDB key order and string
 * comparison agree with version order.
 */
export interface Hlc {
  wall: number
  counter: number
  node: string
}

const WALL_DIGITS = 15
const COUNTER_DIGITS = 6
const MAX_COUNTER = 999_999
/**
 * The clock skew the network tolerates: a remote clock further ahead than
 * this is not followed (a peer with a broken clock would drag every node's
 * versions ahead with it), and a member beyond it is logged (see membership).
 * Its versions still sort after their parents (see `tickAfter`).
 */
export const MAX_CLOCK_DRIFT_MS = 60_000
export const MAX_CLOCK_SKEW_MS = MAX_CLOCK_DRIFT_MS

export function formatVersion (h: Hlc): string {
  return `${String(h.wall).padStart(WALL_DIGITS, '0')}.${String(h.counter).padStart(COUNTER_DIGITS, '0')}.${h.node}`
}

const VERSION_RE = /^(\d{15})\.(\d{6})\.([A-Za-z0-9_-]{1,64})$/

export function parseVersion (v: string): Hlc | undefined {
  const m = VERSION_RE.exec(v)
  if (m === null) return undefined
  return { wall: Number(m[1]), counter: Number(m[2]), node: m[3] ?? '' }
}

export function isVersion (v: unknown): v is string {
  return typeof v === 'string' && VERSION_RE.test(v)
}

export function compareVersions (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

/** A hybrid logical clock: monotonic per node, never behind any version it has seen */
export class HybridClock {
  private wall = 0
  private counter = 0
  readonly node: string
  private readonly now: () => number

  constructor (node: string, now: () => number = Date.now) {
    this.node = node
    this.now = now
  }

  /** A new version, greater than every version this clock has issued or observed */
  tick (): string {
    const physical = this.now()
    if (physical > this.wall) {
      this.wall = physical
      this.counter = 0
    } else if (this.counter >= MAX_COUNTER) {
      this.wall += 1
      this.counter = 0
    } else {
      this.counter += 1
    }
    return formatVersion({ wall: this.wall, counter: this.counter, node: this.node })
  }

  /**
   * A new version for a write with these parents, above every one of them even
   * when a parent comes from a clock running ahead further than `observe`
   * follows: then it is the greatest parent's successor (same wall, counter + 1,
   * this node's tag), and the clock itself stays where it is.
   */
  tickAfter (parents: readonly string[]): string {
    const version = this.tick()
    let top: string | undefined
    for (const p of parents) if (top === undefined || compareVersions(p, top) > 0) top = p
    if (top === undefined || compareVersions(version, top) > 0) return version
    const h = parseVersion(top)
    if (h === undefined) return version
    return h.counter >= MAX_COUNTER
      ? formatVersion({ wall: h.wall + 1, counter: 0, node: this.node })
      : formatVersion({ wall: h.wall, counter: h.counter + 1, node: this.node })
  }

  /** Folds a version seen from elsewhere into the clock */
  observe (version: string): void {
    const h = parseVersion(version)
    if (h === undefined) return
    if (h.wall > this.now() + MAX_CLOCK_DRIFT_MS) return
    if (h.wall > this.wall || (h.wall === this.wall && h.counter > this.counter)) {
      this.wall = h.wall
      this.counter = h.counter
    }
  }
}

/** A short, stable node tag for versions, taken from the peer id */
export function nodeTag (peerId: string): string {
  return peerId.slice(-10)
}
