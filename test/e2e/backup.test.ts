import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { cp, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { chunkLines, openBackup, readChunk } from '../../src/backup/backup-dir.js'
import { parseBackupRecord } from '../../src/backup/record.js'
import { runBackup } from '../../src/cli/backup.js'
import { NtsoekheClient } from '../../src/client/index.js'
import type { WholeRecord } from '../../src/storage/store.js'
import { adminToken, BIN, cli, json, makeHome, ROOT, startDaemon, track, type TestDaemon } from '../helpers/daemon.js'
import { e2ePatient, waitFor, waitForValue } from '../helpers/wait.js'

/**
 * Backup and restore with real daemons: a 3-node network is backed up while
 * it takes writes, then restored into a new 1-node and a new 2-node network
 * (every row and its history, on every owner), again (nothing changes), as
 * of a moment between two updates, and from a damaged copy (refused, nothing
 * written).
 */
const daemons: TestDaemon[] = []

afterAll(async () => {
  await Promise.all(daemons.map(async d => await d.stop().catch(() => {})))
}, 60_000)

function client (d: TestDaemon, token: string): NtsoekheClient {
  return new NtsoekheClient({ socket: d.socket, token })
}

/** A new network of `size` daemons (the first creates it, the others join by invite), every member seen alive, and its admin's token */
async function network (size: number, args: string[] = []): Promise<{ nodes: TestDaemon[], token: string }> {
  const first = await startDaemon({ args })
  daemons.push(first)
  const token = await adminToken(first.home)
  const nodes = [first]
  if (size > 1) {
    const { invite } = await client(first, token).invite()
    for (let i = 1; i < size; i++) {
      const d = await startDaemon({ args: ['--join', invite, ...args] })
      daemons.push(d)
      nodes.push(d)
    }
    await waitForValue(`${size} members to see each other alive`, async () => {
      for (const d of nodes) {
        const s = await client(d, token).status()
        if ((s.members as Array<{ state: string }>).filter(m => m.state === 'alive').length !== size) return false
      }
      return true
    })
  }
  return { nodes, token }
}

/** The records of one table in a backup, by id */
async function backupRecords (dir: string, table: string, keyFile?: Uint8Array): Promise<Map<string, WholeRecord>> {
  const backup = await openBackup(dir, keyFile)
  const out = new Map<string, WholeRecord>()
  for (const entry of backup.manifest.chunks) {
    for (const line of chunkLines(await readChunk(backup, entry), entry)) {
      const r = parseBackupRecord(JSON.parse(line))
      if (r.state.table === table) out.set(r.state.id, r)
    }
  }
  return out
}

/** Every version of a row as `history` shows it: version and row */
async function historyOf (api: NtsoekheClient, table: string, id: string): Promise<Array<{ version: string, row: unknown }>> {
  return (await api.history(table, id)).versions.map(v => ({ version: v.version, row: v.row }))
}

/** Checks that a network holds every patient record of the backup with its whole history */
async function expectRestored (api: NtsoekheClient, records: Map<string, WholeRecord>): Promise<void> {
  for (const [id, r] of records) {
    expect(await historyOf(api, 'patient_records', id), `history of patient ${id}`).toEqual(r.versions.map(v => ({ version: v.version, row: v.row })))
  }
}

describe('backup and restore between real networks', () => {
  it('backs up 3 nodes under writes, restores into 1 and 2 nodes, twice, as of a moment, and refuses a damaged copy', async () => {
    const { nodes: source, token } = await network(3)
    const api = client(source[0]!, token)
    for (let i = 1; i <= 40; i++) await api.insert('patient_records', e2ePatient(i))
    await api.update('patient_records', 1, { address: 'first update' })
    const between = Date.now()
    await waitFor('the clock to pass the moment between the two updates', () => Date.now() > between + 2)
    await api.update('patient_records', 1, { address: 'second update' })
    await api.delete('patient_records', 3)
    for (let i = 41; i <= 45; i++) await api.insert('patient_records', e2ePatient(i))

    // Writes on another member all through the backup: new rows, and one row updated over and over.
    const writer = client(source[1]!, token)
    let writing = true
    let written = 0
    const writes = (async () => {
      for (let i = 1000; writing; i++) {
        await writer.insert('patient_records', e2ePatient(i))
        await writer.update('patient_records', 2, { address: `update ${i}` })
        written++
      }
    })()
    await waitFor('the concurrent writer to start', () => written >= 2, 30_000)
    const dir = join(await makeHome(), 'bk')
    const writtenBefore = written
    const made = await cli(['backup', dir, '--json'], { home: source[2]!.home, token })
    const writtenDuring = written - writtenBefore
    writing = false
    await writes
    expect(made.code, made.stderr).toBe(0)
    expect(made.stderr).toMatch(/not encrypted/)
    expect(writtenDuring).toBeGreaterThan(0)
    const summary = json(made)
    expect(summary).toMatchObject({ dir, encrypted: false, span: { from: expect.any(String), to: expect.any(String) } })
    expect(summary.tables.patient_records.records).toBeGreaterThanOrEqual(45)
    expect(summary.rows).toBe(Object.values(summary.tables as Record<string, { rows: number }>).reduce((n, t) => n + t.rows, 0))

    // Never into a directory that holds anything: one line, exit 2, and no warning of a backup that was not made.
    const occupied = await cli(['backup', dir, '--json'], { home: source[0]!.home, token })
    expect(occupied.code).toBe(2)
    expect(occupied.stdout).toBe('')
    expect(occupied.stderr).toMatch(/^error: \S+ is not empty; a backup goes into a new or empty directory\n$/)

    const verified = await cli(['backup', '--verify', dir, '--json'])
    expect(verified.code, verified.stderr).toBe(0)
    expect(json(verified)).toMatchObject({ ok: true, records: summary.records, rows: summary.rows, versions: summary.versions })

    // Every record once, each whole: the row updated during the backup holds a prefix of its history, ending at its head.
    const records = await backupRecords(dir, 'patient_records')
    for (let i = 1; i <= 45; i++) expect(records.has(String(i)), `patient ${i} in the backup`).toBe(true)
    const updated = records.get('2')!
    const full = await historyOf(api, 'patient_records', '2')
    expect(full.slice(0, updated.versions.length)).toEqual(updated.versions.map(v => ({ version: v.version, row: v.row })))
    expect(updated.state.heads.map(h => h.version)).toEqual([updated.versions[updated.versions.length - 1]!.version])
    for (const [id, r] of records) {
      if (Number(id) < 1000) continue
      expect(await historyOf(api, 'patient_records', id)).toEqual(r.versions.map(v => ({ version: v.version, row: v.row })))
    }

    // Into a new single node: every row and its history; a second restore changes nothing.
    const { nodes: [single], token: singleToken } = await network(1)
    const restored = await cli(['restore', dir, '--json'], { home: single!.home })
    expect(restored.code, restored.stderr).toBe(0)
    expect(json(restored)).toMatchObject({ dir, asOf: null, records: summary.records, versions: summary.versions, changed: summary.records })
    const singleApi = client(single!, singleToken)
    await expectRestored(singleApi, records)
    await expect(singleApi.get('patient_records', 3)).rejects.toThrow(/not found|deleted/i)
    expect((await singleApi.get('patient_records', 1)).row.address).toBe('second update')
    // The old network's users came along: its admin's token works here too.
    expect((await client(single!, token).status()).peerId).toBeDefined()
    const again = await cli(['restore', dir, '--json'], { home: single!.home })
    expect(again.code, again.stderr).toBe(0)
    expect(json(again)).toMatchObject({ records: summary.records, changed: 0 })
    await expectRestored(singleApi, records)

    // Into a new pair: each record on both of its owners (N = 3 on two members).
    const { nodes: pair, token: pairToken } = await network(2)
    const toPair = await cli(['restore', dir, '--json'], { home: pair[1]!.home, token: pairToken })
    expect(toPair.code, toPair.stderr).toBe(0)
    await expectRestored(client(pair[0]!, pairToken), records)
    for (const d of pair) {
      const local = client(d, pairToken)
      for (const id of ['1', '2', '40', '45']) {
        expect((await local.get('patient_records', id, { local: true })).version, `patient ${id} on ${d.home}`).toBe(records.get(id)!.state.heads[0]!.version)
      }
    }

    // A damaged copy is refused, naming the chunk, before anything is written.
    const { nodes: [fresh], token: freshToken } = await network(1)
    const freshApi = client(fresh!, freshToken)
    // The node's own internal records (its audit trail's seals) may grow meanwhile: the tables of rows may not.
    const rowTables = async (): Promise<Record<string, number>> => Object.fromEntries(Object.entries((await freshApi.ring()).localRows as Record<string, number>).filter(([t]) => !t.startsWith('_')))
    const rowsBefore = await rowTables()
    const damaged = join(await makeHome(), 'bk')
    await cp(dir, damaged, { recursive: true })
    const manifest = JSON.parse(await readFile(join(damaged, 'manifest.json'), 'utf8')) as { chunks: Array<{ file: string }> }
    const chunk = manifest.chunks[manifest.chunks.length - 1]!.file
    const bytes = await readFile(join(damaged, chunk))
    await writeFile(join(damaged, chunk), bytes.subarray(0, bytes.length - 7))
    const refused = await cli(['restore', damaged, '--json'], { home: fresh!.home })
    expect(refused.code).toBe(1)
    expect(refused.stdout).toBe('')
    expect(refused.stderr).toContain(chunk)
    expect(refused.stderr).toMatch(/truncated/)
    expect(await rowTables()).toEqual(rowsBefore)
    await expect(freshApi.get('patient_records', 1)).rejects.toThrow(/not found/i)

    // As of the moment between the two updates: the first update, and no row inserted after it.
    const asOf = await cli(['restore', dir, '--as-of', new Date(between).toISOString(), '--json'], { home: fresh!.home })
    expect(asOf.code, asOf.stderr).toBe(0)
    expect(asOf.stderr).not.toMatch(/warning/)
    expect(json(asOf).asOf).toBe(new Date(between).toISOString())
    const one = await historyOf(freshApi, 'patient_records', '1')
    expect(one.map(v => v.version)).toEqual(records.get('1')!.versions.slice(0, 2).map(v => v.version))
    expect((await freshApi.get('patient_records', 1)).row.address).toBe('first update')
    expect((await freshApi.get('patient_records', 3)).row.patient_name).toBe('Patient 3')
    await expect(freshApi.get('patient_records', 41)).rejects.toThrow(/not found/i)
    // Into a network holding rows, a point in time is said not to roll anything back (and it does not).
    const into = await cli(['restore', dir, '--as-of', new Date(between - 1).toISOString(), '--json'], { home: fresh!.home })
    expect(into.code, into.stderr).toBe(0)
    expect(into.stderr).toMatch(/^warning: this network holds \d+ rows already: records changed after --as-of stay at their later versions/m)
    expect((await freshApi.get('patient_records', 1)).row.address).toBe('first update')

    // Encrypted: the key file is needed, a wrong one is refused; only admins back up, and it is audited.
    const keyHome = await makeHome()
    const keyFile = join(keyHome, 'backup.key')
    await writeFile(keyFile, randomBytes(32))
    const sealedDir = join(keyHome, 'bk')
    const sealed = await cli(['backup', sealedDir, '--key', keyFile, '--json'], { home: source[0]!.home, token })
    expect(sealed.code, sealed.stderr).toBe(0)
    expect(sealed.stderr).not.toMatch(/not encrypted/)
    expect(json(sealed).encrypted).toBe(true)
    expect((await cli(['backup', '--verify', sealedDir, '--key', keyFile])).code).toBe(0)
    expect((await cli(['backup', '--verify', sealedDir])).code).toBe(2)
    const wrongKey = join(keyHome, 'wrong.key')
    await writeFile(wrongKey, randomBytes(32))
    const wrong = await cli(['restore', sealedDir, '--key', wrongKey], { home: fresh!.home })
    expect(wrong.code).toBe(1)
    expect(wrong.stderr).toMatch(/wrong key/)
    // With its own key file it restores: the rows written after the moment above come in.
    const opened = await cli(['restore', sealedDir, '--key', keyFile, '--json'], { home: fresh!.home })
    expect(opened.code, opened.stderr).toBe(0)
    expect(json(opened)).toMatchObject({ records: json(sealed).records, versions: json(sealed).versions })
    expect((await freshApi.get('patient_records', 41)).row.patient_name).toBe('Patient 41')
    expect((await cli(['restore', dir, '--as-of', '2026-12-02 10:00'], { home: fresh!.home })).code).toBe(2)

    const doctor = await api.addUser('dr_backup', 'doctor')
    const denied = await cli(['backup', join(keyHome, 'denied'), '--key', keyFile], { home: source[0]!.home, token: doctor.token })
    expect(denied.code).toBe(1)
    expect(denied.stderr).toMatch(/lacks the right admin/)
    const audit = await api.audit({ user: 'admin' })
    expect(audit.entries.some(e => e.action === 'backup' && e.outcome === 'ok')).toBe(true)
    const deniedEntry = await waitForValue('the denied backup in the audit trail', async () => (await api.audit({ user: 'dr_backup' })).entries.find(e => e.action === 'admin' && e.outcome === 'denied'))
    expect(deniedEntry.status).toBe(403)
  }, 300_000)

  it('a backup interrupted by Ctrl-C removes what it wrote, the directory it made included', async () => {
    const { nodes: [node], token } = await network(1)
    const api = client(node!, token)
    const rows = Array.from({ length: 5000 }, (_, i) => JSON.stringify(e2ePatient(10_000 + i))).join('\n') + '\n'
    expect((await api.import('patient_records', rows, 'ndjson')).accepted).toBe(5000)
    const dir = join(await makeHome(), 'bk')
    const proc = track(spawn(process.execPath, [BIN, 'backup', dir, '--home', node!.home], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NTSOEKHE_TOKEN: token } }))
    let stderr = ''
    proc.stderr.setEncoding('utf8').on('data', (x: string) => { stderr += x })
    const exited = new Promise<number | null>(resolve => proc.once('exit', code => { resolve(code) }))
    // Once the backup has made its directory, the daemon is frozen: the backup cannot finish before the Ctrl-C.
    await waitFor('the backup to make its directory', () => existsSync(dir) || proc.exitCode !== null, 30_000, 2)
    node!.proc.kill('SIGSTOP')
    try {
      expect(existsSync(join(dir, 'manifest.json')), 'the backup finished before it could be interrupted').toBe(false)
      proc.kill('SIGINT')
      let timer: NodeJS.Timeout | undefined
      const code = await Promise.race([exited, new Promise<'timed out'>(resolve => { timer = setTimeout(() => { resolve('timed out') }, 30_000) })])
      clearTimeout(timer)
      expect(code, `the interrupted backup's exit: ${stderr}`).toBe(1)
    } finally {
      node!.proc.kill('SIGCONT')
    }
    expect(stderr).toMatch(/error: The backup was interrupted \(SIGINT\): what it had written in \S+ is removed/)
    expect(existsSync(dir)).toBe(false)
  }, 120_000)

  it('with N = 2 on three members, reads the ranges it does not own from their owners, each record once', async () => {
    const { nodes, token } = await network(3, ['--replicas', '2'])
    const api = client(nodes[0]!, token)
    for (let i = 1; i <= 60; i++) await api.insert('patient_records', e2ePatient(i))
    await api.update('patient_records', 7, { address: 'moved' })
    // Each node holds about two thirds of the rows: no one holds them all.
    const local = await Promise.all(nodes.map(async d => (await client(d, token).ring()).localRows.patient_records as number))
    expect(local.every(n => n < 60)).toBe(true)
    const dir = join(await makeHome(), 'bk')
    const made = await cli(['backup', dir, '--json'], { home: nodes[1]!.home, token })
    expect(made.code, made.stderr).toBe(0)
    const records = await backupRecords(dir, 'patient_records')
    expect([...records.keys()].sort((a, b) => Number(a) - Number(b))).toEqual(Array.from({ length: 60 }, (_, i) => String(i + 1)))
    expect(json(made).tables.patient_records.records).toBe(60)
    expect(records.get('7')!.versions.map(v => v.row?.address)).toEqual(['7 Main St', 'moved'])
    const { nodes: [single], token: singleToken } = await network(1)
    const restored = await cli(['restore', dir, '--json'], { home: single!.home })
    expect(restored.code, restored.stderr).toBe(0)
    await expectRestored(client(single!, singleToken), records)

    // On a terminal the backup shows a progress bar (the CLI's own code, in this process, against a member).
    let stderr = ''
    const tty = { stdout: { write: () => true }, stderr: { write: (x: string) => { stderr += x; return true }, isTTY: true }, stdin: process.stdin }
    const barred = await runBackup(client(nodes[2]!, token), join(await makeHome(), 'bk'), {}, tty)
    expect(barred.tables.patient_records?.records).toBe(60)
    expect(stderr).toMatch(/backing up \[.*\] 100% \| \d+\/\d+ records/)

    // Into the network it came from: nothing goes back, the rows changed or deleted since stay so, and again nothing changes.
    await api.update('patient_records', 7, { address: 'moved again' })
    await api.delete('patient_records', 8)
    const home = await cli(['restore', dir, '--json'], { home: nodes[0]!.home, token })
    expect(home.code, home.stderr).toBe(0)
    expect((await api.get('patient_records', 7)).row.address).toBe('moved again')
    await expect(api.get('patient_records', 8)).rejects.toThrow(/not found|deleted/i)
    expect((await api.get('patient_records', 9)).row.patient_name).toBe('Patient 9')
    const homeAgain = await cli(['restore', dir, '--json'], { home: nodes[0]!.home, token })
    expect(json(homeAgain)).toMatchObject({ records: json(made).records, changed: 0 })
  }, 180_000)
})
