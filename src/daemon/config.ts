import { mkdir, readFile, rename, writeFile, chmod } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { ValidationError } from '../errors/index.js'
import { isLoopback, parseHostPort } from '../observability/address.js'

export interface Config {
  api: {
    /** Path of the Unix socket, relative to the home (or absolute). @default "api.sock" */
    socket: string
    /**
     * A group (name or id) whose members may use the socket: it is then
     * mode 0660 and owned by that group, so people of several roles can each
     * connect with their own token, without access to the home (where
     * admin.token is). Put the socket outside the home (`api.socket`, an
     * absolute path in a directory the group can reach). null: 0600, the
     * daemon's user only. @default null
     */
    group: string | null
  }
  storage: {
    /** fsync every group commit, so acknowledged writes survive power loss. @default true */
    sync: boolean
    /** LevelDB write buffer (memtable) in MiB: larger means fewer flushes to disk competing with the commits' fsyncs, more memory and a longer log replay at start. @default 16 */
    writeBufferMb: number
  }
  network: {
    /** Addresses to listen on. @default ["/ip4/0.0.0.0/tcp/4100"] */
    listen: string[]
    /** Peers to join through (multiaddrs with /p2p/<id>). @default [] */
    bootstrap: string[]
    /** DHT protocol prefix. @default "/ntsoekhe" */
    dhtProtocol: string
    /** Run the DHT as a client only (a node behind NAT). @default false */
    dhtClientMode: boolean
    /** Keep private and loopback addresses in the DHT (LAN, loopback). @default true */
    keepPrivateAddresses: boolean
    /** File with the network key (libp2p pnet), relative to the home; only peers with the same key connect. null means `<home>/swarm.key`, written when the node starts a new network. @default null */
    pnetKeyFile: string | null
    /** Run without a network key: any machine that can reach the port may join. Only on request; warned at every start. @default false */
    open: boolean
  }
  replication: {
    /** Copies of every record (N). @default 3 */
    replicas: number
    /** Replicas that must have a write on disk before it is acknowledged (W). @default 2 */
    writeQuorum: number
    /** Replicas asked on a read (R). @default 2 */
    readQuorum: number
    /** Wait for a replica's answer before giving up on it, ms. @default 5000 */
    timeoutMs: number
    /** Quiet time after the ring last changed before records move to their new owners, ms. @default 2000 */
    rebalanceDelayMs: number
    /** How often a node looks for copies it no longer owns and hands them to their owners, ms. @default 600000 */
    rebalanceIntervalMs: number
    /** How often a background anti-entropy round compares this node's token ranges with their co-owners and repairs what differs, ms. @default 600000 */
    antiEntropyIntervalMs: number
    /** Bandwidth anti-entropy may use for what it sends (summaries, digests, records), megabits per second. @default 10 */
    syncBandwidthMbps: number
  }
  membership: {
    /** Ping interval to every member, ms. @default 1000 */
    heartbeatMs: number
    /** Silence after which a member is suspect, ms. @default 3000 */
    suspectAfterMs: number
    /** Silence after which a member is down and loses its ring share, ms. @default 10000 */
    downAfterMs: number
  }
  monitoring: {
    /**
     * `host:port` of the web console (`--console`): members, ring, replication,
     * charts, row counts and the first rows of a table, read-only, for users
     * with a token. Plain HTTP: a loopback address unless consoleRemote.
     * null: no console. @default null
     */
    console: string | null
    /** Allow the console on a non-loopback address, where tokens and rows cross the network in clear (`--console-remote`). @default false */
    consoleRemote: boolean
    /** `host:port` serving `GET /metrics` (Prometheus text, no token, no patient data) (`--metrics-listen`). null: only on the socket. @default null */
    metricsListen: string | null
  }
  log: {
    /** pino level: trace, debug, info, warn, error, fatal, silent. @default "info" */
    level: string
  }
}

/** The log levels `log.level` and `--log-level` take (pino's) */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']

export function defaultConfig (): Config {
  return {
    api: { socket: 'api.sock', group: null },
    storage: { sync: true, writeBufferMb: 16 },
    network: {
      listen: ['/ip4/0.0.0.0/tcp/4100'],
      bootstrap: [],
      dhtProtocol: '/ntsoekhe',
      dhtClientMode: false,
      keepPrivateAddresses: true,
      pnetKeyFile: null,
      open: false
    },
    replication: { replicas: 3, writeQuorum: 2, readQuorum: 2, timeoutMs: 5000, rebalanceDelayMs: 2000, rebalanceIntervalMs: 600_000, antiEntropyIntervalMs: 600_000, syncBandwidthMbps: 10 },
    membership: { heartbeatMs: 1000, suspectAfterMs: 3000, downAfterMs: 10000 },
    monitoring: { console: null, consoleRemote: false, metricsListen: null },
    log: { level: 'info' }
  }
}

/** The home: `--home`, else `$NTSOEKHE_HOME`, else `~/.ntsoekhe` */
export function resolveHome (home?: string): string {
  return resolve(home ?? process.env.NTSOEKHE_HOME ?? join(homedir(), '.ntsoekhe'))
}

export function socketPath (home: string, config?: Config): string {
  return resolve(home, config?.api.socket ?? 'api.sock')
}

/** Creates the home (mode 0700) and returns its config, writing every default on first use */
export async function loadConfig (home: string): Promise<{ config: Config, created: boolean }> {
  await mkdir(home, { recursive: true, mode: 0o700 })
  await chmod(home, 0o700)
  const path = join(home, 'config.json')
  let text: string | undefined
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (text === undefined) {
    const config = defaultConfig()
    await writeConfig(home, config)
    return { config, created: true }
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new ValidationError(`${path} is not valid JSON: ${(err as Error).message}`, { cause: err })
  }
  return { config: mergeConfig(defaultConfig(), parsed, path), created: false }
}

export async function writeConfig (home: string, config: Config): Promise<void> {
  const path = join(home, 'config.json')
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, JSON.stringify(config, null, 2) + '\n', { mode: 0o600 })
  await rename(tmp, path)
}

/** Overlays a user's config onto the defaults, checking every key's type */
export function mergeConfig (defaults: Config, input: unknown, where = 'config'): Config {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) throw new ValidationError(`${where}: expected an object`)
  const out = structuredClone(defaults) as unknown as Record<string, Record<string, unknown>>
  for (const [section, values] of Object.entries(input as Record<string, unknown>)) {
    const target = out[section]
    if (target === undefined) throw new ValidationError(`${where}: unknown section ${section}`)
    if (values === null || typeof values !== 'object' || Array.isArray(values)) throw new ValidationError(`${where}: ${section} must be an object`)
    for (const [key, value] of Object.entries(values as Record<string, unknown>)) {
      if (!(key in target)) throw new ValidationError(`${where}: unknown key ${section}.${key}`)
      const expected = target[key]
      const ok = expected === null
        ? value === null || typeof value === 'string'
        : Array.isArray(expected)
          ? Array.isArray(value) && value.every(v => typeof v === 'string')
          : typeof value === typeof expected || (key === 'pnetKeyFile' && value === null)
      if (!ok) throw new ValidationError(`${where}: ${section}.${key} has the wrong type (${JSON.stringify(value)})`)
      target[key] = value
    }
  }
  const config = out as unknown as Config
  checkConfig(config, where)
  return config
}

export function checkConfig (config: Config, where = 'config'): void {
  const { replicas, writeQuorum, readQuorum } = config.replication
  for (const [name, v] of Object.entries({ replicas, writeQuorum, readQuorum })) {
    if (!Number.isSafeInteger(v) || v < 1) throw new ValidationError(`${where}: replication.${name} must be a positive integer`)
  }
  if (writeQuorum > replicas || readQuorum > replicas) {
    throw new ValidationError(`${where}: the write and read quorums cannot exceed replicas (${replicas})`)
  }
  for (const name of ['timeoutMs', 'rebalanceDelayMs', 'rebalanceIntervalMs', 'antiEntropyIntervalMs'] as const) {
    const v = config.replication[name]
    if (!Number.isSafeInteger(v) || v < 1) throw new ValidationError(`${where}: replication.${name} must be a positive integer (ms)`)
  }
  const mbps = config.replication.syncBandwidthMbps
  if (!Number.isFinite(mbps) || mbps <= 0 || mbps > 100_000) {
    throw new ValidationError(`${where}: replication.syncBandwidthMbps must be a positive number of megabits per second (at most 100000)`)
  }
  const buffer = config.storage.writeBufferMb
  if (!Number.isSafeInteger(buffer) || buffer < 1 || buffer > 1024) {
    throw new ValidationError(`${where}: storage.writeBufferMb must be an integer from 1 to 1024 (MiB)`)
  }
  if (!LOG_LEVELS.includes(config.log.level)) {
    throw new ValidationError(`${where}: log.level must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(config.log.level)}`)
  }
  const m = config.membership
  if (!(m.heartbeatMs > 0 && m.suspectAfterMs > m.heartbeatMs && m.downAfterMs >= m.suspectAfterMs)) {
    throw new ValidationError(`${where}: membership needs 0 < heartbeatMs < suspectAfterMs <= downAfterMs`)
  }

  checkMonitoring(config, where)
}

/** The console and metrics addresses parse, and a console off loopback was asked for in so many words */
function checkMonitoring (config: Config, where: string): void {
  const { console, consoleRemote, metricsListen } = config.monitoring
  if (metricsListen !== null) parseHostPort(metricsListen, `${where}: monitoring.metricsListen (--metrics-listen)`)
  if (console === null) return
  const { host } = parseHostPort(console, `${where}: monitoring.console (--console)`)
  if (!isLoopback(host) && !consoleRemote) {
    throw new ValidationError(`${where}: the console serves patient rows and tokens over plain HTTP; ${console} is not a loopback address. Use 127.0.0.1 (and an SSH tunnel or a TLS proxy), or set monitoring.consoleRemote (--console-remote) to accept it`)
  }
}
