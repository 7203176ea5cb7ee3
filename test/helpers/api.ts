import type { FastifyInstance } from 'fastify'
import { routesOf, type RouteEntry } from '../../src/api/openapi.js'
import { createApi } from '../../src/api/server.js'
import { ConflictError, NotFoundError } from '../../src/errors/index.js'
import type { AuditTrail } from '../../src/security/audit.js'
import type { UserDirectory } from '../../src/security/users.js'
import type { LocalNode } from './temp.js'

/**
 * The API with every route a networked daemon has: the cluster routes answer
 * as a network of this one node would (no other member to remove or hand
 * records to). `routes` is every route registered, as the recorder saw them.
 */
export function fullApi ({ node, users, trail }: { node: LocalNode, users: UserDirectory, trail: AuditTrail }): { app: FastifyInstance, routes: readonly RouteEntry[] } {
  const members = (): Array<{ peerId: string, state: string }> => [{ peerId: node.peerId, state: 'alive' }]
  const app = createApi({
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
    audit: e => { trail.record(e) },
    auditTrail: trail
  })
  return { app, routes: routesOf(app) }
}
