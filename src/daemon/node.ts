import { randomBytes } from 'node:crypto'
import { chmod, chown, lstat, readFile, rename, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import type { Logger } from 'pino'
import { createLogger } from './logger.js'
import { VERSION } from '../version.js'
import type { FastifyInstance } from 'fastify'
import type { BackupSource } from '../api/backup.js'
import { createApi } from '../api/server.js'
import type { Coordinator } from '../cluster/coordinator.js'
import { BackupService } from '../cluster/backup.js'
import { DistributedCoordinator } from '../cluster/distributed.js'
import { Membership, type SavedMember } from '../cluster/membership.js'
import { PROTOCOLS } from '../cluster/transport.js'
import { ConflictError } from '../errors/index.js'
import { loadOrCreateIdentity, peerIdFromKey } from '../p2p/identity.js'
import { loadOrCreateDataKey } from '../security/data-key.js'
import { createNode, type NtsoekheNode as Libp2pNode } from '../p2p/node.js'
import { Libp2pTransport } from '../p2p/transport.js'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { IdSource } from '../query/id-source.js'
import { Database } from '../query/database.js'
import { TABLES } from '../schema/index.js'
import { AUDIT_TABLE } from '../cluster/messages.js'
import { AUDIT_INDEXED, AuditTrail, storeHead } from '../security/audit.js'
import { UserDirectory } from '../security/users.js'
import { readAdminToken } from '../security/tokens.js'
import { Store } from '../storage/store.js'
import { HybridClock, nodeTag } from '../storage/version.js'
import { socketPath, type Config } from './config.js'
import { groupId } from './socket-group.js'
import type { AccessEvent } from '../security/principal.js'
import { encodeInvite, keyHex, resolveNetworkKey, type Invite } from './network-key.js'
import { NodeMetrics } from '../observability/metrics.js'
import { isLoopback, parseHostPort } from '../observability/address.js'
import { startConsoleServer, startMetricsServer, type HttpListener } from '../observability/servers.js'
import type { NetworkRowCounts } from '../cluster/distributed.js'

export { VERSION } from '../version.js'
/** How long after start a node that joined a network waits for its users to arrive before refusing an unknown token */
const JOIN_SETTLE_MS = 15_000

export interface NodeInit {
  home: string
  config: Config
  /** Where logs go. @default pino to stdout at config.log.level */
  logger?: Logger
  /** Called once this node has left the network and handed off its records (the daemon then stops) */
  onLeft?: () => void
  /** `--join <invite>`: the network key to store and the members to join through */
  invite?: Invite
  /**
   * false runs without authentication, access rules, encryption at rest and
   * the audit trail, to measure what they cost (`daemon --security-off
   * --test`): every request acts as an admin. Only for a fresh home.
   * @default true
   */
  security?: boolean
  /**
   * Whether this node creates a network (and so its roles and first admin).
   * @default true when it has no bootstrap address and no saved member but itself
   */
  createsNetwork?: boolean
  /**
   * How far this node's clock runs ahead of the machine's, ms (negative:
   * behind): the chaos suite's clock skew (`daemon --clock-offset-ms <ms>
   * --test`). Versions and membership take their time from it. @default 0
   */
  clockOffsetMs?: number
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
  coordinator?: DistributedCoordinator
  membership?: Membership
  users?: UserDirectory
  libp2p?: Libp2pNode
  audit?: AuditTrail
  /** Backup and restore of the whole network */
  backup?: BackupService
  private transport?: Libp2pTransport
  private api?: FastifyInstance
  private starting?: Promise<void>
  private stopping?: Promise<void>
  private readonly startedAt = Date.now()
  private readonly onLeft?: () => void
  private readonly invite?: Invite
  /** The last save of members.json: the next one starts after it */
  private membersSaved: Promise<void> = Promise.resolve()
  /** The network key this node runs with (undefined on an open network) */
  private networkKey?: Uint8Array
  private readonly init: NodeInit
  /** Prometheus metrics (socket `GET /metrics`, `--metrics-listen`) and the console's request series */
  private metrics?: NodeMetrics
  /** The console and metrics listeners, when configured */
  private readonly listeners: HttpListener[] = []
  /** Where the console and `GET /metrics` are served over HTTP, when configured */
  readonly urls: { console?: string, metrics?: string } = {}
  /** The last network-wide row count, when it was asked for and this node's commits then: status polled often reuses it briefly */
  private networkRows?: { at: number, commits: number, counts: Promise<NetworkRowCounts> }
  /** Event-loop delay: a stalled loop delays every request the node serves */
  private readonly loopDelay = monitorEventLoopDelay({ resolution: 10 })

  constructor (init: NodeInit) {
    this.init = init
    this.home = init.home
    this.config = init.config
    if (init.onLeft !== undefined) this.onLeft = init.onLeft
    if (init.invite !== undefined) this.invite = init.invite
    this.logger = init.logger ?? createLogger(init.config.log.level)
  }

  get socket (): string {
    return socketPath(this.home, this.config)
  }

  /** Whether the socket API is listening: from then on the node answers, and a signal should stop it cleanly */
  get serving (): boolean {
    return this.api?.server.listening === true
  }

  async start (): Promise<void> {
    this.starting ??= this._start().catch(async err => {
      await this._stop().catch(() => {})
      throw err
    })
    await this.starting
  }

  private async _start (): Promise<void> {
    this.loopDelay.enable()
    const key = await loadOrCreateIdentity(this.home)
    this.peerId = peerIdFromKey(key)
    const indexes = { ...Object.fromEntries(TABLES.map(t => [t.name, t.indexed])), [AUDIT_TABLE]: AUDIT_INDEXED }
    const secure = this.init.security !== false
    if (!secure) this.logger.warn('SECURITY OFF (--security-off --test): no authentication, no access rules, no encryption at rest, no audit trail. For measurements only')
    const keying = secure ? { dataKey: await loadOrCreateDataKey(this.home) } : { plaintext: true as const }
    this.store = new Store({ path: join(this.home, 'store'), sync: this.config.storage.sync, writeBufferBytes: this.config.storage.writeBufferMb * 1024 * 1024, indexes, ...keying, log: msg => { this.logger.info({ component: 'store' }, msg) } })
    await this.store.open()
    // The console and metrics ports are taken before anything else is made (a network key, an admin)
    // and before this node joins a network: a port in use stops the start with nothing half done.
    await this.listenMonitoring()

    const net = this.config.network
    const saved = await loadMembers(this.home)
    const bootstrap = [...new Set([...net.bootstrap, ...(this.invite?.addresses ?? [])])]
    const networkKey = await resolveNetworkKey(this.home, { ...this.config, network: { ...net, bootstrap } }, {
      ...(this.invite === undefined ? {} : { invite: this.invite }),
      knownMembers: saved.filter(m => m.left !== true).length,
      // Nothing stored and no member known: a home made by `init` that never ran, whose key may give way to an invite's.
      fresh: saved.length === 0 && Object.keys(await this.store.countRows()).length === 0
    })
    const pnetKey = networkKey.key
    if (pnetKey === undefined) {
      this.logger.warn('open network (network.open / --open-network): any machine that can reach this node\'s port can join and is handed patient records; without it only machines given the network key can connect')
    } else {
      this.networkKey = pnetKey
      this.logger.info({ keyFile: networkKey.path }, networkKey.source === 'created' ? 'started a new closed network: its key is in swarm.key; `ntsoekhe invite` gives other machines what they need to join' : 'closed network: only machines with this network key can connect')
    }
    this.libp2p = await createNode({ privateKey: key }, {
      listen: net.listen,
      bootstrap,
      dhtProtocol: net.dhtProtocol,
      dhtClientMode: net.dhtClientMode,
      keepPrivateAddresses: net.keepPrivateAddresses,
      ...(pnetKey === undefined ? {} : { pnetKey }),
      log: msg => { this.logger.warn({ component: 'p2p' }, msg) }
    })
    const libp2p = this.libp2p
    this.transport = new Libp2pTransport(libp2p, { timeout: this.config.replication.timeoutMs })
    const log = (msg: string, ...args: unknown[]): void => { this.logger.debug({ component: 'cluster' }, msg, ...args) }
    const offset = this.init.clockOffsetMs ?? 0
    const now = offset === 0 ? Date.now : () => Date.now() + offset
    if (offset !== 0) this.logger.warn({ clockOffsetMs: offset }, 'test clock offset (--clock-offset-ms --test): this node\'s clock is skewed on purpose')
    this.membership = new Membership({
      transport: this.transport,
      peerId: this.peerId,
      sign: data => key.sign(data) as Uint8Array,
      now,
      addresses: () => libp2p.getMultiaddrs().map(a => a.toString()),
      // One save at a time, in order: the newest list is the one left on disk.
      persist: async members => {
        const save = this.membersSaved.then(async () => { await saveMembers(this.home, members) })
        this.membersSaved = save.catch(() => {})
        await save
      },
      connect: async (peerId, addresses) => { await dialPeer(libp2p, peerId, addresses) },
      learned: (peerId, addresses) => { void rememberAddresses(libp2p, peerId, addresses).catch(err => { this.logger.debug({ err, peerId }, 'keeping addresses failed') }) },
      log,
      warn: msg => { this.logger.warn({ component: 'membership' }, msg) }
    }, this.config.membership)
    const clock = new HybridClock(nodeTag(this.peerId), now)
    this.coordinator = new DistributedCoordinator({ store: this.store, clock, peerId: this.peerId, transport: this.transport, membership: this.membership, log }, {
      replicas: this.config.replication.replicas,
      writeQuorum: this.config.replication.writeQuorum,
      readQuorum: this.config.replication.readQuorum,
      timeoutMs: this.config.replication.timeoutMs,
      rebalanceDelayMs: this.config.replication.rebalanceDelayMs,
      rebalanceIntervalMs: this.config.replication.rebalanceIntervalMs,
      antiEntropyIntervalMs: this.config.replication.antiEntropyIntervalMs,
      syncBandwidthMbps: this.config.replication.syncBandwidthMbps
    })
    const coordinator = this.coordinator
    const membership = this.membership
    this.backup = new BackupService({
      store: this.store,
      transport: this.transport,
      peerId: this.peerId,
      ring: coordinator.ring,
      replicas: coordinator.replicas,
      owners: (table, token) => coordinator.owners(table, token),
      isAlive: peerId => membership.isAlive(peerId),
      catchUp: async () => await (coordinator as DistributedCoordinator).antiEntropy.repair(),
      // A member that left hands over what it holds by the replica protocol; it reads and writes nothing here.
      mayServe: peer => {
        if (membership.mayReplicate(peer) && membership.stateOf(peer) !== 'left') return true
        membership.report(peer, `refused a backup request from ${peer}: not a current member of this network`)
        return false
      },
      observe: version => { clock.observe(version) },
      log
    })
    await this.transport.start()

    // Members come from the bootstrap list, the members saved on disk, and any peer the DHT or
    // identify shows to speak the membership protocol.
    for (const addr of bootstrap) {
      const id = addr.split('/p2p/')[1]
      if (id !== undefined) this.membership.addCandidate(id, [addr])
    }
    this.membership.restore(saved)
    libp2p.addEventListener('peer:identify', evt => {
      if (evt.detail.protocols.includes(PROTOCOLS.membership)) {
        this.membership?.addCandidate(evt.detail.peerId.toString(), evt.detail.listenAddrs.map(a => a.toString()))
      }
    })
    await this.coordinator.start()
    this.membership.start()

    const store = this.store
    // The id tag and reservation live with the data: a home keeps its tag, and ids only grow across restarts.
    const ids = new IdSource({ coordinator: this.coordinator, peerId: this.peerId, meta: { get: async k => await store.getMeta(k), put: async (k, v) => { await store.putMeta(k, v) } } })
    this.db = new Database({ coordinator: this.coordinator, peerId: this.peerId, ids })
    const createsNetwork = this.init.createsNetwork ?? (this.invite === undefined && bootstrap.length === 0 && saved.every(m => m.peerId === this.peerId))
    const startedAt = Date.now()
    // A node that joins a network hears of its users through its members: for its first seconds
    // an unknown token is looked for again rather than refused (see UserDirectoryInit.settling).
    this.users = new UserDirectory({ db: this.db }, { settling: () => !createsNetwork && Date.now() - startedAt < JOIN_SETTLE_MS })
    // A node that joins a network takes its users from it: it never invents an admin of its own.
    if (createsNetwork && await this.users.createFirstAdmin(this.home)) {
      this.logger.info({ tokenFile: join(this.home, 'admin.token') }, 'created the first admin; its token is in admin.token')
    } else if (!createsNetwork && await readAdminToken(this.home) !== undefined) {
      this.logger.warn('this node joins an existing network: admin.token here works only if a user of that network holds it; use a token made on any member (ntsoekhe user add)')
    }
    if (secure) {
      this.audit = new AuditTrail({
        coordinator: this.coordinator,
        peerId: this.peerId,
        head: storeHead(this.store),
        sign: data => key.sign(data) as Uint8Array,
        log: (level, msg, fields) => { this.logger[level]({ component: 'audit', ...fields }, msg) }
      })
      await this.audit.start()
    }
    this.metrics = this.createMetrics()
    await this.listen()
    this.logger.info({ peerId: this.peerId, socket: this.socket, home: this.home, addresses: libp2p.getMultiaddrs().map(String) }, 'node ready')
  }

  private async listen (): Promise<void> {
    const db = this.db as Database
    const trail = this.audit
    const users = this.users as UserDirectory
    this.api = createApi({
      db,
      ...(this.metrics === undefined ? {} : { metrics: this.metrics }),
      ...(trail === undefined ? {} : { audit: (event: AccessEvent) => { trail.record(event) }, auditTrail: trail }),
      status: async () => await this.status(),
      extra: { peers: async () => await this.peers(), ring: async () => await this.ringView() },
      invite: async () => this.inviteLine(),
      removeMember: async (peerId: string) => (this.membership as Membership).remove(peerId),
      leave: async () => await this.leave(),
      repair: async () => await (this.coordinator as DistributedCoordinator).antiEntropy.repair(),
      inspect: { records: async options => await this.inspectRecords(options), summary: async () => this.inspectSummary() },
      ...(this.backup === undefined ? {} : { backup: backupSource(this.backup, this.peerId) }),
      reindex: async (table, progress) => await (this.store as Store).reindex(table, progress),
      users: this.init.security !== false
        ? users
        : {
            authenticate: async () => ({ user: 'security-off', role: 'admin' }),
            add: async (name: string, role: string) => await users.add(name, role),
            list: async () => await users.list(),
            revoke: async (name: string) => await users.revoke(name)
          },
      logger: this.logger,
      version: VERSION
    })
    await removeStaleSocket(this.socket)
    // Only the owner may use the socket: create it 0600 rather than chmod after the fact.
    const umask = process.umask(0o177)
    try {
      await this.api.listen({ path: this.socket })
    } finally {
      process.umask(umask)
    }
    await chmod(this.socket, 0o600)
    const group = this.config.api.group
    if (group !== null) {
      // People of the group connect with their own tokens; the home (and admin.token in it) stays the daemon's.
      await chown(this.socket, process.getuid?.() ?? -1, await groupId(group))
      await chmod(this.socket, 0o660)
    }
  }

  private createMetrics (): NodeMetrics {
    const coordinator = this.coordinator as DistributedCoordinator
    const store = this.store as Store
    const membership = this.membership as Membership
    const metrics = new NodeMetrics({
      hintsPending: () => store.hintCount(),
      readRepairs: () => coordinator.readRepairs,
      rebalance: () => coordinator.rebalanceStatus(),
      antiEntropy: () => coordinator.antiEntropy.status(),
      members: () => membership.members(),
      localRows: async () => publicCounts(await store.countRows()),
      storePath: join(this.home, 'store')
    })
    metrics.start()
    return metrics
  }

  /** Opens `--metrics-listen` and `--console` when configured, on exactly the address given; each answers 503 until the node serves */
  private async listenMonitoring (): Promise<void> {
    const { console, metricsListen } = this.config.monitoring
    if (metricsListen !== null) {
      const at = parseHostPort(metricsListen, '--metrics-listen')
      const listener = await startMetricsServer(at, () => this.metrics)
      this.listeners.push(listener)
      this.urls.metrics = `${listener.url}/metrics`
      if (!isLoopback(at.host)) this.logger.warn({ url: listener.url }, 'metrics on a non-loopback address, over plain HTTP and without a token: they carry no patient data, but anyone who reaches the port reads them; limit who can (firewall)')
      this.logger.info({ url: `${listener.url}/metrics` }, 'serving metrics')
    }
    if (console !== null) {
      const at = parseHostPort(console, '--console')
      const listener = await startConsoleServer(at, () => this.serving ? this.api : undefined)
      this.listeners.push(listener)
      this.urls.console = listener.url
      if (isLoopback(at.host)) this.logger.info({ url: listener.url }, 'console ready (plain HTTP on loopback; sign in with a user token)')
      else this.logger.warn({ url: listener.url }, 'console on a non-loopback address over plain HTTP (monitoring.consoleRemote): tokens and patient rows cross the network in clear; put a TLS proxy in front of it')
    }
  }

  /**
   * Rows per table across the network. One count serves every status asked
   * within a second (a progress bar polls status four times a second), unless
   * this node committed something since.
   */
  private async networkRowCounts (): Promise<NetworkRowCounts> {
    const now = Date.now()
    const commits = (this.store as Store).commits.batches
    if (this.networkRows === undefined || now - this.networkRows.at > 1000 || this.networkRows.commits !== commits) {
      const counts = (this.coordinator as DistributedCoordinator).networkRowCounts()
      this.networkRows = { at: now, commits, counts }
      // A failed count is not kept: the next status asks again.
      counts.catch(() => { if (this.networkRows?.counts === counts) this.networkRows = undefined })
    }
    const { tables, ...rest } = await this.networkRows.counts
    return { tables: everyTable(publicCounts(tables)), ...rest }
  }

  async status (): Promise<Record<string, unknown>> {
    const store = this.store as Store
    const cluster = await (this.coordinator as Coordinator).status()
    const live = cluster.members.filter(m => m.state === 'alive' || m.state === 'suspect').length
    return {
      version: VERSION,
      addresses: this.libp2p?.getMultiaddrs().map(String) ?? [],
      home: this.home,
      socket: this.socket,
      uptimeMs: Date.now() - this.startedAt,
      eventLoopDelayMs: {
        p50: round(this.loopDelay.percentile(50) / 1e6),
        p99: round(this.loopDelay.percentile(99) / 1e6),
        max: round(this.loopDelay.max / 1e6)
      },
      storage: { rows: publicCounts(await store.countRows()), commits: store.commits },
      // Every record once, whichever members hold it (storage.rows is this node's copies).
      networkRows: await this.networkRowCounts(),
      ...cluster,
      replication: {
        liveMembers: live,
        effectiveReplicas: Math.min(cluster.replicas, live),
        health: replicationHealth(cluster.members, cluster.replicas, live),
        pendingHints: store.hintCount(),
        rebalance: (this.coordinator as DistributedCoordinator).rebalanceStatus(),
        antiEntropy: (this.coordinator as DistributedCoordinator).antiEntropy.status()
      },
      audit: this.audit?.status()
    }
  }

  async peers (): Promise<Record<string, unknown>> {
    const membership = this.membership as Membership
    const connected = new Set(this.libp2p?.getConnections().map(c => c.remotePeer.toString()) ?? [])
    return { members: membership.members().map(m => ({ ...m, connected: m.peerId === this.peerId || connected.has(m.peerId) })) }
  }

  /** What a new machine needs to join (`ntsoekhe invite`): the network key and this node's addresses, as one line */
  inviteLine (): { invite: string, addresses: string[] } {
    const addresses = (this.libp2p?.getMultiaddrs() ?? []).map(String)
    const key = this.networkKey === undefined ? undefined : keyHex(this.networkKey)
    return { invite: encodeInvite({ ...(key === undefined ? {} : { key }), addresses }), addresses }
  }

  async ringView (): Promise<Record<string, unknown>> {
    const coordinator = this.coordinator as DistributedCoordinator
    const shares = coordinator.ring.shares()
    const membership = this.membership as Membership
    return {
      replicas: coordinator.replicas,
      members: membership.members().map(m => ({ peerId: m.peerId, state: m.state, share: shares.get(m.peerId) ?? 0 })),
      localRows: publicCounts(await (this.store as Store).countRows())
    }
  }

  /**
   * A page of every record this node stores (`GET /v1/inspect/records`), in
   * key order, with its heads, its digest (as the range summary counts it) and
   * its owners on this node's ring: a checker compares them across nodes.
   */
  async inspectRecords (options: { after?: string, limit: number }): Promise<Record<string, unknown>> {
    const coordinator = this.coordinator as DistributedCoordinator
    const page = await (this.store as Store).recordHeads(options)
    const last = page[page.length - 1]
    return {
      peerId: this.peerId,
      records: page.map(r => ({ ...r, owners: coordinator.owners(r.table, r.token) })),
      next: page.length === options.limit && last !== undefined ? last.key : null
    }
  }

  /** The store's range summary as kept on every commit (`GET /v1/inspect/summary`): 256 range digests, hex */
  inspectSummary (): Record<string, unknown> {
    const store = this.store as Store
    return { peerId: this.peerId, ranges: store.summary.bucketDigests(), pendingHints: store.hintCount() }
  }

  /**
   * Leaves the network for good: announces it, hands every record this node
   * holds to its owners, and drops it here. The daemon stops afterwards
   * (`onLeft`).
   */
  async leave (timeoutMs = 10 * 60_000): Promise<Record<string, unknown>> {
    const membership = this.membership as Membership
    const coordinator = this.coordinator as DistributedCoordinator
    const others = membership.liveMembers().filter(p => p !== this.peerId)
    if (!membership.leaving && others.length === 0) {
      throw new ConflictError('No other member is up: there is no one to hand this node\'s records to')
    }
    // A record is dropped here only once every owner has it, and a down owner never will.
    const down = membership.members().filter(m => m.state === 'down').map(m => m.peerId)
    if (!membership.leaving && down.length > 0) {
      throw new ConflictError(`Members ${down.join(', ')} are down: bring them back or remove them (ntsoekhe remove) before leaving`)
    }
    this.logger.info('leaving the network: handing off every record')
    await membership.leave()
    const { handedOff, rounds } = await coordinator.drain(timeoutMs)
    this.logger.info({ handedOff, rounds }, 'left the network; stopping')
    if (this.onLeft !== undefined) setImmediate(this.onLeft)
    return { peerId: this.peerId, state: 'left', handedOff, rounds }
  }

  async stop (): Promise<void> {
    this.stopping ??= this._stop()
    await this.stopping
  }

  private async _stop (): Promise<void> {
    // The console answers through the socket API: it closes first.
    await Promise.all(this.listeners.splice(0).map(async l => { await l.close() }))
    this.metrics?.stop()
    if (this.api !== undefined) {
      await this.api.close()
      await removeStaleSocket(this.socket)
    }
    // After the socket (its last requests are recorded), before the network (pending entries still go out).
    await this.audit?.stop()
    this.membership?.stop()
    await this.coordinator?.stop()
    await this.transport?.stop()
    await this.libp2p?.stop()
    await this.store?.close()
    this.loopDelay.disable()
    if (this.api !== undefined) this.logger.info({ peerId: this.peerId }, 'node stopped')
  }
}

function round (n: number): number {
  return Math.round(n * 100) / 100
}

async function saveMembers (home: string, members: SavedMember[]): Promise<void> {
  const path = join(home, 'members.json')
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
  await writeFile(tmp, JSON.stringify(members, null, 2) + '\n', { mode: 0o600 })
  await rename(tmp, path)
}

/** Members saved by an earlier run; a damaged file is ignored (the bootstrap list still works) */
async function loadMembers (home: string): Promise<SavedMember[]> {
  let text: string
  try {
    text = await readFile(join(home, 'members.json'), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  try {
    const parsed = JSON.parse(text) as unknown
    if (!Array.isArray(parsed)) return []
    return parsed.filter((m): m is SavedMember => typeof m?.peerId === 'string' && Array.isArray(m?.addresses) && m.addresses.every((a: unknown) => typeof a === 'string'))
  } catch {
    return []
  }
}

/** Dials a peer by id, after adding the addresses it was known by (Noise checks the id) */
/** Puts a member's addresses in the libp2p peer store, so a dial by peer id finds them */
async function rememberAddresses (node: Libp2pNode, peerId: string, addresses: string[]): Promise<void> {
  const addrs = addresses.flatMap(a => { try { return [multiaddr(a)] } catch { return [] } })
  if (addrs.length > 0) await node.peerStore.merge(peerIdFromString(peerId), { multiaddrs: addrs })
}

async function dialPeer (node: Libp2pNode, peerId: string, addresses: string[]): Promise<void> {
  await rememberAddresses(node, peerId, addresses)
  await node.dial(peerIdFromString(peerId), { signal: AbortSignal.timeout(5000) })
}

/** Row counts without internal tables (names starting with `_`) */
export function publicCounts (counts: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(counts).filter(([t]) => !t.startsWith('_')))
}

/**
 * One line on whether every record has its N live copies: too few live
 * members for N, or members down (the records they own have fewer live
 * copies until they return or are removed, even when enough others are up),
 * or `ok`.
 */
export function replicationHealth (members: ReadonlyArray<{ peerId: string, state: string }>, replicas: number, live: number): string {
  if (live < replicas) return `under-replicated: ${live} live members for ${replicas} replicas`
  const down = members.filter(m => m.state === 'down').map(m => m.peerId)
  if (down.length === 0) return 'ok'
  const one = down.length === 1
  return `degraded: ${one ? 'member' : 'members'} ${down.join(', ')} down; the records ${one ? 'it owns' : 'they own'} lack ${replicas === 1 ? 'their only copy' : 'a live copy'} until ${one ? 'it returns or is' : 'they return or are'} removed (ntsoekhe remove)`
}

/** Counts for every table of the schema, in its order: a table with no row reads 0 rather than being left out */
function everyTable (counts: Record<string, number>): Record<string, number> {
  return { ...Object.fromEntries(TABLES.map(t => [t.name, 0])), ...counts }
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

/** The socket API's view of the node's BackupService */
function backupSource (backup: BackupService, node: string): BackupSource {
  return {
    node,
    checkReadable: () => { backup.plan() },
    records: signal => backup.records(signal),
    estimate: async () => await backup.estimate(),
    checkOwnersUp: () => { backup.checkOwnersUp() },
    restore: async records => await backup.restore(records)
  }
}
