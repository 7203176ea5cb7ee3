import { join, resolve } from 'node:path'
import type { Logger } from 'pino'
import { createLogger } from '../daemon/logger.js'
import { checkConfig, loadConfig, type Config } from '../daemon/config.js'
import { NtsoekheNode } from '../daemon/node.js'
import { NtsoekheError, ValidationError } from '../errors/index.js'
import { decodeInvite, resolveNetworkKey } from '../daemon/network-key.js'
import { loadOrCreateIdentity, peerIdFromKey } from '../p2p/identity.js'
import { loadOrCreateDataKey } from '../security/data-key.js'
import { Store } from '../storage/store.js'
import { adminTokenPath, newToken, readAdminToken, writeAdminToken } from '../security/tokens.js'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { Io } from './index.js'
import { UsageError } from './usage.js'

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
  /** `--json`: announce the start as one JSON line on stdout (with the logs) instead of the banner on stderr */
  json?: boolean
  /** `--clock-offset-ms <ms>`: run this node's clock ahead (or behind) of the machine's, for the chaos suite; refused without `test` */
  clockOffsetMs?: number
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

/**
 * The listen address libp2p could not take because its port is in use, if
 * that is why the start failed (libp2p says so inside its message, with the
 * inner error's stack).
 */
export function portInUse (err: unknown): { address: string, port: number } | undefined {
  const message = String((err as Error | undefined)?.message ?? err)
  if (!message.includes('EADDRINUSE')) return undefined
  // libp2p's line names the multiaddr as configured ("  /ip6/::1/tcp/4100: Error: listen EADDRINUSE ..."); an IPv6 one holds colons.
  const m = /(\/(?:ip4|ip6|dns|dns4|dns6)\/\S+?\/tcp\/(\d+))\S*:? [^\n]*EADDRINUSE/.exec(message)
  if (m !== null) return { address: m[1] as string, port: Number(m[2]) }
  // Node's own message ends with the address and port: "address already in use ::1:4100".
  const node = /EADDRINUSE[^\n]*?(\S+):(\d+)\s*$/m.exec(message)
  return node === null ? { address: 'its listen address', port: 0 } : { address: node[1] as string, port: Number(node[2]) }
}

/** Runs `fn`, a check of a flag's value: its ValidationError is a usage error (exit 2) */
function usage<T> (fn: () => T, prefix = ''): T {
  try {
    return fn()
  } catch (err) {
    // applyFlags names where what it checks came from ("flags: ..."): here, the flags the user typed.
    if (err instanceof ValidationError) throw new UsageError(prefix + err.message.replace(/^flags: /, ''))
    throw err
  }
}

/** A listen or bootstrap address: a multiaddr over TCP (`/ip4/0.0.0.0/tcp/4100`) */
function checkTcpAddress (flag: string, value: string): void {
  let parsed: Multiaddr
  try {
    parsed = multiaddr(value)
  } catch (err) {
    throw new UsageError(`${flag} takes a multiaddr such as /ip4/0.0.0.0/tcp/4100, got ${JSON.stringify(value)} (${(err as Error).message})`)
  }
  if (!parsed.getComponents().some(c => c.name === 'tcp')) {
    throw new UsageError(`${flag} takes a TCP multiaddr such as /ip4/0.0.0.0/tcp/4100, got ${JSON.stringify(value)}`)
  }
}

/** `ntsoekhe daemon`: runs until SIGINT or SIGTERM; returns the exit code */
export async function runDaemon (home: string, flags: DaemonFlags, io: Io): Promise<number> {
  // Bad flag values are usage errors (exit 2), refused before the home is made or touched.
  for (const [flag, values] of [['--listen', flags.listen], ['--bootstrap', flags.bootstrap]] as const) {
    for (const v of values) checkTcpAddress(flag, v)
  }
  const invite = flags.join === undefined ? undefined : usage(() => decodeInvite(flags.join as string), '--join: ')
  if (flags.securityOff === true && flags.test !== true) throw new UsageError('--security-off is only for measurements: it is accepted together with --test')
  const { config: saved } = await loadConfig(home)
  const config = usage(() => applyFlags(saved, flags))
  const logger = createLogger(config.log.level)
  if (flags.clockOffsetMs !== undefined && flags.test !== true) throw new UsageError('--clock-offset-ms is only for the chaos suite: it is accepted together with --test')
  // After `ntsoekhe leave` the node has handed everything off: it stops as on a signal.
  const node = new NtsoekheNode({
    home,
    config,
    logger,
    ...(invite === undefined ? {} : { invite }),
    ...(flags.securityOff === true ? { security: false } : {}),
    ...(flags.clockOffsetMs === undefined ? {} : { clockOffsetMs: flags.clockOffsetMs }),
    onLeft: () => { process.kill(process.pid, 'SIGTERM') }
  })
  // Before the start: once the socket answers (before the ready line), a signal stops the node cleanly.
  const signalled = stopSignal(logger, () => node.serving)
  try {
    await node.start()
  } catch (err) {
    if (err instanceof NtsoekheError && err.code === 'HOME_LOCKED') {
      io.stderr.write(`error: another ntsoekhe daemon is running on ${home} (${err.message})\n`)
      return 1
    }
    const busy = portInUse(err)
    if (busy !== undefined) {
      await node.stop().catch(() => {})
      io.stderr.write(`error: ${busy.port === 0 ? 'a listen port' : `port ${busy.port}`} is already in use (listening on ${busy.address}): another program, or another ntsoekhe daemon, holds it. ` +
        `Choose another port with --listen /ip4/0.0.0.0/tcp/<port> or network.listen in ${join(home, 'config.json')}\n`)
      return 1
    }
    throw err
  }
  if (flags.json === true) {
    const status = await node.status()
    io.stdout.write(JSON.stringify({
      ready: true, peerId: node.peerId, socket: node.socket, home, addresses: status.addresses, version: status.version,
      ...(node.urls.console === undefined ? {} : { console: node.urls.console }),
      ...(node.urls.metrics === undefined ? {} : { metrics: node.urls.metrics })
    }) + '\n')
  } else {
    io.stderr.write(`ntsoekhe daemon ready\n  peer id  ${node.peerId}\n  socket   ${node.socket}\n` +
      (node.urls.console === undefined ? '' : `  console  ${node.urls.console} (plain HTTP; sign in with a user token)\n`) +
      (node.urls.metrics === undefined ? '' : `  metrics  ${node.urls.metrics}\n`))
  }
  await signalled
  await node.stop()
  return 0
}

/**
 * Installs the SIGINT and SIGTERM handlers, and resolves at the first signal
 * once the node is `serving`. They are installed before the node starts, so
 * that a script that sends a signal as soon as the socket answers or the
 * ready line appears never meets the default action (death with the store
 * open and the socket left behind); a signal before the socket listens still
 * has the default action (a start stopped there, a store migration included,
 * resumes at the next start). The handlers stay for the rest of the
 * process's life: a further signal while the node stops is logged and
 * ignored. Ctrl-C under `npm start` sends two (the terminal's to the whole
 * process group, then the one npm forwards), and without a handler the second
 * would kill the daemon halfway through closing its store.
 */
async function stopSignal (logger: Logger, serving: () => boolean): Promise<void> {
  await new Promise<void>(resolve => {
    let stopping = false
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) {
        logger.info({ signal }, `already shutting down (kill -KILL ${process.pid} stops at once)`)
        return
      }
      if (!serving()) {
        process.off('SIGINT', onSignal)
        process.off('SIGTERM', onSignal)
        process.kill(process.pid, signal)
        return
      }
      stopping = true
      logger.info({ signal }, 'shutting down')
      resolve()
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
  })
}
