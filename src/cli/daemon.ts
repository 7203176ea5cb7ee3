import { join, resolve } from 'node:path'
import { pino } from 'pino'
import { checkConfig, loadConfig, type Config } from '../daemon/config.js'
import { NtsoekheNode } from '../daemon/node.js'
import { NtsoekheError, ValidationError } from '../errors/index.js'
import { decodeInvite, resolveNetworkKey } from '../daemon/network-key.js'
import { loadOrCreateIdentity, peerIdFromKey } from '../p2p/identity.js'
import { loadOrCreateDataKey } from '../security/data-key.js'
import { Store } from '../storage/store.js'
import { adminTokenPath, newToken, readAdminToken, writeAdminToken } from '../security/tokens.js'
import type { Io } from './index.js'

export interface DaemonFlags {
  listen: string[]
  bootstrap: string[]
  replicas?: number
  writeQuorum?: number
  readQuorum?: number
  /** `--console <host:port>`: serve the web console there (monitoring.console) */
  console?: string
  /** `--console-remote`: allow the console on a non-loopback address (monitoring.consoleRemote) */
  consoleRemote?: boolean
  /** `--metrics-listen <host:port>`: serve `GET /metrics` there (monitoring.metricsListen) */
  metricsListen?: string
  logLevel?: string
  /** `--join <invite>`: store the network key the invite carries and join through its addresses */
  join?: string
  /** `--swarm-key <file>`: the network key file (network.pnetKeyFile) */
  swarmKey?: string
  /** `--open-network`: run without a network key (network.open) */
  openNetwork?: boolean
  /** `--security-off`: no authentication, access rules, encryption at rest or audit; refused without `test` */
  securityOff?: boolean
  /** `--test`: this daemon is a test or benchmark subject */
  test?: boolean
}

/**
 * `ntsoekhe init`: home, identity, data key, config, an empty store and the
 * first admin's token (`admin.token`, 0600), without starting. The admin's
 * user row is written by the first daemon on this home if it creates a
 * network; a home whose daemon joins one takes its users from there.
 */
export async function initHome (home: string): Promise<{ home: string, peerId: string, created: boolean, adminToken: string }> {
  const { config, created } = await loadConfig(home)
  const key = await loadOrCreateIdentity(home)
  // A home made by init starts a network of its own: it gets a network key now, unless it is open.
  if (!config.network.open && config.network.bootstrap.length === 0) await resolveNetworkKey(home, config)
  const store = new Store({ path: join(home, 'store'), dataKey: await loadOrCreateDataKey(home) })
  await store.open()
  await store.close()
  if (await readAdminToken(home) === undefined) await writeAdminToken(home, newToken())
  return { home, peerId: peerIdFromKey(key), created, adminToken: adminTokenPath(home) }
}

/** Command-line flags override the home's config for this run only */
export function applyFlags (config: Config, flags: DaemonFlags): Config {
  const c = structuredClone(config)
  if (flags.listen.length > 0) c.network.listen = flags.listen
  if (flags.bootstrap.length > 0) c.network.bootstrap = [...new Set([...c.network.bootstrap, ...flags.bootstrap])]
  if (flags.replicas !== undefined) {
    c.replication.replicas = flags.replicas
    // A lone --replicas 1 should not trip over the default quorums of 2.
    c.replication.writeQuorum = Math.min(c.replication.writeQuorum, flags.replicas)
    c.replication.readQuorum = Math.min(c.replication.readQuorum, flags.replicas)
  }
  if (flags.writeQuorum !== undefined) c.replication.writeQuorum = flags.writeQuorum
  if (flags.readQuorum !== undefined) c.replication.readQuorum = flags.readQuorum
  if (flags.logLevel !== undefined) c.log.level = flags.logLevel
  if (flags.swarmKey !== undefined) c.network.pnetKeyFile = resolve(flags.swarmKey)
  if (flags.openNetwork === true) c.network.open = true
  if (flags.console !== undefined) c.monitoring.console = flags.console
  if (flags.consoleRemote === true) c.monitoring.consoleRemote = true
  if (flags.metricsListen !== undefined) c.monitoring.metricsListen = flags.metricsListen
  if (c.network.open && flags.swarmKey !== undefined) throw new ValidationError('--open-network and --swarm-key exclude each other')
  checkConfig(c, 'flags')
  return c
}

/** `ntsoekhe daemon`: runs until SIGINT or SIGTERM; returns the exit code */
export async function runDaemon (home: string, flags: DaemonFlags, io: Io): Promise<number> {
  const { config: saved } = await loadConfig(home)
  const config = applyFlags(saved, flags)
  const logger = pino({ level: config.log.level, base: { component: 'ntsoekhe' } })
  // After `ntsoekhe leave` the node has handed everything off: it stops as on a signal.
  const invite = flags.join === undefined ? undefined : decodeInvite(flags.join)
  if (flags.securityOff === true && flags.test !== true) throw new ValidationError('--security-off is only for measurements: it is accepted together with --test')
  const node = new NtsoekheNode({ home, config, logger, ...(invite === undefined ? {} : { invite }), ...(flags.securityOff === true ? { security: false } : {}), onLeft: () => { process.kill(process.pid, 'SIGTERM') } })
  try {
    await node.start()
  } catch (err) {
    if (err instanceof NtsoekheError && err.code === 'HOME_LOCKED') {
      io.stderr.write(`error: another ntsoekhe daemon is running on ${home} (${err.message})\n`)
      return 1
    }
    throw err
  }
  io.stderr.write(`ntsoekhe daemon ready\n  peer id  ${node.peerId}\n  socket   ${node.socket}\n` +
    (node.urls.console === undefined ? '' : `  console  ${node.urls.console} (plain HTTP; sign in with a user token)\n`) +
    (node.urls.metrics === undefined ? '' : `  metrics  ${node.urls.metrics}\n`))
  await new Promise<void>(resolve => {
    const onSignal = (signal: string): void => {
      logger.info({ signal }, 'shutting down')
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
      resolve()
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
  })
  await node.stop()
  return 0
}
