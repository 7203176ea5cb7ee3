import { mergeStates, type RecordState, type VersionEntry } from '../storage/store.js'

export { mergeStates }

/** The merged heads a replica's state lacks: what read repair sends it */
export function missingHeads (merged: RecordState, state: RecordState | undefined): VersionEntry[] {
  const seen = new Set(state?.seen ?? [])
  return merged.heads.filter(h => !seen.has(h.version))
}
