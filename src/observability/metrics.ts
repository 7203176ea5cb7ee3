/**
 * The node's Prometheus metrics (prom-client), served as `GET /metrics` on
 * the socket and on `--metrics-listen`. Every value is a count, a size, a
 * duration or a state: labels are route templates (`/v1/tables/:table/rows/:id`),
 * methods, status codes, consistency levels, member states and table names,
 * never an id or a row value, so a scrape carries no patient data.
 */
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { CONSISTENCY_LEVELS } from '../cluster/coordinator.js'
import { RequestSeries, type SeriesPoint } from './series.js'

/** What the metrics read from the running node at scrape time */
export interface MetricsSource {
  /** Writes this node keeps for replicas that were down (hinted handoff) */
  hintsPending: () => number
  /** Read repairs sent since start */
  readRepairs: () => number
  rebalance: () => {
    pending: boolean
    last?: { finishedAt: number, records: number, sent: number, dropped: number, failed: number }
    /** The run under way, so far */
    running?: { startedAt: number, records: number, sent: number, dropped: number, failed: number }
  }
  antiEntropy: () => { running: boolean, lastRoundAt: number | null, ranges: number, rangesDiffering: number, recordsSent: number, seconds: number, failed: number, progress?: { done: number, total: number } }
  /** Every member this node knows, with its state */
  members: () => Array<{ state: string }>
  /** This node's live rows per table */
  localRows: () => Promise<Record<string, number>>
  /** The LevelDB directory */
  storePath: string
}

/** One answered request, as the API's onResponse hook sees it */
export interface RequestObservation {
  method: string
  /** The route's template, or `unmatched` */
  route: string
  status: number
  seconds: number
  /** For a successful write: the consistency level it asked for, or `default` (the configured W) */
  writeConsistency?: string
}

/** Member states a gauge is kept for, so a state with no member reads 0 rather than vanishing */
export const MEMBER_STATES = ['alive', 'suspect', 'down', 'left'] as const

/** Request latency buckets, seconds: a local read is sub-millisecond, a quorum write over a slow link seconds */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/**
 * A registry of its own per node (never prom-client's global one), so two
 * nodes in one process (tests) keep their counts apart.
 */
export class NodeMetrics {
  readonly registry = new Registry()
  /** Request rate and latency sampled over the last minutes, for the console's charts */
  readonly series: RequestSeries
  private readonly requests: Counter<'method' | 'route' | 'status'>
  private readonly latency: Histogram<'method' | 'route'>
  private readonly writes: Counter<'consistency'>

  constructor (source: MetricsSource, init: { sampleMs?: number, keepMs?: number } = {}) {
    const registers = [this.registry]
    this.series = new RequestSeries(init)
    collectDefaultMetrics({ register: this.registry })
    this.requests = new Counter({ name: 'ntsoekhe_http_requests_total', help: 'Requests answered on the socket API, by route template, method and status', labelNames: ['method', 'route', 'status'], registers })
    this.latency = new Histogram({ name: 'ntsoekhe_http_request_duration_seconds', help: 'Time to answer a socket API request, by route template and method', labelNames: ['method', 'route'], buckets: LATENCY_BUCKETS, registers })
    this.writes = new Counter({ name: 'ntsoekhe_writes_total', help: 'Successful write requests (insert, update, delete, batch, import, and SQL INSERT, UPDATE or DELETE) by the consistency level they asked for; default is the configured write quorum', labelNames: ['consistency'], registers })
    // Every level is a series from the start, so a scraper's rate() sees the first write rather than a series appearing.
    for (const consistency of [...CONSISTENCY_LEVELS, 'default']) this.writes.inc({ consistency }, 0)

    new Gauge({ name: 'ntsoekhe_hints_pending', help: 'Writes kept for replicas that missed them (hinted handoff)', registers, collect () { this.set(source.hintsPending()) } })
    new Counter({ name: 'ntsoekhe_read_repairs_total', help: 'Stale replicas brought up to date by a read', registers, collect () { this.reset(); this.inc(source.readRepairs()) } })

    new Gauge({ name: 'ntsoekhe_rebalance_pending', help: '1 while a rebalance (records moving to new owners after a ring change) is scheduled or running', registers, collect () { this.set(source.rebalance().pending ? 1 : 0) } })
    new Gauge({
      name: 'ntsoekhe_rebalance_last_records',
      help: 'What the last finished rebalance did: records looked at, sent to new owners, dropped here, failed',
      labelNames: ['outcome'],
      registers,
      collect () {
        const last = source.rebalance().last
        for (const outcome of ['looked', 'sent', 'dropped', 'failed'] as const) {
          this.set({ outcome }, last === undefined ? 0 : outcome === 'looked' ? last.records : last[outcome])
        }
      }
    })
    new Gauge({
      name: 'ntsoekhe_rebalance_running_records',
      help: 'How far the rebalance under way is: records looked at, sent to new owners, dropped here, failed so far (0 when none runs)',
      labelNames: ['outcome'],
      registers,
      collect () {
        const now = source.rebalance().running
        for (const outcome of ['looked', 'sent', 'dropped', 'failed'] as const) {
          this.set({ outcome }, now === undefined ? 0 : outcome === 'looked' ? now.records : now[outcome])
        }
      }
    })
    new Gauge({ name: 'ntsoekhe_rebalance_last_finished_timestamp_seconds', help: 'When the last rebalance finished (0: none yet)', registers, collect () { this.set((source.rebalance().last?.finishedAt ?? 0) / 1000) } })

    new Gauge({ name: 'ntsoekhe_anti_entropy_running', help: '1 while an anti-entropy round runs', registers, collect () { this.set(source.antiEntropy().running ? 1 : 0) } })
    new Gauge({
      name: 'ntsoekhe_anti_entropy_progress_ratio',
      help: 'Share of the running anti-entropy round done (ranges compared over ranges to compare); 1 when no round runs',
      registers,
      collect () {
        const p = source.antiEntropy().progress
        this.set(p === undefined || p.total === 0 ? 1 : p.done / p.total)
      }
    })
    new Gauge({ name: 'ntsoekhe_anti_entropy_last_round_timestamp_seconds', help: 'When the last anti-entropy round finished (0: none yet)', registers, collect () { this.set((source.antiEntropy().lastRoundAt ?? 0) / 1000) } })
    new Gauge({ name: 'ntsoekhe_anti_entropy_last_round_seconds', help: 'How long the last anti-entropy round took', registers, collect () { this.set(source.antiEntropy().seconds) } })
    new Gauge({
      name: 'ntsoekhe_anti_entropy_last_round',
      help: 'What the last anti-entropy round found: ranges compared, ranges that differed, records sent, peers that failed',
      labelNames: ['what'],
      registers,
      collect () {
        const s = source.antiEntropy()
        this.set({ what: 'ranges' }, s.ranges)
        this.set({ what: 'ranges_differing' }, s.rangesDiffering)
        this.set({ what: 'records_sent' }, s.recordsSent)
        this.set({ what: 'failed' }, s.failed)
      }
    })

    new Gauge({
      name: 'ntsoekhe_members',
      help: 'Members this node knows, by state',
      labelNames: ['state'],
      registers,
      collect () {
        const counts = new Map<string, number>(MEMBER_STATES.map(s => [s, 0]))
        for (const m of source.members()) counts.set(m.state, (counts.get(m.state) ?? 0) + 1)
        for (const [state, n] of counts) this.set({ state }, n)
      }
    })
    new Gauge({
      name: 'ntsoekhe_rows',
      help: "Live rows per table in this node's store (its shards, not the network)",
      labelNames: ['table'],
      registers,
      async collect () {
        this.reset()
        for (const [table, n] of Object.entries(await source.localRows())) this.set({ table }, n)
      }
    })
    new Gauge({ name: 'ntsoekhe_leveldb_size_bytes', help: 'Bytes of the LevelDB store on disk', registers, async collect () { this.set(await directoryBytes(source.storePath)) } })
  }

  /** Counts one answered request (the API's onResponse hook) */
  observe (o: RequestObservation): void {
    this.requests.inc({ method: o.method, route: o.route, status: String(o.status) })
    this.latency.observe({ method: o.method, route: o.route }, o.seconds)
    if (o.writeConsistency !== undefined) this.writes.inc({ consistency: o.writeConsistency })
    this.series.record(o.seconds)
  }

  /** The Prometheus text exposition of every metric */
  async text (): Promise<string> {
    return await this.registry.metrics()
  }

  get contentType (): string {
    return this.registry.contentType
  }

  /** The sampled request rate and latency, oldest first */
  points (): SeriesPoint[] {
    return this.series.points()
  }

  start (): void {
    this.series.start()
  }

  stop (): void {
    this.series.stop()
  }
}

/** Total size of the files in a directory (LevelDB keeps its files flat) */
async function directoryBytes (dir: string): Promise<number> {
  let total = 0
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return 0
  }
  for (const name of names) {
    // A table file may be compacted away between the listing and the stat.
    const st = await stat(join(dir, name)).catch(() => undefined)
    if (st?.isFile() === true) total += st.size
  }
  return total
}
