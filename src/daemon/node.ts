import { chmod, lstat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { pino, type Logger } from 'pino'
import type { FastifyInstance } from 'fastify'
import { createApi } from '../api/server.js'
import type { Coordinator } from '../cluster/coordinator.js'
import { LocalCoordinator } from '../cluster/local.js'
import { loadOrCreateIdentity, peerIdFromKey } from '../p2p/identity.js'
import { Database } from '../query/database.js'
import { TABLES } from '../schema/index.js'
import { Store } from '../storage/store.js'
import { HybridClock, nodeTag } from '../storage/version.js'
import { socketPath, type Config } from './config.js'

export const VERSION = '0.1.0'

export interface NodeInit {
  home: string
  config: Config
  /** Where logs go. @default pino to stdout at config.log.level */
  logger?: Logger
}

/**
 * One daemon: config -> storage -> coordinator -> query -> socket API.
 * `start()` and `stop()` may be called twice and return the same promise.
 */
export class NtsoekheNode {
  readonly home: string
  readonly config: Config
  readonly logger: Logger
  peerId = ''
  store?: Store
  db?: Database
  coordinator?: Coordinator
  private api?: FastifyInstance
  private starting?: Promise<void>
  private stopping?: Promise<void>
  private readonly startedAt = Date.now()

  constructor (init: NodeInit) {
    this.home = init.home
    this.config = init.config
    this.logger = init.logger ?? pino({ level: init.config.log.level, base: { component: 'ntsoekhe' } })
  }

  get socket (): string {
    return socketPath(this.home, this.config)
  }

  async start (): Promise<void> {
    this.starting ??= this._start().catch(async err => {
      await this._stop().catch(() => {})
      throw err
    })
    await this.starting
  }

  private async _start (): Promise<void> {
    const key = await loadOrCreateIdentity(this.home)
    this.peerId = peerIdFromKey(key)
    const indexes = Object.fromEntries(TABLES.map(t => [t.name, t.indexed]))
    this.store = new Store({ path: join(this.home, 'store'), sync: this.config.storage.sync, indexes })
    await this.store.open()
    const clock = new HybridClock(nodeTag(this.peerId))
    this.coordinator = new LocalCoordinator({ store: this.store, clock, peerId: this.peerId })
    await this.coordinator.start()
    this.db = new Database({ coordinator: this.coordinator, peerId: this.peerId })
    await this.listen()
    this.logger.info({ peerId: this.peerId, socket: this.socket, home: this.home }, 'node ready')
  }

  private async listen (): Promise<void> {
    const db = this.db as Database
    this.api = createApi({ db, status: async () => await this.status(), logger: this.logger })
    await removeStaleSocket(this.socket)
    // Only the owner may use the socket: create it 0600 rather than chmod after the fact.
    const umask = process.umask(0o177)
    try {
      await this.api.listen({ path: this.socket })
    } finally {
      process.umask(umask)
    }
    await chmod(this.socket, 0o600)
  }

  async status (): Promise<Record<string, unknown>> {
    const store = this.store as Store
    const cluster = await (this.coordinator as Coordinator).status()
    return {
      version: VERSION,
      home: this.home,
      socket: this.socket,
      uptimeMs: Date.now() - this.startedAt,
      storage: { rows: publicCounts(await store.countRows()), commits: store.commits },
      ...cluster
    }
  }

  async stop (): Promise<void> {
    this.stopping ??= this._stop()
    await this.stopping
  }

  private async _stop (): Promise<void> {
    if (this.api !== undefined) {
      await this.api.close()
      await removeStaleSocket(this.socket)
    }
    await this.coordinator?.stop()
    await this.store?.close()
    if (this.api !== undefined) this.logger.info({ peerId: this.peerId }, 'node stopped')
  }
}

/** Row counts without internal tables (names starting with `_`) */
export function publicCounts (counts: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(counts).filter(([t]) => !t.startsWith('_')))
}

/** The caller holds the store lock, so any socket file left at the path is from a crashed daemon */
async function removeStaleSocket (path: string): Promise<void> {
  try {
    const st = await lstat(path)
    if (!st.isSocket()) throw new Error(`${path} exists and is not a socket; refusing to remove it`)
    await unlink(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
}
