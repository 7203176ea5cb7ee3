/** Types of chaos.js (plain JavaScript, so that `npm run chaos` runs on dist/ without a TypeScript loader) */
export interface ChaosResult {
  ok: boolean
  seed: number
  convergedSeconds: number | null
  results: Array<{ workload: string, acked: number, lost: number, unknown: number }>
  lines: string[]
  problems: string[]
}

export interface ChaosOptions {
  profile?: 'short' | 'full'
  seed?: number
  log?: (line: string) => void
  keep?: boolean
  signal?: AbortSignal
}

export interface ChaosProfile {
  nodes: number
  workloadMs: number
  convergeMs: number
  steps: string[]
  churn: boolean
  stepMs: [number, number]
}

export const PROFILES: Record<'short' | 'full', ChaosProfile>
export function prng (seed: number): { next: () => number, int: (lo: number, hi: number) => number, pick: <T>(list: T[]) => T }
export function runChaos (options?: ChaosOptions): Promise<ChaosResult>
