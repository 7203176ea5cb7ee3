import { compareVersions } from '../storage/version.js'
import type { RecordState, VersionEntry } from '../storage/store.js'

/**
 * Merges what several replicas hold of one record: the union of their heads,
 * less any head that some replica knows to be replaced. Two heads that
 * survive are a real conflict; none is dropped.
 */
export function mergeStates (states: Array<RecordState | undefined>): RecordState | undefined {
  const present = states.filter((s): s is RecordState => s !== undefined)
  const first = present[0]
  if (first === undefined) return undefined
  const superseded = new Set(present.flatMap(s => s.superseded))
  const heads = new Map<string, VersionEntry>()
  for (const s of present) {
    for (const h of s.heads) {
      if (!superseded.has(h.version)) heads.set(h.version, h)
    }
  }
  return {
    table: first.table,
    id: first.id,
    token: first.token,
    heads: [...heads.values()].sort((a, b) => compareVersions(b.version, a.version)),
    seen: [...new Set(present.flatMap(s => s.seen))],
    superseded: [...superseded]
  }
}

/** The merged heads a replica's state lacks: what read repair sends it */
export function missingHeads (merged: RecordState, state: RecordState | undefined): VersionEntry[] {
  const seen = new Set(state?.seen ?? [])
  return merged.heads.filter(h => !seen.has(h.version))
}
