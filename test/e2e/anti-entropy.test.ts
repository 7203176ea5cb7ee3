import { afterAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { NtsoekheClient } from '../../src/client/index.js'
import { loadOrCreateDataKey } from '../../src/security/data-key.js'
import { Store } from '../../src/storage/store.js'
import { INDEXES } from '../helpers/temp.js'
import { adminToken, cli, json, startDaemon, type TestDaemon } from '../helpers/daemon.js'
import { e2ePatient, waitForValue } from '../helpers/wait.js'

/**
 * Three real daemons (N=3): one is killed, rows are written, the survivors'
 * hints for it are deleted (as if it had been away longer than they last),
 * and after a restart `ntsoekhe repair` brings it back to date.
 */
const daemons: TestDaemon[] = []

const patient = e2ePatient

const waitFor = waitForValue

/** Opens a stopped daemon's store in this process and deletes every hint it keeps for `peerId` */
async function dropHints (home: string, peerId: string): Promise<number> {
  const store = new Store({ path: join(home, 'store'), indexes: INDEXES, dataKey: await loadOrCreateDataKey(home) })
  await store.open()
  try {
    return await store.deleteHintsFor(peerId)
  } finally {
    await store.close()
  }
}

afterAll(async () => {
  await Promise.all(daemons.map(async d => await d.stop().catch(() => {})))
}, 30_000)

describe('anti-entropy between real daemons', () => {
  it('a node whose hints were lost gets every row it missed from `ntsoekhe repair --json`', async () => {
    const first = await startDaemon()
    daemons.push(first)
    const token = await adminToken(first.home)
    const { invite } = await new NtsoekheClient({ socket: first.socket, token }).invite()
    daemons.push(...await Promise.all([0, 1].map(async () => await startDaemon({ args: ['--join', invite] }))))
    const client = (d: TestDaemon): NtsoekheClient => new NtsoekheClient({ socket: d.socket, token })
    const alive = async (d: TestDaemon): Promise<boolean> => (await client(d).status()).members.filter((m: { state: string }) => m.state === 'alive').length === 3
    await waitFor('every daemon to see 3 alive members', async () => (await Promise.all(daemons.map(alive))).every(Boolean))
    const away = daemons[2]!
    const awayId = (await client(away).status()).peerId as string
    await away.kill9()

    const writer = client(daemons[0]!)
    for (let i = 1; i <= 20; i++) await writer.insert('patient_records', patient(i))
    await waitFor('the survivors to keep hints for the killed node', async () => {
      const hints = await Promise.all(daemons.slice(0, 2).map(async d => (await client(d).status()).replication.pendingHints as number))
      return hints.reduce((a, b) => a + b, 0) > 0
    }, 15_000)

    // Away longer than the hints last: stop the survivors, delete their hints, start them again.
    // Every daemon listens on a new port after a restart: the later ones join through the first one's new address.
    for (const d of daemons.slice(0, 2)) await d.stop()
    for (const d of daemons.slice(0, 2)) expect(await dropHints(d.home, awayId)).toBeGreaterThan(0)
    daemons[0] = await startDaemon({ home: daemons[0]!.home })
    const s0 = await client(daemons[0]).status()
    const bootstrap = ['--bootstrap', `${(s0.addresses as string[]).find(a => a.includes('/tcp/'))!.split('/p2p/')[0]!}/p2p/${s0.peerId as string}`]
    daemons[1] = await startDaemon({ home: daemons[1]!.home, args: bootstrap })
    daemons[2] = await startDaemon({ home: away.home, args: bootstrap })
    // The survivors' view: the restarted node may not even know the admin yet (it was killed before the users reached it).
    await waitFor('the survivors to see 3 alive members again', async () => (await Promise.all(daemons.slice(0, 2).map(alive))).every(Boolean))
    for (const d of daemons.slice(0, 2)) expect((await client(d).status()).replication.pendingHints).toBe(0)
    const localOnAway = async (id: number): Promise<boolean> => (await cli(['get', 'patient_records', String(id), '--local', '--json'], { home: daemons[2]!.home, token })).code === 0
    expect(await localOnAway(7)).toBe(false)

    const r = await cli(['repair', '--json'], { home: daemons[0]!.home, token })
    expect(r.code, r.stderr).toBe(0)
    const result = json(r)
    expect(Object.keys(result).sort()).toEqual(['ranges', 'recordsCompared', 'recordsSent', 'seconds'])
    expect(result.recordsSent).toBeGreaterThanOrEqual(20)
    expect(result.ranges).toBe(512)
    for (let i = 1; i <= 20; i++) expect(await localOnAway(i), `patient ${i} on the restarted node`).toBe(true)
    const row = json(await cli(['get', 'patient_records', '7', '--local', '--json'], { home: daemons[2]!.home, token }))
    expect(row.row.patient_name).toBe('Patient 7')

    const status = json(await cli(['status', '--json'], { home: daemons[0]!.home, token }))
    expect(status.replication.antiEntropy).toMatchObject({ running: false, lastRoundAt: expect.any(Number), ranges: 512, recordsSent: result.recordsSent })
  }, 180_000)
})
