/**
 * Who may join, probed as an outsider would: real daemons on 127.0.0.1 over
 * TCP + Noise, and a libp2p node of the test's own that was never a member.
 */
import { readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { afterAll, describe, expect, it } from 'vitest'
import { NtsoekheClient } from '../../src/client/index.js'
import { PROTOCOLS } from '../../src/cluster/transport.js'
import { createNode, generatePnetKey, type NtsoekheNode } from '../../src/p2p/node.js'
import { RpcService } from '../../src/p2p/rpc.js'
import { loadOrCreateIdentity, peerIdFromKey } from '../../src/p2p/identity.js'
import { adminToken, cli, daemonExit, json, makeHome, startDaemon, type TestDaemon } from '../helpers/daemon.js'
import { waitFor } from '../helpers/wait.js'

const daemons: TestDaemon[] = []
const outsiders: NtsoekheNode[] = []
afterAll(async () => {
  await Promise.all(outsiders.map(async n => await n.stop()))
  await Promise.all(daemons.map(async d => await d.stop().catch(() => {})))
}, 30_000)

/** A client of `d` with the admin token of the home that created its network */
async function clientOf (d: TestDaemon, home = d.home): Promise<NtsoekheClient> {
  return new NtsoekheClient({ socket: d.socket, token: await adminToken(home) })
}

async function aliveMembers (api: NtsoekheClient): Promise<string[]> {
  const s = await api.peers()
  return (s.members as Array<{ peerId: string, state: string }>).filter(m => m.state === 'alive').map(m => m.peerId)
}

/** A libp2p node that never joined, speaking the replica protocol */
async function outsider (pnetKey?: Uint8Array): Promise<{ node: NtsoekheNode, replica: RpcService }> {
  const node = await createNode({ privateKey: await generateKeyPair('Ed25519') }, { listen: ['/ip4/127.0.0.1/tcp/0'], dialTimeout: 3_000, ...(pnetKey === undefined ? {} : { pnetKey }), log: () => {} })
  outsiders.push(node)
  const replica = new RpcService({ node, logger: () => {} }, { protocol: PROTOCOLS.replica, handler: async () => null, timeout: 5_000 })
  return { node, replica }
}

describe('a closed network by default', () => {
  let first: TestDaemon
  let second: TestDaemon

  it('the first start writes swarm.key (0600); invite prints one line; daemon --join on a new home joins with it', async () => {
    first = await startDaemon()
    daemons.push(first)
    const keyFile = join(first.home, 'swarm.key')
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600)
    expect(await readFile(keyFile, 'utf8')).toMatch(/^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}$/)

    const invite = json<{ invite: string, addresses: string[] }>(await cli(['invite', '--json'], { home: first.home }))
    expect(Object.keys(invite).sort()).toEqual(['addresses', 'invite'])
    expect(invite.invite).toMatch(/^ntsoekhe-invite:1:[A-Za-z0-9_-]+$/)
    expect(invite.addresses.length).toBeGreaterThan(0)
    const plain = await cli(['invite'], { home: first.home })
    expect(plain.code).toBe(0)
    expect(plain.stdout).toBe(`${invite.invite}\n`)

    second = await startDaemon({ args: ['--join', invite.invite] })
    daemons.push(second)
    expect(await readFile(join(second.home, 'swarm.key'), 'utf8')).toBe(await readFile(keyFile, 'utf8'))
    expect((await stat(join(second.home, 'swarm.key'))).mode & 0o777).toBe(0o600)
    const [c1, c2] = [await clientOf(first), await clientOf(second, first.home)]
    const [a, b] = [(await c1.status()).peerId as string, (await c2.status()).peerId as string]
    await waitFor('both daemons to list each other as alive', async () =>
      (await aliveMembers(c1)).includes(b) && (await aliveMembers(c2)).includes(a), 15_000)
  })

  it('a home made by init (which wrote a key of its own) that never ran joins with an invite; one that holds data does not', async () => {
    const { invite } = await (await clientOf(first)).invite()
    const home = await makeHome()
    expect((await cli(['init'], { home })).code).toBe(0)
    const own = await readFile(join(home, 'swarm.key'), 'utf8')
    const joined = await startDaemon({ home, args: ['--join', invite] })
    daemons.push(joined)
    expect(own).not.toBe(await readFile(join(first.home, 'swarm.key'), 'utf8'))
    expect(await readFile(join(home, 'swarm.key'), 'utf8')).toBe(await readFile(join(first.home, 'swarm.key'), 'utf8'))
    await joined.stop()
    // The first node's own home holds its network's data: an invite of another network is refused there.
    const other = await startDaemon({ args: [] })
    daemons.push(other)
    const otherInvite = (await (await clientOf(other)).invite()).invite
    await other.stop()
    await first.stop()
    const refused = await daemonExit(first.home, { args: ['--join', otherInvite] })
    expect(refused.code).toBe(1)
    expect(refused.stderr).toMatch(/holds the key of another network/)
    first = await startDaemon({ home: first.home })
    daemons.push(first)
  })

  it('a node meant to join without the key is refused with what to do; a damaged invite is a clear error', async () => {
    const addr = (await (await clientOf(first)).status()).addresses[0] as string
    const noKey = await daemonExit(await makeHome(), { args: ['--bootstrap', addr] })
    expect(noKey.code).toBe(1)
    expect(noKey.stderr).toMatch(/--join <invite>/)
    const damaged = await daemonExit(await makeHome(), { args: ['--join', 'ntsoekhe-invite:1:bm90IGpzb24'] })
    expect(damaged.code).not.toBe(0)
    expect(damaged.stderr).toMatch(/invite is damaged/)
  })

  it('a node with another key is never a member, and both sides log one clear line', async () => {
    const addr = (await (await clientOf(first)).status()).addresses[0] as string
    const home = await makeHome()
    const otherKey = join(home, 'other.key')
    await writeFile(otherKey, generatePnetKey(), { mode: 0o600 })
    const stranger = await startDaemon({ home, args: ['--swarm-key', otherKey, '--bootstrap', addr, '--log-level', 'warn'] })
    daemons.push(stranger)
    await waitFor('both sides to log the failed handshake', () =>
      first.stdout().includes('closed before its handshake completed') && stranger.stdout().includes('closed before its handshake completed'), 20_000)
    expect(first.stdout()).toContain("does not hold this network's key")
    expect(first.stdout()).not.toContain('Message length too long')
    // It joined nothing, so it has no users of its own to ask: its id comes from its identity key.
    const strangerId = peerIdFromKey(await loadOrCreateIdentity(home))
    const members = (await (await clientOf(first)).peers()).members as Array<{ peerId: string }>
    expect(members.map(m => m.peerId)).not.toContain(strangerId)
    await stranger.stop()
  })

  it('an outsider without the key cannot even connect, let alone scan', async () => {
    const addr = (await (await clientOf(first)).status()).addresses[0] as string
    const { node } = await outsider()
    await expect(node.dial((await import('@multiformats/multiaddr')).multiaddr(addr), { signal: AbortSignal.timeout(5_000) })).rejects.toThrow()
    expect(node.getPeers()).toHaveLength(0)
  })
})

describe('an open network, only on request', () => {
  it('warns at start; an outsider that connects but never joined gets nothing from the replica protocol', async () => {
    const open = await startDaemon({ args: ['--open-network'] })
    daemons.push(open)
    expect(open.stdout()).toContain('open network')
    expect(open.stdout()).toMatch(/"level":40[^\n]*open network/)
    const api = await clientOf(open)
    const status = await api.status()
    const { replica } = await outsider()
    await replica.start()
    const target = status.peerId as string
    const { multiaddr } = await import('@multiformats/multiaddr')
    await replica['node'].dial(multiaddr(status.addresses[0] as string), { signal: AbortSignal.timeout(5_000) })
    // Its streams are reset before a byte is read (the caller sees the stream go), and the daemon says why.
    for (const probe of [{ type: 'scan', table: 'patient_records', where: {}, limit: 100 }, { type: 'read', table: 'patient_records', id: '1', token: '0000000000000000' }]) {
      const err = await replica.request(target, probe).then(() => undefined, (e: unknown) => e)
      expect(['FORBIDDEN', 'UNAVAILABLE']).toContain((err as { code?: string } | undefined)?.code)
    }
    await waitFor('the daemon to log the refusal', () => open.stdout().includes('refused a replica stream') && open.stdout().includes('not a member of this network'), 10_000)
    await replica.stop()
  })
})

describe('the socket for a group', () => {
  it('api.group makes the socket 0660 and owned by that group, outside the home; tokens still decide what each person may do', async () => {
    const home = await makeHome()
    const shared = await makeHome()
    const socket = join(shared, 'ntsoekhe.sock')
    expect((await cli(['init'], { home })).code).toBe(0)
    const configPath = join(home, 'config.json')
    const config = JSON.parse(await readFile(configPath, 'utf8')) as { api: { socket: string, group: string | null } }
    config.api = { socket, group: 'daemon' }
    await writeFile(configPath, JSON.stringify(config, null, 2))
    const d = await startDaemon({ home, socket })
    daemons.push(d)
    // The socket answers as soon as it listens; its group and mode are set right after.
    await waitFor('the socket to be handed to the group', async () => ((await stat(socket)).mode & 0o777) === 0o660, 5_000)
    const st = await stat(socket)
    expect(st.mode & 0o777).toBe(0o660)
    expect(st.gid).toBe(1)
    // No token, no data: the group lets people connect, their tokens say what they may do.
    const anonymous = new NtsoekheClient({ socket })
    await expect(anonymous.status()).rejects.toMatchObject({ code: 'UNAUTHORIZED' })
    const admin = new NtsoekheClient({ socket, token: await adminToken(home) })
    expect((await admin.status()).peerId).toMatch(/^12D3KooW/)
    await d.stop()
  })

  it('an unknown group is a clear error at start', async () => {
    const home = await makeHome()
    expect((await cli(['init'], { home })).code).toBe(0)
    const configPath = join(home, 'config.json')
    const config = JSON.parse(await readFile(configPath, 'utf8')) as { api: { socket: string, group: string | null } }
    config.api.group = 'no-such-group-here'
    await writeFile(configPath, JSON.stringify(config, null, 2))
    const exit = await daemonExit(home)
    expect(exit.code).not.toBe(0)
    expect(exit.stderr + exit.stdout).toMatch(/no group no-such-group-here/)
  })
})
