/**
 * End to end: the real binary (`bin/ntsoekhe`, built `dist/`) against real
 * daemons on temp homes. One daemon serves every read-mostly case; the
 * lifecycle cases (second daemon, SIGTERM, restart, kill -9) run last, in order,
 * on the same home.
 */
import { existsSync } from 'node:fs'
import { lstat, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NtsoekheClient } from '../../src/client/index.js'
import { defaultConfig } from '../../src/daemon/config.js'
import { adminToken, cli, daemonExit, json, makeHome, startDaemon, type CliResult, type TestDaemon } from '../helpers/daemon.js'
import { waitForValue } from '../helpers/wait.js'

const EXIT = { OK: 0, REFUSED: 1, USAGE: 2, NO_DAEMON: 3 }

const SEEDED_TABLES = ['users', 'doctors_info', 'patient_records', 'medications', 'appointments', 'medical_history', 'billing_insurance', 'patient_medications', 'lab_results']

let n = 0
/** A valid patient_records row; `n` keeps e-mails apart */
function patient (overrides: Record<string, unknown> = {}): Record<string, unknown> {
  n++
  return {
    patient_name: `Thabo Mokoena ${n}`,
    date_of_birth: '1984-03-09',
    gender: 'Male',
    address: '12 Kingsway, Maseru',
    contact_number: '2622231234',
    email: `thabo${n}@example.org`,
    ...overrides
  }
}

const doctor = (overrides: Record<string, unknown> = {}): Record<string, unknown> => ({
  name: 'Dr. Lerato Nthabiseng',
  specialization: 'Cardiology',
  contact_number: '2622230000',
  email: 'lerato@example.org',
  availability: 'Mon-Fri 08:00-16:00',
  ...overrides
})

const mode = async (path: string): Promise<number> => (await stat(path)).mode & 0o777

describe('ntsoekhe CLI end to end', () => {
  let home: string
  let daemon: TestDaemon
  let peerId: string

  /** Runs a command on the shared home */
  const run = async (args: Array<string | number>, input?: string): Promise<CliResult> =>
    await cli(args.map(String), { home, ...(input === undefined ? {} : { input }) })

  /** Runs a command that must succeed with --json, and returns its parsed output (ids as numbers: pass them back as they are) */
  const ok = async <T = any>(args: Array<string | number>, input?: string): Promise<T> => {
    const r = await run([...args, '--json'], input)
    expect(r.code, `\`ntsoekhe ${args.join(' ')}\` failed:\n${r.stderr}`).toBe(EXIT.OK)
    return json<T>(r)
  }

  beforeAll(async () => {
    // init must create the home itself: give it a path that does not exist yet.
    home = join(await makeHome(), 'h')
  })

  afterAll(async () => {
    await daemon?.stop()
  })

  it('init creates the home 0700, an identity key and config.json with every default', async () => {
    const r = await cli(['init', '--json'], { home })
    expect(r.code, r.stderr).toBe(EXIT.OK)
    const info = json(r)
    expect(info).toEqual({ home, peerId: expect.stringMatching(/^12D3KooW/), created: true, adminToken: join(home, 'admin.token') })
    expect(await mode(join(home, 'admin.token'))).toBe(0o600)
    peerId = info.peerId
    expect(await mode(home)).toBe(0o700)
    expect((await stat(join(home, 'identity.key'))).isFile()).toBe(true)
    expect(await mode(join(home, 'identity.key'))).toBe(0o600)
    expect((await readFile(join(home, 'data.key'))).length).toBe(32)
    expect(await mode(join(home, 'data.key'))).toBe(0o600)
    expect(JSON.parse(await readFile(join(home, 'config.json'), 'utf8'))).toEqual(defaultConfig())

    const again = json(await cli(['init', '--json'], { home }))
    expect(again).toEqual({ home, peerId, created: false, adminToken: join(home, 'admin.token') })
  })

  describe('with a running daemon', () => {
    beforeAll(async () => {
      daemon = await startDaemon({ home })
    })

    it('serves a socket of mode 0600 in a home still 0700', async () => {
      expect((await lstat(daemon.socket)).isSocket()).toBe(true)
      expect(await mode(daemon.socket)).toBe(0o600)
      expect(await mode(home)).toBe(0o700)
    })

    it('id, status and tables answer with their --json shapes', async () => {
      const id = await ok(['id'])
      expect(Object.keys(id).sort()).toEqual(['addresses', 'peerId'])
      expect(id.peerId).toBe(peerId)
      // --listen /ip4/127.0.0.1/tcp/0 was honoured: loopback, a port of the system's choosing, never the default 4100.
      expect(id.addresses.length).toBeGreaterThan(0)
      for (const a of id.addresses) {
        expect(a).toMatch(new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+/p2p/${peerId}$`))
        expect(a).not.toMatch(/\/tcp\/4100\//)
      }

      const status = await ok(['status'])
      expect(status).toMatchObject({ peerId, home, socket: daemon.socket, version: expect.any(String) })
      expect(status.storage.rows).toBeTypeOf('object')

      const { tables } = await ok<{ tables: Array<Record<string, any>> }>(['tables'])
      expect(tables.map(t => t.name).sort()).toEqual(expect.arrayContaining([
        'appointments', 'billing_insurance', 'doctors_info', 'lab_results', 'medical_history',
        'medications', 'patient_medications', 'patient_records', 'user_roles', 'users'
      ]))
      const patients = tables.find(t => t.name === 'patient_records')
      expect(patients).toMatchObject({ primaryKey: ['patient_id'], shardKey: 'patient_id' })
      expect(patients?.columns).toContainEqual({ name: 'patient_name', type: 'VARCHAR', length: 150, notNull: true })
    })

    it('insert, get, update, history, delete: a round trip with the --json shapes', async () => {
      const ins = await ok(['insert', 'patient_records', JSON.stringify(patient({ allergies: 'Penicillin' }))])
      expect(Object.keys(ins).sort()).toEqual(['id', 'row', 'version'])
      expect(ins.id).toBeTypeOf('number')
      expect(ins.row).toMatchObject({ patient_id: ins.id, gender: 'Male', allergies: 'Penicillin' })

      const got = await ok(['get', 'patient_records', ins.id])
      expect(got).toEqual({ row: ins.row, version: ins.version, conflicts: [] })

      const upd = await ok(['update', 'patient_records', ins.id, '{"allergies":"Latex"}'])
      expect(Object.keys(upd).sort()).toEqual(['id', 'row', 'version'])
      expect(upd.id).toBe(ins.id)
      expect(upd.version).not.toBe(ins.version)
      expect(upd.row).toEqual({ ...ins.row, allergies: 'Latex' })
      expect(await ok(['get', 'patient_records', ins.id])).toEqual({ row: upd.row, version: upd.version, conflicts: [] })

      const del = await ok(['delete', 'patient_records', ins.id])
      expect(del).toMatchObject({ id: ins.id, deleted: true })

      const gone = await run(['get', 'patient_records', ins.id, '--json'])
      expect(gone.code).toBe(EXIT.REFUSED)
      expect(gone.stderr).toMatch(/not found/i)

      const { versions } = await ok(['history', 'patient_records', ins.id])
      expect(versions.map((v: any) => v.version)).toEqual([ins.version, upd.version, del.version])
      expect(versions.map((v: any) => v.deleted)).toEqual([false, false, true])
      expect(versions[1].parents).toEqual([ins.version])
      expect(versions[2].parents).toEqual([upd.version])
      expect(versions[1].row.allergies).toBe('Latex')

      // Sensitive columns are sealed on disk: neither allergy is in any file of the home; the name is.
      const files = await readdir(home, { recursive: true })
      const bytes = Buffer.concat(await Promise.all(files.map(async f => (await stat(join(home, f))).isFile() && !f.endsWith('.sock') ? await readFile(join(home, f)) : Buffer.alloc(0))))
      expect(bytes.includes(Buffer.from(String(ins.row.patient_name)))).toBe(true)
      expect(['Penicillin', 'Latex'].filter(v => bytes.includes(Buffer.from(v)))).toEqual([])

      const purged = await ok(['purge', 'patient_records', ins.id])
      expect(purged).toEqual({ table: 'patient_records', id: ins.id, purged: true, replicas: 1 })
      const after = await run(['history', 'patient_records', ins.id, '--json'])
      expect(after.code).toBe(EXIT.REFUSED)
    })

    it('--idempotency-key: the same write sent twice answers the same id and version, and writes once', async () => {
      const row = JSON.stringify(patient({ patient_name: 'Keyed Once' }))
      const first = await ok(['insert', 'patient_records', row, '--idempotency-key', 'cli-k1'])
      const again = await ok(['insert', 'patient_records', row, '--idempotency-key', 'cli-k1'])
      expect(again).toMatchObject({ id: first.id, version: first.version })
      const upd = await ok(['update', 'patient_records', first.id, '{"address":"9 Key St"}', '--idempotency-key', 'cli-k2'])
      expect(await ok(['update', 'patient_records', first.id, '{"address":"9 Key St"}', '--idempotency-key', 'cli-k2'])).toMatchObject({ version: upd.version })
      const { versions } = await ok(['history', 'patient_records', first.id])
      expect(versions.map((v: any) => v.version)).toEqual([first.version, upd.version])
      const bad = await run(['insert', 'patient_records', row, '--idempotency-key', 'not a key', '--json'])
      expect(bad.code).toBe(EXIT.REFUSED)
      expect(bad.stderr).toMatch(/Idempotency-Key/)
    })

    it('reads the row from stdin when the JSON argument is -', async () => {
      const row = patient({ patient_name: 'Palesa From Stdin' })
      const ins = await ok(['insert', 'patient_records', '-'], JSON.stringify(row))
      expect(ins.row).toMatchObject(row)
      const upd = await ok(['update', 'patient_records', ins.id, '-'], '{"address":"3 Main Rd"}')
      expect(upd.row.address).toBe('3 Main Rd')
    })

    it('query filters with --where, pages with --limit and the cursor', async () => {
      // The rows to query are made through the client: the CLI's insert is tested above.
      const client = new NtsoekheClient({ socket: daemon.socket, token: await adminToken(home) })
      const [d1, d2, p] = await Promise.all([
        client.insert('doctors_info', doctor()),
        client.insert('doctors_info', doctor({ name: 'Dr. Other' })),
        client.insert('patient_records', patient())
      ])
      const appointment = async (d: { id: string }, purpose: string): Promise<string> =>
        (await client.insert('appointments', { patient_id: Number(p.id), doctor_id: Number(d.id), appointment_date: '2025-06-01T09:00:00.000Z', purpose })).id
      const made = await Promise.all([appointment(d1, 'Check-up'), appointment(d1, 'Follow-up'), appointment(d1, 'Lab review')])
      await appointment(d2, 'Vaccination')

      const all = await ok(['query', 'appointments', '--where', `doctor_id=${String(d1.id)}`])
      expect(Object.keys(all).sort()).toEqual(['next', 'rows'])
      expect(all.rows.map((r: any) => String(r.appointment_id)).sort()).toEqual([...made].sort())
      expect(all.next).toBeNull()

      const both = await ok(['query', 'appointments', '--where', `doctor_id=${String(d1.id)}`, '--where', 'purpose=Follow-up'])
      expect(both.rows).toHaveLength(1)
      expect(both.rows[0].purpose).toBe('Follow-up')

      const seen: string[] = []
      let page = await ok(['query', 'appointments', '--where', `doctor_id=${String(d1.id)}`, '--limit', '2'])
      expect(page.rows).toHaveLength(2)
      expect(page.next).toEqual(expect.any(String))
      seen.push(...page.rows.map((r: any) => String(r.appointment_id)))
      page = await ok(['query', 'appointments', '--where', `doctor_id=${String(d1.id)}`, '--limit', '2', '--cursor', page.next])
      seen.push(...page.rows.map((r: any) => String(r.appointment_id)))
      expect(seen.sort()).toEqual([...made].sort())
    })

    it("batch: a new patient and their first visit in one all-or-nothing batch, from an argument or stdin", async () => {
      const history = { history_id: 7771, patient_id: 777, diagnosis: 'flu', treatment: 'rest', date_of_visit: '2026-12-02T08:00:00.000Z' }
      const r = await ok(['batch', JSON.stringify({ operations: [
        { op: 'insert', table: 'patient_records', row: patient({ patient_id: 777 }) },
        { op: 'insert', table: 'medical_history', row: history }
      ] })])
      expect(r.results.map((x: any) => x.id)).toEqual([777, 7771])
      expect((await ok(['get', 'medical_history', '7771'])).row.patient_id).toBe(777)

      // The array alone, on stdin; a failing operation leaves nothing of the batch.
      const bad = await run(['batch', '-'], JSON.stringify([
        { op: 'insert', table: 'patient_records', row: patient({ patient_id: 778 }) },
        { op: 'insert', table: 'medical_history', row: { ...history, history_id: 7781, patient_id: 778, date_of_visit: 'yesterday' } }
      ]))
      expect(bad.code).toBe(EXIT.REFUSED)
      expect(bad.stderr).toMatch(/operations\[1\].*date_of_visit/)
      expect((await run(['get', 'patient_records', '778'])).code).toBe(EXIT.REFUSED)
      const text = await run(['batch', '-'], JSON.stringify([{ op: 'patch', table: 'patient_records', id: 777, row: { address: '1 Batch Rd' } }]))
      expect(text.code, text.stderr).toBe(EXIT.OK)
      expect(text.stdout).toMatch(/^patient_records 777 \(version /)
      expect((await run(['batch', '{"operations": []}'])).code).toBe(EXIT.USAGE)
    })

    it('--json prints numeric ids as numbers, SQL writes too; audit entries as they are hashed', async () => {
      const made = await ok(['sql', 'INSERT INTO patient_records (patient_id, patient_name, date_of_birth, gender, address, contact_number, email) VALUES ($1, $2, $3, $4, $5, $6, $7)',
        '--param', '7001', '--param', 'Palesa', '--param', '1990-05-05', '--param', 'F', '--param', 'Maseru', '--param', '2622', '--param', 'p@example.org'])
      expect(made.columns).toEqual(['id', 'version'])
      expect(made.rows[0][0]).toBe(7001)
      expect((await ok(['sql', 'UPDATE patient_records SET address = $1 WHERE patient_id = $2', '--param', 'Teyateyaneng', '--param', '7001'])).rows[0][0]).toBe(7001)
      // A SELECT's values are the columns' own: text stays text.
      expect((await ok(['sql', 'SELECT contact_number AS id, patient_name AS version FROM patient_records WHERE patient_id = 7001'])).rows).toEqual([['2622', 'Palesa']])
      const { entries } = await waitForValue('the SQL insert of patient 7001 in the audit trail', async () => {
        const r = await ok(['audit', '--patient', '7001'])
        return r.entries.some((e: any) => e.action === 'insert') ? r : undefined
      }, 10_000)
      // An entry is printed as its hash covers it (patient_id is text there), so the hash can be recomputed from the output.
      const { createHash } = await import('node:crypto')
      for (const e of entries) {
        expect(e.patient_id).toBe('7001')
        const fields = [e.node, e.seq, e.prev, e.time, e.user, e.role, e.action, e.table, e.key, e.columns, e.outcome, e.status, e.reason, e.break_glass, e.patient_id]
        expect(createHash('sha256').update(JSON.stringify(fields)).digest('hex')).toBe(e.hash)
      }
    })

    it('TIMESTAMP values are stored in UTC; a lookup of the same moment finds them; a time without a zone is refused', async () => {
      const visit = { history_id: 7790, patient_id: 777, diagnosis: 'flu', treatment: 'rest', date_of_visit: '2026-12-02T10:00:00+02:00' }
      const ins = await ok(['insert', 'medical_history', JSON.stringify(visit)])
      expect(ins.row.date_of_visit).toBe('2026-12-02T08:00:00.000Z')
      const found = await ok(['query', 'medical_history', '--where', 'date_of_visit=2026-12-02T08:00:00Z', '--where', 'patient_id=777'])
      expect(found.rows.map((r: any) => r.history_id)).toContain(7790)
      for (const bare of ['2026-12-02 10:00', '2026-12-02T10:00']) {
        const r = await run(['insert', 'medical_history', JSON.stringify({ ...visit, history_id: 7791, date_of_visit: bare })])
        expect(r.code).toBe(EXIT.REFUSED)
        expect(r.stderr).toMatch(/no time zone/)
        expect(r.stderr).toContain('2026-12-02T10:00:00+02:00')
        expect(r.stderr.match(/date_of_visit/g)).toHaveLength(1)
      }
    })

    it('exits 2 on usage errors, before asking the daemon', async () => {
      const cases: Array<[string[], RegExp]> = [
        [['frobnicate'], /unknown command/],
        [['query', 'patient_records', '--limit', 'abc'], /positive integer/],
        [['query', 'patient_records', '--limit', '0'], /positive integer/],
        [['query', 'patient_records', '--where', 'no-equals-sign'], /col=value/],
        [['insert', 'patient_records', '{"patient_name": '], /JSON/],
        [['insert', 'patient_records', '-'], /JSON/],
        [['get', 'patient_records'], /missing required argument/],
        [['import', 'patient_records', join(home, 'no-such-file.ndjson')], /cannot read/],
        [['import', 'patient_records', home], /cannot read .*: it is a directory/],
        [['insert', 'patient_records', '[1]'], /the row must be a JSON object/],
        [['update', 'patient_records', '1', 'null'], /the row must be a JSON object/],
        [['backup', home], /is not empty/],
        [['query', 'patient_records', '--limit', '5000'], /--limit takes 1 to 1000/],
        [['query', 'patient_records', '--consistency', 'most'], /one, quorum, all/],
        [['daemon', '--log-level', 'bogus'], /--log-level.*bogus/],
        [['daemon', '--listen', 'not-an-address'], /--listen takes a multiaddr/],
        [['daemon', '--listen', '/ip4/127.0.0.1'], /--listen takes a TCP multiaddr/],
        [['daemon', '--replicas', '1', '--write-quorum', '2'], /quorums cannot exceed replicas/],
        [['daemon', '--join', 'not-an-invite'], /--join: Not an invite/],
        [['daemon', '--security-off'], /accepted together with --test/],
        [['user', 'add', 'sipho', '--role', 'bogus'], /Allowed choices are admin, doctor, nurse, billing, auditor/],
        [['audit', '--since', '2026-12-01T10:00'], /--since: "2026-12-01T10:00" has no time zone/],
        [['audit', '--since', 'yesterday'], /--since takes a date/],
        [['audit', '--patient', 'abc'], /--patient takes a patient id/]
      ]
      const results = await Promise.all(cases.map(async ([args]) => await run(args)))
      results.forEach((r, i) => {
        const [args, message] = cases[i] as [string[], RegExp]
        expect(r.code, `ntsoekhe ${args.join(' ')}: ${r.stderr}`).toBe(EXIT.USAGE)
        expect(r.stderr).toMatch(message)
        expect(r.stderr.trimEnd().split('\n'), `one line: ${r.stderr}`).toHaveLength(1)
        expect(r.stdout).toBe('')
      })
      // A table that does not exist is the caller's naming mistake too, though only the daemon knows its tables.
      const unknownTable = await run(['query', 'no_such_table'])
      expect(unknownTable.code).toBe(EXIT.USAGE)
      expect(unknownTable.stderr.trimEnd().split('\n')).toHaveLength(1)
      expect(unknownTable.stderr).toMatch(/no_such_table/)
      // So is a flag value only the daemon can judge: a column a --where or --order-by names, a value it cannot hold, a cursor.
      const badValues: Array<[string[], RegExp]> = [
        [['query', 'patient_records', '--where', 'no_such_column=1'], /Unknown column no_such_column/],
        [['query', 'patient_records', '--order-by', 'no_such_column:desc'], /Unknown column no_such_column/],
        [['query', 'patient_records', '--where', 'patient_id=abc'], /patient_id: expected an integer/],
        [['query', 'medical_history', '--where', 'date_of_visit>=2026-12-02T10:00'], /no time zone/],
        [['query', 'patient_records', '--cursor', 'garbage'], /Invalid cursor/]
      ]
      for (const [args, message] of badValues) {
        const r = await run(args)
        expect(r.code, `ntsoekhe ${args.join(' ')}: ${r.stderr}`).toBe(EXIT.USAGE)
        expect(r.stderr).toMatch(message)
        expect(r.stderr.trimEnd().split('\n'), `one line: ${r.stderr}`).toHaveLength(1)
      }
      // A command of commands called without one says so in one line (--help prints the usage).
      for (const args of [[], ['user']]) {
        const r = await cli(args)
        expect(r.code, `ntsoekhe ${args.join(' ')}: ${r.stderr}`).toBe(EXIT.USAGE)
        expect(r.stderr).toMatch(/needs a command/)
        expect(r.stderr.trimEnd().split('\n'), `one line: ${r.stderr}`).toHaveLength(1)
      }
      expect((await cli(['--help'])).stdout).toMatch(/^Usage: ntsoekhe/)
    })

    it('output cut short by its reader (`| head`) ends the command quietly, without a stack trace', async () => {
      const r = await cli(['tables'], { home, closeStdout: true })
      expect(r.code, r.stderr).toBe(EXIT.OK)
      expect(r.stderr).toBe('')
    })

    it('exits 1 with the message on stderr when the daemon refuses', async () => {
      const tooLong = await run(['insert', 'patient_records', JSON.stringify(patient({ gender: 'x'.repeat(11) })), '--json'])
      expect(tooLong.code).toBe(EXIT.REFUSED)
      expect(tooLong.stderr).toMatch(/gender/)
      expect(tooLong.stderr).toMatch(/VARCHAR\(10\)/)
      expect(tooLong.stderr.match(/gender/g), 'the column is named once').toHaveLength(1)
      expect(tooLong.stdout).toBe('')

      const missingRef = await run(['insert', 'appointments', JSON.stringify({ patient_id: 999, doctor_id: 998, appointment_date: '2025-06-01T09:00:00.000Z', purpose: 'x' })])
      expect(missingRef.code).toBe(EXIT.REFUSED)
      expect(missingRef.stderr).toMatch(/patient_id 999/)
      expect(missingRef.stderr).toMatch(/no such patient_records/)

      const missingColumn = await run(['insert', 'patient_records', '{"patient_name":"Only a name"}'])
      expect(missingColumn.code).toBe(EXIT.REFUSED)
      expect(missingColumn.stderr).toMatch(/date_of_birth|gender|address|contact_number|email/)

      const removeUnknown = await run(['remove', '12D3KooWnosuchpeerxyz'])
      expect(removeUnknown.code).toBe(EXIT.REFUSED)
      expect(removeUnknown.stderr).toMatch(/No member 12D3KooWnosuchpeerxyz/)
      const removeSelf = await run(['remove', peerId])
      expect(removeSelf.code).toBe(EXIT.REFUSED)
      expect(removeSelf.stderr).toMatch(/cannot remove itself/)
      // A leave the daemon refuses (nobody to hand off to) never says it is handing off.
      const leave = await run(['leave'])
      expect(leave.code).toBe(EXIT.REFUSED)
      expect(leave.stderr).toMatch(/No other member is up/)
      expect(leave.stderr).not.toMatch(/handing off/)
      // A unique prefix of a member's id names it (here, this node itself).
      const byPrefix = await run(['remove', peerId.slice(0, 14)])
      expect(byPrefix.code).toBe(EXIT.REFUSED)
      expect(byPrefix.stderr).toMatch(/cannot remove itself/)
    })

    it('human output prints peer ids whole and addresses one a line', async () => {
      const peers = await run(['peers'])
      expect(peers.code, peers.stderr).toBe(EXIT.OK)
      expect(peers.stdout).toContain(peerId)
      expect(peers.stdout).not.toContain('…')
      const status = await run(['status'])
      expect(status.code, status.stderr).toBe(EXIT.OK)
      const { addresses } = await ok(['id'])
      expect(status.stdout).toContain(`addresses:\n${(addresses as string[]).map(a => `  ${a}\n`).join('')}`)
      expect(status.stdout).not.toMatch(/addresses: \[/)
      expect(status.stdout).toContain(peerId)
    })

    it('imports NDJSON and CSV, reporting accepted rows and rejected lines', async () => {
      const good = [patient(), patient(), patient()]
      const ndjson = join(home, 'patients.ndjson')
      await writeFile(ndjson, [
        JSON.stringify(good[0]),
        '{"patient_name": broken',
        JSON.stringify(good[1]),
        '',
        JSON.stringify(patient({ contact_number: '12345678901' })),
        JSON.stringify(good[2])
      ].join('\n') + '\n')
      // Rejected lines make the run fail (exit 1) after the good ones are in, listed in line order.
      const ndRun = await run(['import', 'patient_records', ndjson, '--json'])
      expect(ndRun.code, ndRun.stderr).toBe(EXIT.REFUSED)
      expect(ndRun.stderr).toMatch(/2 lines of .* rejected \(first: line 2: .*\); 3 imported/)
      const nd = json(ndRun)
      expect(nd.accepted).toBe(3)
      expect(nd.rejected.map((r: any) => r.line)).toEqual([2, 5])
      expect(nd.rejected[1].error).toMatchObject({ column: 'contact_number' })
      expect(nd.rejectedNotShown).toBe(0)
      for (const row of good) {
        const found = await ok(['query', 'patient_records', '--where', `email=${String(row.email)}`])
        expect(found.rows).toHaveLength(1)
      }

      const cols = ['patient_name', 'date_of_birth', 'gender', 'address', 'contact_number', 'email']
      const line = (row: Record<string, unknown>): string => cols.map(c => `"${String(row[c]).replaceAll('"', '""')}"`).join(',')
      const csv = join(home, 'patients.csv')
      await writeFile(csv, [cols.join(','), line(patient()), line(patient({ gender: 'Not-a-short-value' })), line(patient())].join('\n') + '\n')
      const cRun = await run(['import', 'patient_records', csv, '--json'])
      expect(cRun.code).toBe(EXIT.REFUSED)
      const c = json(cRun)
      expect(c).toMatchObject({ accepted: 2, rejectedNotShown: 0 })
      expect(c.rejected).toHaveLength(1)
      expect(c.rejected[0]).toMatchObject({ line: 3, error: { column: 'gender' } })

      // The same file again: its lines are answered as before (accepted), and no row is written twice.
      const before = (await ok(['query', 'patient_records', '--limit', '1000'])).rows.length
      const text = await run(['import', 'patient_records', csv])
      expect(text.code).toBe(EXIT.REFUSED)
      expect(text.stdout).toMatch(/imported 2 rows into patient_records; rejected 1/)
      expect(text.stdout).toMatch(/line 3: .*gender/)
      expect((await ok(['query', 'patient_records', '--limit', '1000'])).rows.length).toBe(before)
    })

    it('import <table> - reads stdin; a clean run exits 0; importing it twice writes its rows once', async () => {
      const rows = [patient({ patient_name: 'Stdin One' }), patient({ patient_name: 'Stdin Two' })]
      const body = rows.map(r => JSON.stringify(r)).join('\n') + '\n'
      const count = async (): Promise<number> => (await ok(['query', 'patient_records', '--where', `email=${String(rows[0]?.email)}`])).rows.length
      for (let round = 1; round <= 2; round++) {
        const r = await ok(['import', 'patient_records', '-'], body)
        expect(r, `round ${round}`).toMatchObject({ accepted: 2, rejected: [], rejectedNotShown: 0 })
        expect(await count()).toBe(1)
      }
      const csv = await run(['import', 'patient_records', '-', '--format', 'csv'], 'patient_name,date_of_birth,gender,address,contact_number,email\nCsv Stdin,1990-01-01,Female,1 Road,2622231234,csv.stdin@example.org\n')
      expect(csv.code, csv.stderr).toBe(EXIT.OK)
      expect(csv.stdout).toMatch(/imported 1 rows/)
    })

    it('a CSV line with the wrong number of fields is rejected alone; no other line is lost', async () => {
      const csv = join(home, 'ragged.csv')
      await writeFile(csv, [
        'patient_name,date_of_birth,gender,address,contact_number,email',
        'Before,1990-01-01,Female,1 Road,2622231234,before@example.org',
        'Ragged,1990-01-01,Male',
        'After,1990-01-01,Female,1 Road,2622231234,after@example.org'
      ].join('\n') + '\n')
      const ragged = await run(['import', 'patient_records', csv, '--json'])
      expect(ragged.code).toBe(EXIT.REFUSED)
      const r = json(ragged)
      expect(r.accepted).toBe(2)
      expect(r.rejected.map((x: any) => x.line)).toEqual([3])
      for (const email of ['before@example.org', 'after@example.org']) {
        expect((await ok(['query', 'patient_records', '--where', `email=${email}`])).rows, email).toHaveLength(1)
      }
    })

    it('seed --scale 1 loads 20 rows per table; query --limit 5 shows five', async () => {
      const before = (await ok(['status'])).storage.rows as Record<string, number>
      const seeded = await run(['seed', '--scale', '1', '--json'])
      expect(seeded.code, seeded.stderr).toBe(EXIT.OK)
      const counts = json(seeded)
      for (const t of SEEDED_TABLES) expect(counts[t], t).toBe(20)
      // The roles were made with the network: seed says it reuses them, and makes none.
      expect(seeded.stderr).toMatch(/roles \(user_roles: admin, doctor, nurse, billing, auditor\) are there already/)
      expect(counts.user_roles).toBeUndefined()

      const after = (await ok(['status'])).storage.rows as Record<string, number>
      for (const t of SEEDED_TABLES) expect((after[t] ?? 0) - (before[t] ?? 0), t).toBe(20)
      expect(after.user_roles).toBe(5) // the roles the network was created with: seed reuses them

      const page = await ok(['query', 'patient_records', '--limit', '5'])
      expect(page.rows).toHaveLength(5)
      expect(page.next).toEqual(expect.any(String))

      const doctors = await ok(['query', 'doctors_info', '--limit', '1000'])
      expect(doctors.rows.length).toBe(after.doctors_info)
      const pairs = await ok(['query', 'patient_medications', '--limit', '1000'])
      const keys = pairs.rows.map((r: any) => `${String(r.patient_id)}:${String(r.medication_id)}`)
      expect(new Set(keys).size).toBe(keys.length)

      // head: the first five rows of every table, by primary key, each the five smallest keys of the whole table.
      const { tables } = await ok<{ tables: Array<{ table: string, primaryKey: string[], rows: any[], total: number }> }>(['head'])
      const { tables: schema } = await ok<{ tables: Array<{ name: string }> }>(['tables'])
      expect(tables.map(t => t.table)).toEqual(schema.map(t => t.name))
      for (const t of tables) {
        expect(t.rows, t.table).toHaveLength(5)
        const all = (await ok(['query', t.table, '--limit', '1000'])).rows as any[]
        expect(t.total, t.table).toBe(all.length)
        const byKey = (r: any): number[] => t.primaryKey.map(k => Number(r[k]))
        const sorted = all.map(byKey).sort((a, b) => (a[0] as number) - (b[0] as number) || ((a[1] ?? 0) - (b[1] ?? 0)))
        expect(t.rows.map(byKey), t.table).toEqual(sorted.slice(0, 5))
      }
      const two = await ok(['head', '--limit', '2'])
      expect(two.tables.every((t: any) => t.rows.length === 2)).toBe(true)
      const text = await run(['head'])
      expect(text.code, text.stderr).toBe(EXIT.OK)
      expect(text.stdout).toMatch(/^users \(5 of \d+ rows, by user_id\)$/m)
      expect(text.stdout).not.toMatch(/token_hash/)
      expect((await run(['head', '--limit', '5000'])).code).toBe(EXIT.USAGE)
    })

    it('user add prints a token once; roles, break-glass, --token and $NTSOEKHE_TOKEN; 401 and 403 exit 1', async () => {
      const made = await ok(['user', 'add', 'nthabi', '--role', 'billing'])
      expect(made).toEqual({ user: 'nthabi', role: 'billing', token: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/) })
      const nurse = await ok(['user', 'add', 'palesa', '--role', 'nurse'])
      const list = await ok(['user', 'list'])
      expect(list.users).toContainEqual({ user: 'nthabi', role: 'billing', revoked: false, revokedAt: null })
      expect(JSON.stringify(list)).not.toContain(made.token)

      const p = await ok(['insert', 'patient_records', JSON.stringify(patient({ allergies: 'Latex' }))])
      // --token wins over the home's admin.token: billing sees name and contact only.
      const asBilling = await cli(['get', 'patient_records', String(p.id), '--json', '--token', made.token], { home })
      expect(asBilling.code, asBilling.stderr).toBe(EXIT.OK)
      expect(Object.keys(json(asBilling).row).sort()).toEqual(['address', 'contact_number', 'email', 'patient_id', 'patient_name'])
      const viaEnv = await cli(['get', 'patient_records', String(p.id), '--json'], { home, token: made.token })
      expect(json(viaEnv).row.allergies).toBeUndefined()

      const denied = await cli(['query', 'patient_records', '--where', 'allergies=Latex', '--token', made.token], { home })
      expect(denied.code).toBe(EXIT.REFUSED)
      expect(denied.stderr).toMatch(/allergies/)
      expect(denied.stderr).toMatch(/FORBIDDEN/)
      const bill = await ok(['insert', 'billing_insurance', JSON.stringify({ patient_id: Number(p.id), amount: '5.00', date: '2025-01-01', insurance_provider: 'A', insurance_policy_number: 'B' })])
      expect((await cli(['get', 'billing_insurance', String(bill.id), '--token', nurse.token], { home })).code).toBe(EXIT.REFUSED)
      const glass = await cli(['get', 'billing_insurance', String(bill.id), '--json', '--token', nurse.token, '--break-glass', 'patient collapsed at the desk'], { home })
      expect(glass.code, glass.stderr).toBe(EXIT.OK)
      expect(json(glass).row.insurance_policy_number).toBe('B')

      // head as billing: its own table whole, five columns of patient_records, every other table named as not shown.
      const headed = await cli(['head', '--json', '--token', made.token], { home })
      expect(headed.code, headed.stderr).toBe(EXIT.OK)
      const byTable: Record<string, any> = Object.fromEntries(json<{ tables: Array<{ table: string, rows: any[], error?: { code: string } }> }>(headed).tables.map(t => [t.table, t]))
      expect(Object.keys(byTable.patient_records.rows[0]).sort()).toEqual(['address', 'contact_number', 'email', 'patient_id', 'patient_name'])
      expect(byTable.billing_insurance.rows.length).toBeGreaterThan(0)
      expect(byTable.billing_insurance.error).toBeUndefined()
      for (const t of ['users', 'user_roles', 'medical_history']) expect(byTable[t].error?.code, t).toBe('FORBIDDEN')
      const headText = await cli(['head', '--token', made.token], { home })
      expect(headText.stdout).toMatch(/^users: not shown \(/m)

      const roles = await ok(['roles'])
      expect(roles.roles.map((r: any) => r.role)).toEqual(['admin', 'doctor', 'nurse', 'billing', 'auditor'])
      expect((await run(['roles'])).stdout).toMatch(/billing/)

      expect((await cli(['user', 'revoke', 'nthabi'], { home })).code).toBe(EXIT.OK)
      const revoked = await cli(['status', '--token', made.token], { home })
      expect(revoked.code).toBe(EXIT.REFUSED)
      expect(revoked.stderr).toMatch(/UNAUTHORIZED/)
      expect((await cli(['status', '--token', 'not-a-token'], { home })).code).toBe(EXIT.REFUSED)
    })
  })

  it('daemon --json announces its start as one JSON line on stdout; every log line names its component once', async () => {
    const other = await startDaemon({ args: ['--json', '--log-level', 'info'] })
    try {
      const ready = await waitForValue('the daemon\'s JSON ready line on stdout', async () =>
        other.stdout().split('\n').filter(l => l.startsWith('{"ready"')).map(l => JSON.parse(l) as Record<string, any>)[0], 10_000)
      expect(ready).toMatchObject({ ready: true, peerId: expect.stringMatching(/^12D3KooW/), socket: other.socket, home: other.home, version: expect.any(String) })
      expect(ready.addresses).toEqual(expect.arrayContaining([expect.stringMatching(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\//)]))
      expect(other.stderr()).not.toMatch(/ntsoekhe daemon ready/)
      const logs = other.stdout().split('\n').filter(l => l.startsWith('{"level"'))
      expect(logs.length).toBeGreaterThan(0)
      for (const line of logs) expect(line.match(/"component"/g), line).toHaveLength(1)
    } finally {
      await other.stop()
    }
  })

  it('a port already in use: one line naming the port and what changes it, no stack trace', async () => {
    const holder = createServer()
    await new Promise<void>(resolve => holder.listen(0, '127.0.0.1', resolve))
    const port = (holder.address() as AddressInfo).port
    try {
      const home = await makeHome()
      const r = await daemonExit(home, { args: ['--listen', `/ip4/127.0.0.1/tcp/${port}`] })
      expect(r.code).toBe(EXIT.REFUSED)
      expect(r.stderr).toContain(`port ${port} is already in use`)
      expect(r.stderr).toMatch(/--listen .*network\.listen/)
      expect(r.stderr).not.toMatch(/^\s+at /m)
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1)
    } finally {
      await new Promise(resolve => holder.close(resolve))
    }
  })

  describe('lifecycle', () => {
    it('a second daemon on the same home exits non-zero with a clear message; the first keeps serving', async () => {
      const second = await daemonExit(home)
      expect(second.code).not.toBe(0)
      expect(second.code).not.toBeNull()
      expect(second.stderr).toMatch(/another ntsoekhe daemon is running/)

      expect((await lstat(daemon.socket)).isSocket()).toBe(true)
      const status = await ok(['status'])
      expect(status.peerId).toBe(peerId)
    })

    it('SIGTERM closes the store and removes the socket; then the CLI exits 3 and says how to start one', async () => {
      const { id } = await ok(['insert', 'patient_records', JSON.stringify(patient({ patient_name: 'Survives Restart' }))])
      const exit = await daemon.stop('SIGTERM')
      expect(exit).toEqual({ code: 0, signal: null })
      expect(existsSync(daemon.socket)).toBe(false)

      const none = await run(['status'])
      expect(none.code).toBe(EXIT.NO_DAEMON)
      expect(none.stderr).toMatch(/ntsoekhe daemon/)

      const nowhere = join(await makeHome(), 'never-created')
      const r = await cli(['get', 'patient_records', '1'], { home: nowhere })
      expect(r.code).toBe(EXIT.NO_DAEMON)
      expect(r.stderr).toContain(`ntsoekhe daemon --home ${nowhere}`)
      expect(existsSync(nowhere)).toBe(false)

      daemon = await startDaemon({ home })
      expect((await ok(['get', 'patient_records', id])).row.patient_name).toBe('Survives Restart')
      expect(await mode(daemon.socket)).toBe(0o600)
    })

    it('every write acknowledged before a kill -9 is readable after restart; the stale socket is removed', async () => {
      const client = new NtsoekheClient({ socket: daemon.socket, timeout: 10_000, token: await adminToken(home) })
      const TOTAL = 300
      const KILL_AFTER = 100
      const CONCURRENCY = 32
      const acked: string[] = []
      let failed = 0
      let killed: Promise<unknown> | undefined
      let next = 0
      const worker = async (): Promise<void> => {
        while (next < TOTAL) {
          next++
          try {
            const r = await client.insert('patient_records', patient({ patient_name: 'Crash Test' }))
            acked.push(r.id)
            if (acked.length === KILL_AFTER) killed = daemon.kill9()
          } catch {
            failed++
          }
        }
      }
      await Promise.all(Array.from({ length: CONCURRENCY }, worker))
      expect(await killed).toEqual({ code: null, signal: 'SIGKILL' })
      expect(acked.length).toBeGreaterThanOrEqual(KILL_AFTER)
      expect(failed, 'the kill should land mid-stream').toBeGreaterThan(0)

      // The crash left its socket behind; nobody answers on it.
      expect((await lstat(daemon.socket)).isSocket()).toBe(true)
      expect((await run(['status'])).code).toBe(EXIT.NO_DAEMON)

      daemon = await startDaemon({ home })
      expect((await lstat(daemon.socket)).isSocket()).toBe(true)
      const reader = new NtsoekheClient({ socket: daemon.socket, timeout: 10_000, token: await adminToken(home) })
      const missing: string[] = []
      for (let i = 0; i < acked.length; i += CONCURRENCY) {
        await Promise.all(acked.slice(i, i + CONCURRENCY).map(async id => {
          try {
            const r = await reader.get('patient_records', id)
            if (r.row.patient_name !== 'Crash Test') missing.push(id)
          } catch {
            missing.push(id)
          }
        }))
      }
      expect(missing, `acknowledged but lost after kill -9 (${missing.length} of ${acked.length})`).toEqual([])
    })
  })
})
