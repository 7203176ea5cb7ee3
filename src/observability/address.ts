/** The `host:port` addresses of the console and the metrics listener */
import { isIP } from 'node:net'
import { ValidationError } from '../errors/index.js'

export interface HostPort { host: string, port: number }

/**
 * Parses `host:port` (`127.0.0.1:4180`, `localhost:4180`, `[::1]:4180`): a
 * port from 1 to 65535 and a host that is an IP address or a plain name.
 * Throws a ValidationError naming `what` (the flag or config key).
 */
export function parseHostPort (value: string, what: string): HostPort {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(value)
  const port = Number(m?.[3])
  const host = m?.[1] ?? m?.[2]
  if (m === null || host === undefined || !Number.isInteger(port) || port < 1 || port > 65535 || (m[1] !== undefined && isIP(host) !== 6)) {
    throw new ValidationError(`${what} takes host:port (e.g. 127.0.0.1:4180, [::1]:4180), got ${JSON.stringify(value)}`)
  }
  return { host, port }
}

/** Whether a host only this machine can reach: 127.0.0.0/8, ::1, localhost */
export function isLoopback (host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)
}

