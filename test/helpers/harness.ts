import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DistributedCoordinator, type DistributedCoordinatorInit } from '../../src/cluster/distributed.js'
import { Membership } from '../../src/cluster/membership.js'
import { MemoryNetwork } from '../../src/cluster/memory-transport.js'
import { Database } from '../../src/query/database.js'
import { AUDIT_TABLE } from '../../src/cluster/messages.js'
import { AUDIT_INDEXED } from '../../src/security/audit.js'
import { loadOrCreateKeyFile } from '../../src/security/data-key.js'
import { TABLES } from '../../src/schema/index.js'
import { Store } from '../../src/storage/store.js'
import { HybridClock, nodeTag } from '../../src/storage/version.js'
import { testIdentity } from './identity.js'

export interface HarnessNode {
  peerId: string
  store: Store
  membership: Membership
  coordinator: DistributedCoordinator
  db: Database
}

export interface Testnet {
  network: MemoryNetwork
  nodes: HarnessNode[]
  /** Waits until every node with an open store (or those given) sees `count` ring members */
  converge: (count: number, timeoutMs?: number, only?: HarnessNode[]) => Promise<void>
  /** Starts one more node, bootstrapped from the first */
  add: () => Promise<HarnessNode>
  /** Waits until no node has a rebalance scheduled or running */
  settled: (timeoutMs?: number) => Promise<void>
  stop: () => Promise<void>
}

export interface TestnetOptions {
  /** How far the i-th node's clock runs ahead of the real one (ms; negative: behind) */
  clockAheadMs?: (i: number) => number
  /** Where the i-th node's membership warnings go */
  warn?: (i: number, line: string) => void
}

/**
 * Starts `size` nodes in this process over a MemoryNetwork, each with its
 * own LevelDB store in a temp dir, bootstrapped from the first.
 */
export async function createTestnet (size: number, init: DistributedCoordinatorInit = {}, membership = { heartbeatMs: 50, suspectAfterMs: 300, downAfterMs: 800 }, opts: TestnetOptions = {}): Promise<Testnet> {
  const network = new MemoryNetwork()
  const dir = await mkdtemp(join(tmpdir(), 'ntk-net-'))
  const indexes = { ...Object.fromEntries(TABLES.map(t => [t.name, t.indexed])), [AUDIT_TABLE]: AUDIT_INDEXED }
  const nodes: HarnessNode[] = []
  const add = async (): Promise<HarnessNode> => {
    const i = nodes.length
    const { peerId, sign } = testIdentity()
    // Each node encrypts with its own data key, as daemons do.
    const store = new Store({ path: join(dir, `n${i}`), sync: false, indexes, dataKey: await loadOrCreateKeyFile(join(dir, `n${i}.key`)) })
    await store.open()
    const transport = network.transport(peerId)
    const ahead = opts.clockAheadMs?.(i) ?? 0
    const now = (): number => Date.now() + ahead
    const warn = opts.warn
    const m = new Membership({ transport, peerId, sign, addresses: () => [`/memory/${peerId}`], now, ...(warn === undefined ? {} : { warn: (line: string) => { warn(i, line) } }) }, membership)
    const clock = new HybridClock(nodeTag(peerId), now)
    const coordinator = new DistributedCoordinator({ store, clock, peerId, transport, membership: m }, { handoffIntervalMs: 100, timeoutMs: 1000, rebalanceDelayMs: 200, ...init })
    const db = new Database({ coordinator, peerId })
    if (i > 0) m.addCandidate(nodes[0]?.peerId as string)
    await coordinator.start()
    m.start()
    const node = { peerId, store, membership: m, coordinator, db }
    nodes.push(node)
    return node
  }
  for (let i = 0; i < size; i++) await add()
  const testnet: Testnet = {
    network,
    nodes,
    converge: async (count, timeoutMs = 5000, only) => {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const live = only ?? nodes.filter(n => n.store.status === 'open')
        if (live.every(n => n.coordinator.ring.size === count)) return
        if (Date.now() > deadline) {
          throw new Error(`timed out after ${timeoutMs} ms waiting for every node to see ${count} ring members (saw ${live.map(n => n.coordinator.ring.size).join(', ')})`)
        }
        await new Promise(resolve => setTimeout(resolve, 20))
      }
    },
    add,
    settled: async (timeoutMs = 10_000) => {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const busy = nodes.filter(n => n.store.status === 'open' && n.coordinator.rebalanceStatus().pending)
        if (busy.length === 0) return
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${busy.length} nodes to finish rebalancing`)
        await new Promise(resolve => setTimeout(resolve, 20))
      }
    },
    stop: async () => {
      for (const n of nodes) {
        n.membership.stop()
        await n.coordinator.stop()
        if (n.store.status === 'open') await n.store.close()
      }
      await rm(dir, { recursive: true, force: true })
    }
  }
  return testnet
}
