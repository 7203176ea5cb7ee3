import type { Store, RecordState, VersionEntry } from '../storage/store.js'
import type { HybridClock } from '../storage/version.js'
import type { ClusterStatus, Coordinator, FragmentAnswer, GroupOutcome, InsertOutcome, Mutation, QueryPage, ScanPage, ScanRequest, WriteResult } from './coordinator.js'
import type { RowQuery } from '../storage/ordered.js'
import { runFragment, storeSource, type Fragment } from '../query/fragment.js'
import { singleShardOf } from './query-merge.js'
import { recallWrites } from './idempotency.js'
import { mutationKey, orderGroups, orderMutations } from './mutations.js'
import { tokenOf } from './token.js'

export interface LocalCoordinatorComponents {
  store: Store
  clock: HybridClock
  peerId: string
}

/**
 * The coordinator of a node alone (N = 1): every key's primary and only
 * replica is this node, and a write is acknowledged once it is durable here.
 */
export class LocalCoordinator implements Coordinator {
  private readonly components: LocalCoordinatorComponents

  constructor (components: LocalCoordinatorComponents) {
    this.components = components
  }

  async start (): Promise<void> {}
  async stop (): Promise<void> {}

  async write (mutations: Mutation[]): Promise<WriteResult[]> {
    let results: WriteResult[] = []
    const recalled = await recallWrites(this.components.store, mutations)
    await this.components.store.transact(mutations.map(mutationKey), states => {
      const ordered = orderMutations(mutations, states, this.components.clock, false, recalled)
      results = ordered.results
      return ordered.entries
    })
    return results
  }

  async writeGroups (groups: Mutation[][]): Promise<GroupOutcome[]> {
    let outcomes: GroupOutcome[] = []
    await this.components.store.transact(groups.flat().map(mutationKey), states => {
      const ordered = orderGroups(groups, states, this.components.clock)
      outcomes = ordered.outcomes
      return ordered.entries
    })
    return outcomes
  }

  async insertOnce (groups: VersionEntry[][]): Promise<InsertOutcome[]> {
    await this.components.store.insertOnce(groups.flat(), { own: true })
    return groups.map(() => ({ ok: true }))
  }

  async read (table: string, id: string, shard: string): Promise<RecordState | undefined> {
    return await this.components.store.get(table, tokenOf(shard), id)
  }

  async readLocal (table: string, id: string, shard: string): Promise<RecordState | undefined> {
    return await this.read(table, id, shard)
  }

  async history (table: string, id: string, shard: string): Promise<VersionEntry[]> {
    return await this.components.store.versions(table, tokenOf(shard), id)
  }

  async scan (table: string, request: ScanRequest): Promise<ScanPage> {
    return await this.components.store.scan(table, request)
  }

  async query (table: string, request: RowQuery): Promise<QueryPage> {
    const { plan: _, ...page } = await this.components.store.query(table, request)
    return { ...page, asked: [{ peer: this.components.peerId, ranges: 1 }], singleShard: singleShardOf(table, request.filter) !== undefined }
  }

  async fragment (fragment: Fragment): Promise<FragmentAnswer> {
    const result = await runFragment(fragment, storeSource(this.components.store, undefined))
    return { result, asked: [{ peer: this.components.peerId, ranges: 1 }], singleShard: singleShardOf(fragment.table, fragment.filter) !== undefined, rechecked: 0 }
  }

  async purge (table: string, id: string, shard: string): Promise<number> {
    await this.components.store.purge({ table, id, token: tokenOf(shard), version: this.components.clock.tick(), time: Date.now() })
    return 1
  }

  async status (): Promise<ClusterStatus> {
    return {
      peerId: this.components.peerId,
      replicas: 1,
      writeQuorum: 1,
      readQuorum: 1,
      members: [{ peerId: this.components.peerId, state: 'alive', addresses: [] }],
      underReplicated: false
    }
  }
}
