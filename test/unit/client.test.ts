import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openApiPath } from '../../src/api/openapi.js'
import { NtsoekheClient } from '../../src/index.js'
import { startSocketApi, type SocketApi } from '../helpers/api.js'
import { patientRow } from '../helpers/temp.js'

let api: SocketApi
let client: NtsoekheClient
/** Every request the server saw: method, route (fastify's form) and query parameter names */
let seen: Array<{ method: string, route: string | undefined, query: string[], headers: string[] }>

beforeEach(async () => {
  seen = []
  api = await startSocketApi('ntk-client-', app => {
    app.addHook('onRequest', async req => {
      seen.push({ method: req.method, route: req.routeOptions.url, query: Object.keys(req.query as object), headers: Object.keys(req.headers) })
    })
  })
  ;({ client } = api)
})

afterEach(async () => {
  await api.close()
})

/** Headers of HTTP itself, which the document does not list as parameters */
const HTTP_HEADERS = new Set(['host', 'connection', 'accept', 'authorization', 'content-type', 'content-length', 'transfer-encoding'])

type Doc = { paths: Record<string, Record<string, { parameters: Array<{ name: string, in: string }> }>> }

/** Runs a call that may be refused (the point is the route it uses, not the answer) */
async function either (call: Promise<unknown>): Promise<void> {
  await call.catch((err: unknown) => {
    if (!(err instanceof Error) || !('code' in err) || err.code === 'INTERNAL') throw err
  })
}

describe('client: follows the OpenAPI document', () => {
  it('every client method calls a documented route with documented parameters, and every method is tried', async () => {
    const calls: Record<string, () => Promise<unknown>> = {
      status: async () => await client.status(),
      tables: async () => await client.tables(),
      peers: async () => await client.peers(),
      ring: async () => await client.ring(),
      invite: async () => await client.invite(),
      removeMember: async () => { await either(client.removeMember('12D3KooWGone')) },
      leave: async () => { await either(client.leave()) },
      repair: async () => await client.repair(),
      audit: async () => await client.audit({ patient: '1', user: 'admin', since: '2026-01-01T00:00:00Z' }),
      verifyAudit: async () => await client.verifyAudit(),
      addUser: async () => await client.addUser('omar', 'doctor'),
      users: async () => await client.users(),
      revokeUser: async () => await client.revokeUser('omar'),
      roles: async () => await client.roles(),
      openapi: async () => await client.openapi(),
      insert: async () => await client.insert('patient_records', patientRow(1), { consistency: 'all' }),
      get: async () => await client.get('patient_records', 1, { consistency: 'one', local: true, breakGlass: 'the patient collapsed' }),
      replace: async () => await client.replace('patient_records', 1, patientRow(1), { consistency: 'quorum' }),
      update: async () => { await either(client.update('patient_records', 1, { allergies: 'dust' }, { ifMatch: ['000000000000001.000000.gone'] })) },
      history: async () => await client.history('patient_records', 1, { consistency: 'all' }),
      query: async () => await client.query('patient_records', { gender: 'female' }, { limit: 5, consistency: 'one' }),
      batch: async () => await client.batch([{ op: 'patch', table: 'patient_records', id: 1, row: { allergies: 'none' } }], { consistency: 'all' }),
      import: async () => await client.import('patient_records', `${JSON.stringify(patientRow(2))}\n`, 'ndjson', { consistency: 'all' }),
      export: async () => {
        const { body } = await client.export({ tables: ['patient_records'], anonymize: true, consistency: 'all' })
        for await (const _ of body) { /* drained */ }
      },
      backup: async () => {
        const { body } = await client.backup()
        for await (const _ of body) { /* drained */ }
      },
      restore: async () => { await either(client.restore('')) },
      delete: async () => await client.delete('patient_records', 2, { cascade: true, consistency: 'all' }),
      purge: async () => await client.purge('patient_records', 1),
      sql: async () => await client.sql('SELECT patient_id FROM patient_records WHERE patient_id = $1', [1], { consistency: 'one' }),
      reindex: async () => await client.reindex('patient_records')
    }
    // A method added to the client without a call here fails this test.
    const methods = Object.getOwnPropertyNames(NtsoekheClient.prototype)
      .filter(m => !['constructor', 'close', 'request', 'write', 'headers', 'armTimeout', 'connectError'].includes(m))
    const untried = methods.filter(m => !(m in calls))
    expect(untried, `client methods this test does not call (add a call for each): ${untried.join(', ')}`).toEqual([])
    expect(Object.keys(calls).filter(m => !methods.includes(m))).toEqual([])

    const doc = await client.openapi() as unknown as Doc
    for (const [name, call] of Object.entries(calls)) {
      seen = []
      await call()
      expect(seen.length, name).toBeGreaterThan(0)
      for (const { method, route, query, headers } of seen) {
        expect(route, `${name}: ${method} to a route the server does not have`).toBeDefined()
        const op = doc.paths[openApiPath(route ?? '')]?.[method.toLowerCase()]
        expect(op, `${name}: ${method} ${route ?? ''} is not in the document`).toBeDefined()
        const documented = new Set(op?.parameters.filter(p => p.in === 'query').map(p => p.name))
        for (const q of query) {
          expect(documented.has(q) || documented.has('filters'), `${name}: query parameter ${q} of ${method} ${route ?? ''} is not documented`).toBe(true)
        }
        // A header of the API's own (not HTTP's plumbing) is a documented header parameter of the operation.
        const documentedHeaders = new Set(op?.parameters.filter(p => p.in === 'header').map(p => p.name.toLowerCase()))
        for (const h of headers.filter(h => !HTTP_HEADERS.has(h))) {
          expect(documentedHeaders.has(h), `${name}: header ${h} of ${method} ${route ?? ''} is not documented`).toBe(true)
        }
      }
    }
  })
})
