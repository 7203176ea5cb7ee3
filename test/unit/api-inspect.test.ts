import type { FastifyInstance } from 'fastify'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createApi } from '../../src/api/server.js'
import { UserDirectory } from '../../src/security/users.js'
import { BUCKETS } from '../../src/storage/range-summary.js'
import { openLocalNode, patientRow, tempDir, type LocalNode, type TempDir } from '../helpers/temp.js'

/**
 * GET /v1/inspect/records and /v1/inspect/summary over a real store: pages
 * in key order, digests that add up to the range summary, admins only.
 */
let dir: TempDir
let node: LocalNode
let app: FastifyInstance
let admin: string
let nurse: string

beforeEach(async () => {
  dir = await tempDir('ntk-inspect-')
  node = await openLocalNode(dir.path)
  const users = new UserDirectory({ db: node.db })
  await users.ensureRoles()
  admin = (await users.add('admin', 'admin')).token
  nurse = (await users.add('nurse', 'nurse')).token
  const store = node.store
  app = createApi({
    db: node.db,
    users,
    status: async () => ({}),
    inspect: {
      // A single node owns everything it holds: the daemon gives the owners on its ring (src/daemon/node.ts).
      records: async options => {
        const page = await store.recordHeads(options)
        return { records: page.map(r => ({ ...r, owners: [node.peerId] })), next: page.length === options.limit ? page[page.length - 1]?.key ?? null : null }
      },
      summary: async () => ({ ranges: store.summary.bucketDigests(), pendingHints: store.hintCount() })
    }
  })
  await app.ready()
})

afterEach(async () => {
  await app.close()
  await node.close()
  await dir.remove()
})

async function get (url: string, token = admin): Promise<{ statusCode: number, json: () => any }> {
  return await app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${token}` } })
}

describe('api: inspect', () => {
  it('pages through every record in key order, with digests whose XOR per range is the summary', async () => {
    for (let i = 1; i <= 25; i++) await node.db.insert('patient_records', patientRow(i))
    await node.db.patch('patient_records', '3', { address: 'Moved' })
    const seen: Array<{ key: string, token: string, table: string, id: string, heads: string[], digest: string }> = []
    let after: string | undefined
    for (let page = 0; page < 100; page++) {
      const res = await get(`/v1/inspect/records?limit=7${after === undefined ? '' : `&after=${encodeURIComponent(after)}`}`)
      expect(res.statusCode).toBe(200)
      const body = res.json()
      seen.push(...body.records)
      if (body.next === null) break
      after = body.next
    }
    const keys = seen.map(r => r.key)
    expect(keys).toEqual([...keys].sort())
    expect(new Set(keys).size).toBe(keys.length)
    const patients = seen.filter(r => r.table === 'patient_records')
    expect(patients.map(r => Number(r.id)).sort((a, b) => a - b)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1))
    const moved = patients.find(r => r.id === '3')
    expect(moved?.heads).toEqual([(await node.db.get('patient_records', '3')).version])

    const summary = (await get('/v1/inspect/summary')).json()
    expect(summary.ranges).toHaveLength(BUCKETS)
    const xor = Array.from({ length: BUCKETS }, () => Buffer.alloc(32))
    for (const r of seen) {
      const range = xor[parseInt(r.token.slice(0, 2), 16)] as Buffer
      const d = Buffer.from(r.digest, 'hex')
      for (let k = 0; k < 32; k++) range[k] = (range[k] as number) ^ (d[k] as number)
    }
    expect(xor.map(x => x.toString('hex'))).toEqual(summary.ranges)
    expect(summary.pendingHints).toBe(0)
  })

  it('is for admins only, and refuses a bad limit', async () => {
    expect((await get('/v1/inspect/records', nurse)).statusCode).toBe(403)
    expect((await get('/v1/inspect/summary', nurse)).statusCode).toBe(403)
    for (const limit of ['0', '10001', 'x', '-1']) {
      const res = await get(`/v1/inspect/records?limit=${limit}`)
      expect(res.statusCode, limit).toBe(400)
      expect(res.json().error.code).toBe('INVALID')
    }
  })
})
