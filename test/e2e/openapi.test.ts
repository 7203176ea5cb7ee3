/**
 * End to end: a real daemon serves GET /v1/openapi.json with every route a
 * networked node has, and its real answers (status, peers, ring, invite,
 * repair…) are what the document says.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NtsoekheClient } from '../../src/client/index.js'
import { answerChecker, type OpenApiDoc } from '../helpers/api.js'
import { adminToken, cli, json, makeHome, startDaemon, type TestDaemon } from '../helpers/daemon.js'

describe('GET /v1/openapi.json end to end', () => {
  let daemon: TestDaemon
  let api: NtsoekheClient
  let doc: OpenApiDoc

  beforeAll(async () => {
    const home = await makeHome()
    daemon = await startDaemon({ home })
    api = new NtsoekheClient({ socket: daemon.socket, token: await adminToken(home) })
    doc = await api.request<OpenApiDoc>('GET', '/v1/openapi.json')
  })

  afterAll(async () => {
    api?.close()
    await daemon?.stop()
  })

  it('lists the routes of a networked node', () => {
    expect(doc.openapi).toBe('3.1.0')
    const operations = Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map(m => `${m.toUpperCase()} ${path}`))
    for (const route of ['GET /v1/status', 'GET /v1/peers', 'GET /v1/ring', 'GET /v1/invite', 'DELETE /v1/members/{peerId}', 'POST /v1/leave', 'POST /v1/repair',
      'GET /v1/audit', 'GET /v1/export', 'POST /v1/batch', 'GET /v1/tables/{table}/rows', 'POST /v1/tables/{table}/import', 'GET /v1/openapi.json']) {
      expect(operations, route).toContain(route)
    }
  })

  it('the daemon\'s answers match it', async () => {
    const conforms = answerChecker(doc)
    const checks: Array<[string, string, () => Promise<unknown>]> = [
      ['GET', '/v1/status', async () => await api.status()],
      ['GET', '/v1/peers', async () => await api.peers()],
      ['GET', '/v1/ring', async () => await api.ring()],
      ['GET', '/v1/tables', async () => await api.tables()],
      ['GET', '/v1/invite', async () => await api.invite()],
      ['POST', '/v1/repair', async () => await api.repair()],
      ['GET', '/v1/roles', async () => await api.roles()],
      ['GET', '/v1/users', async () => await api.users()],
      ['GET', '/v1/audit', async () => await api.verifyAudit()]
    ]
    for (const [method, path, call] of checks) expect(conforms(method, path, 200, await call())).toBeNull()
    // A refusal is the error body the document gives as `default`.
    const refused = await api.removeMember('12D3KooWNoSuchMember').then(() => undefined, (err: { code: string, message: string }) => ({ error: { code: err.code, message: err.message } }))
    expect(refused).toBeDefined()
    expect(conforms('DELETE', '/v1/members/{peerId}', 404, refused)).toBeNull()
  })

  it('any user with a token may read it; no one without', async () => {
    const made = await cli(['user', 'add', 'nurse.oa', '--role', 'nurse', '--json'], { home: daemon.home })
    expect(made.code, made.stderr).toBe(0)
    const nurse = new NtsoekheClient({ socket: daemon.socket, token: json<{ token: string }>(made).token })
    try {
      expect((await nurse.request<OpenApiDoc>('GET', '/v1/openapi.json')).paths).toEqual(doc.paths)
    } finally {
      nurse.close()
    }
    const anonymous = new NtsoekheClient({ socket: daemon.socket })
    try {
      await expect(anonymous.request('GET', '/v1/openapi.json')).rejects.toMatchObject({ code: 'UNAUTHORIZED' })
    } finally {
      anonymous.close()
    }
  })
})
