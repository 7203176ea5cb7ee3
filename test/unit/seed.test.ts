import { PassThrough } from 'node:stream'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { seed } from '../../src/cli/seed.js'
import { NtsoekheClient } from '../../src/index.js'
import { startSocketApi, type SocketApi } from '../helpers/api.js'
import type { LocalNode } from '../helpers/temp.js'

let api: SocketApi
let node: LocalNode
let client: NtsoekheClient

beforeEach(async () => {
  api = await startSocketApi('ntk-seed-')
  ;({ node, client } = api)
})

afterEach(async () => {
  await api.close()
})

/** Runs seed at scale 1 and returns its counts and what it said on stderr */
async function seeded (): Promise<{ counts: Record<string, number>, said: string }> {
  let said = ''
  const counts = await seed(client, 1, { stdout: { write: () => true }, stderr: { write: (s: string) => { said += s } }, stdin: new PassThrough() })
  return { counts, said }
}

describe('seed', () => {
  it('fills every table, users included, and says that it reuses the roles a network is made with', async () => {
    const { counts, said } = await seeded()
    for (const table of ['users', 'doctors_info', 'patient_records', 'medications', 'appointments', 'medical_history', 'billing_insurance', 'patient_medications', 'lab_results']) {
      expect(counts[table], table).toBe(20)
    }
    expect(counts.user_roles).toBeUndefined()
    expect(said).toMatch(/roles \(user_roles: admin, doctor, nurse, billing, auditor\) are there already and are reused/)
    expect((await node.db.list('users', {}, { limit: 1000 })).rows).toHaveLength(21)
  }, 60_000)

  it('creates the roles a network lacks, says so, and counts them under user_roles', async () => {
    for (const id of ['4', '5']) await node.db.delete('user_roles', id)
    const { counts, said } = await seeded()
    expect(said).toMatch(/created the roles billing, auditor \(user_roles\), which this network lacked/)
    expect(counts.user_roles).toBe(2)
    const roles = (await node.db.list('user_roles', {}, { limit: 100 })).rows.map(r => r.role_name)
    expect(roles.sort()).toEqual(['admin', 'auditor', 'billing', 'doctor', 'nurse'])
    // Demo users are given every role in turn, the created ones too.
    const given = new Set((await node.db.list('users', {}, { limit: 1000 })).rows.map(r => r.role_id))
    expect(given.size).toBe(5)
  }, 60_000)
})
