import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LocalCoordinator } from '../../src/cluster/local.js'
import { Database } from '../../src/query/database.js'
import { AUDIT_TABLE } from '../../src/cluster/messages.js'
import { AUDIT_INDEXED } from '../../src/security/audit.js'
import { loadOrCreateDataKey } from '../../src/security/data-key.js'
import { TABLES, type Row } from '../../src/schema/index.js'
import { Store } from '../../src/storage/store.js'
import { HybridClock, nodeTag } from '../../src/storage/version.js'

/** A fresh directory under the OS temp dir; `remove()` deletes it and everything in it */
export interface TempDir {
  path: string
  remove: () => Promise<void>
}

export async function tempDir (prefix = 'ntk-test-'): Promise<TempDir> {
  const path = await mkdtemp(join(tmpdir(), prefix))
  return { path, remove: async () => { await rm(path, { recursive: true, force: true }) } }
}

/** Every table's indexed columns, as the daemon gives them to the store */
export const INDEXES: Record<string, string[]> = { ...Object.fromEntries(TABLES.map(t => [t.name, t.indexed])), [AUDIT_TABLE]: AUDIT_INDEXED }

/** A store, a single-node coordinator and a database over one directory, wired as src/daemon/node.ts does */
export interface LocalNode {
  path: string
  peerId: string
  store: Store
  clock: HybridClock
  coordinator: LocalCoordinator
  db: Database
  close: () => Promise<void>
}

export const TEST_PEER_ID = '12D3KooWLocalTestNode0001'

/**
 * Opens a node on `path` (the store lives in `path/store`, its data key in
 * `path/data.key`: sensitive columns are encrypted as in a daemon). Writes are not
 * fsynced by default, which keeps the tests fast; pass `sync: true` to check
 * durable commits.
 */
export async function openLocalNode (path: string, init: { peerId?: string, sync?: boolean } = {}): Promise<LocalNode> {
  const peerId = init.peerId ?? TEST_PEER_ID
  // The daemon's data key, made in `path` on first use: a reopened node reads what it wrote.
  const store = new Store({ path: join(path, 'store'), sync: init.sync ?? false, indexes: INDEXES, dataKey: await loadOrCreateDataKey(path) })
  await store.open()
  const clock = new HybridClock(nodeTag(peerId))
  const coordinator = new LocalCoordinator({ store, clock, peerId })
  await coordinator.start()
  const db = new Database({ coordinator, peerId })
  return {
    path,
    peerId,
    store,
    clock,
    coordinator,
    db,
    close: async () => {
      await coordinator.stop()
      await store.close()
    }
  }
}

/** A valid patient_records row; without `id` the key is left out, for the database to make one */
export function patientRow (id?: number, extra: Row = {}): Row {
  return {
    ...(id === undefined ? {} : { patient_id: id }),
    patient_name: `Patient ${id ?? 'new'}`,
    date_of_birth: '1980-05-17',
    gender: 'female',
    address: '12 Church Street',
    contact_number: '0712345678',
    email: 'p@example.org',
    ...extra
  }
}
