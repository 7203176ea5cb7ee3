import { readFile, unlink } from 'node:fs/promises'
import { resolve } from 'node:path'
import { fromString, toString } from 'uint8arrays'
import { ConflictError, ValidationError } from '../errors/index.js'
import { generatePnetKey } from '../p2p/node.js'
import type { Config } from './config.js'
import { createSecretFile } from '../util/secret-file.js'

/** The network key a node writes when it starts a new (closed) network, in its home */
export const SWARM_KEY_FILE = 'swarm.key'

const KEY_HEADER = '/key/swarm/psk/1.0.0/\n/base16/\n'
const KEY_RE = /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n([0-9a-f]{64})\s*$/
const INVITE_PREFIX = 'ntsoekhe-invite:1:'
/** Longest invite accepted: a key and some dozens of addresses */
const MAX_INVITE = 16 * 1024

/** What a new machine needs to join: the network key (absent for an open network) and where members listen */
export interface Invite {
  /** The 64 hex digits of the pnet key */
  key?: string
  addresses: string[]
}

/** One line: `ntsoekhe-invite:1:` and the invite as base64url JSON */
export function encodeInvite (invite: Invite): string {
  return INVITE_PREFIX + toString(fromString(JSON.stringify(invite), 'utf8'), 'base64url')
}

/** Reads an invite line; anything else is a ValidationError saying what is wrong */
export function decodeInvite (text: string): Invite {
  const line = text.trim()
  if (line.length > MAX_INVITE || !line.startsWith(INVITE_PREFIX)) {
    throw new ValidationError('Not an invite: expected the line `ntsoekhe invite` prints on a member (ntsoekhe-invite:1:...)')
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(toString(fromString(line.slice(INVITE_PREFIX.length), 'base64url'), 'utf8'))
  } catch (err) {
    throw new ValidationError('The invite is damaged (not valid base64url JSON): copy the whole line again', { cause: err })
  }
  const inv = parsed as { key?: unknown, addresses?: unknown }
  if (inv === null || typeof inv !== 'object' ||
      (inv.key !== undefined && (typeof inv.key !== 'string' || !/^[0-9a-f]{64}$/.test(inv.key))) ||
      !Array.isArray(inv.addresses) || inv.addresses.length === 0 || inv.addresses.length > 64 ||
      !inv.addresses.every(a => typeof a === 'string' && a.length < 512 && a.includes('/p2p/'))) {
    throw new ValidationError('The invite is damaged: it must carry the network key and at least one member address with /p2p/<peer id>')
  }
  return { ...(inv.key === undefined ? {} : { key: inv.key as string }), addresses: inv.addresses as string[] }
}

/** The hex digits of a pnet key file's contents */
export function keyHex (file: Uint8Array): string {
  // A byte order mark (an editor on Windows saves one) is not part of the text: TextDecoder dropped it, and libp2p reads past it.
  const m = KEY_RE.exec(toString(file, 'utf8').replace(/^\uFEFF/, ''))
  if (m === null) throw new ValidationError('Invalid network key: expected the /key/swarm/psk/1.0.0/ format (ntsoekhe swarm-key)')
  return m[1] as string
}

export interface NetworkKeyResult {
  /** The pnet key to run with; undefined on an open network */
  key?: Uint8Array
  /** Where the key came from, for the start log */
  source: 'open' | 'file' | 'created' | 'invite'
  path?: string
}

/**
 * Which network key a daemon runs with. A closed network is the default: the
 * node uses `network.pnetKeyFile` (relative to the home), else
 * `<home>/swarm.key`. A node that starts a new network (nothing to join)
 * writes a fresh swarm.key (mode 0600); a node meant to join one (bootstrap
 * addresses or members it knew) without a key is refused with what to do.
 * `--join <invite>` stores the invite's key first. `network.open` runs
 * without a key, by request only.
 */
export async function resolveNetworkKey (home: string, config: Config, options: { invite?: Invite, knownMembers?: number, fresh?: boolean } = {}): Promise<NetworkKeyResult> {
  const net = config.network
  const path = resolve(home, net.pnetKeyFile ?? SWARM_KEY_FILE)
  const invite = options.invite
  if (invite !== undefined) {
    if (invite.key === undefined) {
      if (!net.open) throw new ValidationError('This invite is for an open network (it carries no key): join it with --open-network as well')
      return { source: 'open' }
    }
    const file = fromString(KEY_HEADER + invite.key, 'utf8')
    const existing = await readKeyFile(path)
    if (existing !== undefined && keyHex(existing) === invite.key) return { key: existing, source: 'file', path }
    if (existing !== undefined) {
      // `ntsoekhe init` wrote a key for a network of its own; a home that never ran holds nothing of it.
      if (options.fresh !== true || net.pnetKeyFile !== null) throw new ConflictError(`${path} holds the key of another network: a home belongs to one network (join with a new home)`)
      await unlink(path)
    }
    await writeKeyFile(path, file)
    return { key: file, source: 'invite', path }
  }
  if (net.open) return { source: 'open' }
  const existing = await readKeyFile(path)
  if (existing !== undefined) {
    keyHex(existing)
    return { key: existing, source: 'file', path }
  }
  if (net.pnetKeyFile !== null) throw new ValidationError(`Cannot read the network key ${path}: no such file`)
  if (net.bootstrap.length > 0 || (options.knownMembers ?? 0) > 0) {
    throw new ValidationError('This node would join a closed network but has no network key: start it with --join <invite> (run `ntsoekhe invite` on a member), or --swarm-key <file>; --open-network for an open network')
  }
  const file = generatePnetKey()
  await writeKeyFile(path, file)
  return { key: file, source: 'created', path }
}

async function readKeyFile (path: string): Promise<Uint8Array | undefined> {
  try {
    return new Uint8Array(await readFile(path))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new ValidationError(`Cannot read the network key ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/** Writes a key file 0600, never over an existing file */
async function writeKeyFile (path: string, bytes: Uint8Array): Promise<void> {
  if (!await createSecretFile(path, bytes)) throw new ConflictError(`${path} exists; a network key is never overwritten`)
}
