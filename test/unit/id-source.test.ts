import { createHash } from 'node:crypto'
import { afterEach, describe, expect, it } from 'vitest'
import { UNIQUE_TABLE } from '../../src/cluster/messages.js'
import { tokenOf } from '../../src/cluster/token.js'
import { IdSource, tagRecord, type IdMeta } from '../../src/query/id-source.js'
import { ID_TAGS, idTag } from '../../src/query/ids.js'
import { winner } from '../../src/storage/store.js'
import { createTestnet, type Testnet } from '../helpers/harness.js'

/** The tag IdSource tries first for a peer id (the same arithmetic as claim()) */
function preferredTag (peerId: string): number {
  return parseInt(createHash('sha256').update(`tag\u0000${peerId}`).digest('hex').slice(0, 8), 16) % ID_TAGS
}

/** Two made-up peer ids whose first choice of tag is the same one */
function samePreference (): [string, string] {
  const seen = new Map<number, string>()
  for (let i = 0; i < 10_000; i++) {
    const peer = `12D3KooWTagPeer${i}`
    const tag = preferredTag(peer)
    const other = seen.get(tag)
    if (other !== undefined) return [other, peer]
    seen.set(tag, peer)
  }
  throw new Error('no two of 10,000 peer ids share a preferred tag')
}

function mapMeta (): IdMeta & { map: Map<string, unknown> } {
  const map = new Map<string, unknown>()
  return { map, get: async k => map.get(k), put: async (k, v) => { map.set(k, v) } }
}

describe('id tags claimed through the ring', () => {
  let net: Testnet | undefined
  afterEach(async () => { await net?.stop(); net = undefined })

  it('gives two machines that prefer the same tag two different tags, each claim on every owner', async () => {
    net = await createTestnet(3)
    await net.converge(3)
    const [a, b] = samePreference()
    const [n0, n1] = net.nodes
    const first = new IdSource({ coordinator: n0!.coordinator, peerId: a })
    const second = new IdSource({ coordinator: n1!.coordinator, peerId: b })
    const ta = await first.tag()
    const tb = await second.tag()
    expect(ta).toBe(preferredTag(a))
    expect(tb).not.toBe(ta)
    expect(idTag(await first.next())).toBe(ta)
    expect(idTag(await second.next())).toBe(tb)
    // Written at `all`: every node holds both claims.
    for (const tag of [ta, tb]) {
      const { id, shard } = tagRecord(tag)
      for (const n of net.nodes) expect(winner(await n.store.get(UNIQUE_TABLE, tokenOf(shard), id))?.row).toBeTruthy()
    }
  })

  it('takes its own claim back after losing its node state, and never draws an id twice across a restart', async () => {
    net = await createTestnet(3)
    await net.converge(3)
    const peer = '12D3KooWRestartingPeer'
    const meta = mapMeta()
    let now = Date.now()
    const before = new IdSource({ coordinator: net.nodes[0]!.coordinator, peerId: peer, meta, now: () => now })
    const made = []
    for (let i = 0; i < 100; i++) made.push(await before.next())
    // Restarted with its clock a minute behind: the reservation on disk keeps ids above the old ones.
    now -= 60_000
    const after = new IdSource({ coordinator: net.nodes[1]!.coordinator, peerId: peer, meta, now: () => now })
    expect(await after.next()).toBeGreaterThan(Math.max(...made))
    // A lost home (no saved tag) finds its own claim and keeps the tag.
    const reborn = new IdSource({ coordinator: net.nodes[2]!.coordinator, peerId: peer })
    expect(await reborn.tag()).toBe(await before.tag())
  })

  it('claims nothing while an owner of every tag is unreachable (503, no tag spent), and claims once it is back', async () => {
    net = await createTestnet(3, { timeoutMs: 300 })
    await net.converge(3)
    const [n0, , n2] = net.nodes
    // Three nodes, three copies: every tag's record has n2 among its owners.
    net.network.down(n2!.peerId)
    const source = new IdSource({ coordinator: n0!.coordinator, peerId: '12D3KooWPatientPeer' })
    const err = await source.next().then(() => undefined, (e: unknown) => e as { code?: string, message?: string })
    expect(err?.code).toBe('UNAVAILABLE')
    expect(err?.message).toMatch(/cannot make row ids yet/)
    for (let tag = 0; tag < ID_TAGS; tag++) {
      const { id, shard } = tagRecord(tag)
      expect(await n0!.store.get(UNIQUE_TABLE, tokenOf(shard), id)).toBeUndefined()
    }
    net.network.up(n2!.peerId)
    expect(idTag(await source.next())).toBe(preferredTag('12D3KooWPatientPeer'))
  })
})
