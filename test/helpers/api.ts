import { Ajv } from 'ajv'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import { routesOf, type RouteEntry } from '../../src/api/openapi.js'
import { createApi, type ApiComponents } from '../../src/api/server.js'
import { ConflictError, NotFoundError } from '../../src/errors/index.js'
import { NodeMetrics } from '../../src/observability/metrics.js'
import { join } from 'node:path'
import { NtsoekheClient } from '../../src/index.js'
import { AuditTrail, storeHead } from '../../src/security/audit.js'
import { UserDirectory } from '../../src/security/users.js'
import { openLocalNode, tempDir, type LocalNode, type TempDir } from './temp.js'

/**
 * The API with every route a networked daemon has: the cluster routes answer
 * as a network of this one node would (no other member to remove or hand
 * records to). `routes` is every route registered, as the recorder saw them.
 */
export function fullApi ({ node, users, trail }: { node: LocalNode, users: UserDirectory, trail: AuditTrail }): { app: FastifyInstance, routes: readonly RouteEntry[] } {
  const members = (): Array<{ peerId: string, state: string }> => [{ peerId: node.peerId, state: 'alive' }]
  // Required: a component added to ApiComponents (and the routes it brings) must be given here, or this does
  // not type-check, so the OpenAPI and client tests see every route a daemon can have.
  const components: Required<ApiComponents> = {
    db: node.db,
    users,
    status: async () => ({ ...(await node.coordinator.status()) }),
    extra: {
      peers: async () => ({ members: members().map(m => ({ ...m, connected: true })) }),
      ring: async () => ({ replicas: 1, members: members().map(m => ({ ...m, share: 1 })), localRows: await node.store.countRows() })
    },
    invite: async () => ({ invite: 'ntsoekhe-invite:test', addresses: [] }),
    removeMember: async peerId => { throw new NotFoundError(`No member ${peerId}`) },
    leave: async () => { throw new ConflictError('No other member is up: there is no one to hand this node\'s records to') },
    repair: async () => ({ ranges: 0, recordsCompared: 0, recordsSent: 0, seconds: 0 }),
    reindex: async (table, progress) => await node.store.reindex(table, progress),
    inspect: {
      records: async () => ({ records: [], next: null }),
      summary: async () => ({ hints: 0, rebalancePending: false })
    },
    backup: {
      node: node.peerId,
      checkReadable: () => {},
      records: async function * () {},
      estimate: async () => 0,
      checkOwnersUp: () => {},
      restore: async () => ({ changed: 0 })
    },
    metrics: new NodeMetrics({ hintsPending: () => 0, readRepairs: () => 0, rebalance: () => ({ pending: false }), antiEntropy: () => ({ running: false, lastRoundAt: null, ranges: 0, rangesDiffering: 0, recordsSent: 0, seconds: 0, failed: 0 }), members: () => [], localRows: async () => ({}), storePath: node.path }),
    audit: e => { trail.record(e) },
    auditTrail: trail,
    logger: pino({ level: 'silent' }),
    version: 'test'
  }
  const app = createApi(components)
  return { app, routes: routesOf(app) }
}

/** An OpenAPI document as the tests read it */
export interface OpenApiDoc {
  openapi: string
  paths: Record<string, Record<string, { operationId: string, parameters: Array<{ name: string, in: string }>, responses: Record<string, { content: Record<string, { schema: unknown }> }> }>>
  components: { schemas: Record<string, unknown> }
}

/**
 * Checks answers against the document: `check(method, path, status, body)`
 * validates `body` with the schema the document gives for that status (or its
 * `default`), and returns the errors, or null when it conforms.
 */
export function answerChecker (doc: OpenApiDoc): (method: string, path: string, status: number, body: unknown) => string | null {
  const ajv = new Ajv({ strict: false, allowUnionTypes: true, validateFormats: false, validateSchema: false })
  ajv.addSchema(doc as object, 'doc')
  return (method, path, status, body) => {
    const op = doc.paths[path]?.[method.toLowerCase()]
    if (op === undefined) return `${method} ${path} is not in the document`
    const key = op.responses[String(status)] === undefined ? 'default' : String(status)
    const type = Object.keys(op.responses[key]?.content ?? {})[0] ?? 'application/json'
    const pointer = ['paths', path, method.toLowerCase(), 'responses', key, 'content', type, 'schema']
      .map(s => encodeURIComponent(s.replace(/~/g, '~0').replace(/\//g, '~1'))).join('/')
    const validate = ajv.getSchema(`doc#/${pointer}`)
    if (validate === undefined) return `no schema at ${pointer}`
    return validate(body) === true ? null : `${method} ${path} ${status}: ${JSON.stringify(validate.errors)} in ${JSON.stringify(body).slice(0, 300)}`
  }
}

/** A one-node socket API as a daemon serves it (fullApi), listening, with an admin's client */
export interface SocketApi {
  dir: TempDir
  node: LocalNode
  app: FastifyInstance
  client: NtsoekheClient
  close: () => Promise<void>
}

/**
 * Opens a node in a temp dir with its roles, an admin and the audit trail,
 * serves fullApi on `<dir>/api.sock` and gives a client with the admin's
 * token. `beforeListen` may add hooks to the app first.
 */
export async function startSocketApi (prefix: string, beforeListen?: (app: FastifyInstance) => void): Promise<SocketApi> {
  const dir = await tempDir(prefix)
  const node = await openLocalNode(dir.path)
  const trail = new AuditTrail({ coordinator: node.coordinator, peerId: node.peerId, head: storeHead(node.store) }, { flushIntervalMs: 10_000 })
  await trail.start()
  const users = new UserDirectory({ db: node.db })
  await users.ensureRoles()
  const token = (await users.add('admin', 'admin')).token
  const app = fullApi({ node, users, trail }).app
  beforeListen?.(app)
  const socket = join(dir.path, 'api.sock')
  await app.listen({ path: socket })
  const client = new NtsoekheClient({ socket, token, writeRetries: 0 })
  return {
    dir,
    node,
    app,
    client,
    close: async () => {
      client.close()
      await app.close()
      await trail.stop()
      await node.close()
      await dir.remove()
    }
  }
}
