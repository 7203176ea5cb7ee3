// Backup and restore with nothing of the database in them: a ceiling for the
// bench's backup section. One process does what `ntsoekhe backup` and
// `ntsoekhe restore` do to the records, on the same components, and nothing else:
//
//   restore: reads a backup's chunk files (as `ntsoekhe backup` wrote them,
//   in the clear) one after the other, checks each file's SHA-256 against the
//   manifest, gunzips it (the product's openChunk), parses each NDJSON line
//   and writes, through the store's group commit (fsync), one LevelDB batch
//   per RESTORE_BATCH records of the keys the store writes for a record it
//   receives: the record (its state and head rows), each of its other
//   versions, the table list entry, its equality and ordered index entries.
//   One batch is made durable while the next is parsed, as the restore
//   route does.
//
//   backup: walks such a LevelDB's records with one iterator (nextv), turns
//   each into the NDJSON line the backup writes (a BackupRecord: place,
//   state, versions; a record with history would read it from the `h`
//   sublevel, none of these has any), and writes chunks of the product's
//   CHUNK_TEXT_BYTES through the product's sealChunk (gzip at its level),
//   SHA-256 and a durable write, one chunk sealed while the next fills, then
//   a manifest.
//
// Left out, on purpose: the CLI and the daemon as two processes and the
// socket between them, pages from LevelDB snapshots, the rows' decryption
// (backup) and encryption (restore), the check of every record before a
// restore writes anything (the CLI's verify) and again on the daemon, the
// owners' placement, locks, reads of what the store holds, the range summary,
// keyed hashes in index entries. Whatever rate this reaches bounds what
// backup and restore reach on these components.
//
//   node test/bench/backup-skeleton.js restore <backupDir> <dbDir>   prints {"records","seconds"}
//   node test/bench/backup-skeleton.js backup <dbDir> <outDir>        prints {"records","chunks","bytes","seconds"}
//
// Timed from the first chunk read (restore) or the first record read
// (backup) to the last byte durable. Benchmark code: input is trusted.
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { Level } from 'level'
import { CHUNK_TEXT_BYTES, writeDurably } from '../../dist/backup/backup-dir.js'
import { chunkName, openChunk, sealChunk, sha256 } from '../../dist/backup/chunk.js'
import { findTable } from '../../dist/schema/index.js'
import { GroupCommitter } from '../../dist/storage/group-commit.js'
import { encodeIndexValue, recordKey, SEP } from '../../dist/storage/keys.js'
import { orderedEntries } from '../../dist/storage/ordered.js'
import { decodeVersionLists, encodeVersionLists } from '../../dist/storage/version-list.js'
import { compareVersions } from '../../dist/storage/version.js'

/** Records the restore route hands to the store at once (src/api/backup.ts) */
const RESTORE_BATCH = 2000
/** Records read from LevelDB per call */
const READ_BATCH = 1000
const sub = name => `!${name}!`
const [role, ...args] = process.argv.slice(2)

if (role === 'restore') {
  const [backupDir, dbDir] = args
  const manifest = JSON.parse(await readFile(join(backupDir, 'manifest.json'), 'utf8'))
  const db = new Level(dbDir, { valueEncoding: 'utf8' })
  await db.open()
  // The store writes its encoded operations straight to classic-level's _batch (see writeBatch in store.ts).
  const committer = new GroupCommitter(async (ops, sync) => { await db._batch(ops, { sync }) }, { sync: true })
  const started = performance.now()
  let records = 0
  let ops = []
  let inBatch = 0
  let writing = Promise.resolve()
  const flush = async () => {
    await writing
    const taken = ops
    ops = []
    inBatch = 0
    if (taken.length > 0) writing = committer.commit(taken)
  }
  for (const entry of manifest.chunks) {
    const bytes = await readFile(join(backupDir, entry.file))
    if (sha256(bytes) !== entry.sha256) throw new Error(`${entry.file}: checksum mismatch`)
    const text = await openChunk(bytes, entry.file)
    for (const line of text.slice(0, -1).split('\n')) {
      receive(JSON.parse(line), ops)
      records++
      if (++inBatch >= RESTORE_BATCH) await flush()
    }
  }
  await flush()
  await writing
  const seconds = (performance.now() - started) / 1000
  await db.close()
  process.stdout.write(JSON.stringify({ records, seconds }) + '\n')
} else if (role === 'backup') {
  const [dbDir, outDir] = args
  const db = new Level(dbDir, { valueEncoding: 'utf8' })
  await db.open()
  const started = performance.now()
  const manifest = { chunks: [], records: 0, bytes: 0 }
  let text = []
  let textBytes = 0
  let records = 0
  let writing = Promise.resolve()
  const cut = async () => {
    if (text.length === 0) return
    const body = text.join('\n') + '\n'
    const entry = { file: chunkName(manifest.chunks.length + 1, false), records: text.length, bytes: 0, sha256: '' }
    manifest.chunks.push(entry)
    text = []
    textBytes = 0
    const before = writing
    const sealing = sealChunk(body, entry.file)
    writing = (async () => {
      await before
      const bytes = await sealing
      entry.bytes = bytes.length
      entry.sha256 = sha256(bytes)
      await writeDurably(join(outDir, entry.file), bytes)
      manifest.bytes += bytes.length
    })()
    await before
  }
  const iterator = db.iterator({ gt: sub('r'), lt: sub('r') + '\xff' })
  for (;;) {
    const page = await iterator.nextv(READ_BATCH)
    if (page.length === 0) break
    for (const [k, v] of page) {
      const line = JSON.stringify(backupLine(k.slice(3), JSON.parse(v)))
      text.push(line)
      textBytes += line.length + 1
      records++
    }
    if (textBytes >= CHUNK_TEXT_BYTES) await cut()
  }
  await iterator.close()
  await cut()
  await writing
  manifest.records = records
  await writeDurably(join(outDir, 'manifest.json'), Buffer.from(JSON.stringify(manifest, null, 2) + '\n'))
  const seconds = (performance.now() - started) / 1000
  await db.close()
  process.stdout.write(JSON.stringify({ records, chunks: manifest.chunks.length, bytes: manifest.bytes, seconds }) + '\n')
} else {
  console.error('usage: node test/bench/backup-skeleton.js restore <backupDir> <dbDir> | backup <dbDir> <outDir>')
  process.exit(2)
}

/** The keys the store writes for a record it receives whole, pushed onto `ops` */
function receive (r, ops) {
  const { table, id, token } = r
  const rk = recordKey(token, table, id)
  const byVersion = new Map(r.versions.map(v => [v.version, v]))
  const heads = r.heads.map(h => byVersion.get(h))
  const stored = { heads: heads.map(h => ({ version: h.version, parents: h.parents, row: h.row, ...(h.writeId === undefined ? {} : { writeId: h.writeId }) })), ...encodeVersionLists(r.seen, r.superseded) }
  ops.push({ type: 'put', key: sub('r') + rk, value: JSON.stringify(stored) })
  const headSet = new Set(r.heads)
  for (const v of r.versions) {
    if (!headSet.has(v.version)) ops.push({ type: 'put', key: sub('h') + rk + SEP + v.version, value: JSON.stringify({ table, id, token, ...v }) })
  }
  const row = heads[0]?.row
  if (row === null || row === undefined) return
  const pos = token + SEP + id
  ops.push({ type: 'put', key: sub('t') + table + SEP + pos, value: '1' })
  const def = findTable(table)
  if (def === undefined) return
  for (const col of def.indexed ?? []) {
    const v = row[col]
    if (v !== null && v !== undefined) ops.push({ type: 'put', key: sub('i') + table + SEP + col + SEP + encodeIndexValue(v) + SEP + pos, value: '1' })
  }
  for (const k of orderedEntries(def, row, token, id)) ops.push({ type: 'put', key: sub('o') + k, value: '1' })
}

/** A stored record (key without its sublevel prefix) as the BackupRecord line a backup holds */
function backupLine (key, stored) {
  const [token, table, id] = key.split(SEP, 3)
  const { seen, superseded } = decodeVersionLists(stored)
  const versions = stored.heads.map(h => ({ version: h.version, parents: h.parents, row: h.row, ...(h.writeId === undefined ? {} : { writeId: h.writeId }) }))
  versions.sort((a, b) => compareVersions(a.version, b.version))
  return { table, id, token, heads: stored.heads.map(h => h.version), seen, superseded, versions }
}
