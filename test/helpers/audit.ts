import { Level } from 'level'
import { AUDIT_TABLE } from '../../src/cluster/messages.js'

/**
 * Changes one field of a stored audit entry directly in a closed store's
 * LevelDB (`<home>/store`), as someone with the disk would: the record keeps
 * its one version, only the row changes. Returns the field's old value.
 */
export async function alterStoredEntry (storePath: string, id: string, field: string, value: string): Promise<unknown> {
  const db = new Level<string, any>(storePath, { valueEncoding: 'json' })
  await db.open()
  try {
    const records = db.sublevel<string, any>('r', { valueEncoding: 'json' })
    for await (const [key, record] of records.iterator()) {
      if (!key.endsWith(`!${AUDIT_TABLE}!${id}`)) continue
      const head = record.heads[0]
      const old = head.row[field]
      head.row[field] = value
      await records.put(key, record)
      return old
    }
    throw new Error(`no ${AUDIT_TABLE} entry ${id} in ${storePath}`)
  } finally {
    await db.close()
  }
}
