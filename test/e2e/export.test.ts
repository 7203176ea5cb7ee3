/**
 * End to end: `ntsoekhe export` through the real binary (built `dist/`)
 * against a real daemon on a temp home.
 */
import { readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NtsoekheClient } from '../../src/client/index.js'
import { TABLES } from '../../src/schema/index.js'
import { adminToken, cli, json, makeHome, startDaemon, type CliResult, type TestDaemon } from '../helpers/daemon.js'

const EXIT = { OK: 0, REFUSED: 1, USAGE: 2, NO_DAEMON: 3 }

const PATIENTS = [1971, 1982, 1993].map((year, i) => ({
  patient_name: `Mpho Letsie ${i}`,
  date_of_birth: `${year}-0${i + 1}-1${i}`,
  gender: i % 2 === 0 ? 'Female' : 'Male',
  address: `${i + 7} Moshoeshoe Road, Maseru`,
  contact_number: `26658000${i}${i}`,
  email: `mpho.letsie${i}@example.org`
}))
const POLICY = 'POL-ZX-4471'

interface Line { table: string, row: Record<string, any> }

/** Every line of an NDJSON output, checked to be one `{table, row}` object */
function lines (text: string): Line[] {
  expect(text === '' || text.endsWith('\n')).toBe(true)
  return text.split('\n').filter(l => l !== '').map(l => {
    const parsed = JSON.parse(l) as Line
    expect(Object.keys(parsed)).toEqual(['table', 'row'])
    return parsed
  })
}

describe('ntsoekhe export end to end', () => {
  let home: string
  let daemon: TestDaemon
  let api: NtsoekheClient
  /** patient_records id by birth year */
  const ids = new Map<string, string>()
  const run = async (args: string[], token?: string): Promise<CliResult> => await cli(args, { home, ...(token === undefined ? {} : { token }) })

  beforeAll(async () => {
    home = await makeHome()
    daemon = await startDaemon({ home })
    api = new NtsoekheClient({ socket: daemon.socket, token: await adminToken(home) })
    for (const p of PATIENTS) ids.set(p.date_of_birth.slice(0, 4), (await api.insert('patient_records', p)).id)
    const first = ids.get('1971') as string
    const second = ids.get('1982') as string
    await api.insert('medical_history', { patient_id: Number(first), diagnosis: 'Type 2 diabetes', treatment: 'Metformin', date_of_visit: '2025-03-01T08:00:00.000Z' })
    await api.insert('medical_history', { patient_id: Number(first), diagnosis: 'Hypertension', treatment: 'Amlodipine', date_of_visit: '2025-04-01T08:00:00.000Z' })
    await api.insert('medical_history', { patient_id: Number(second), diagnosis: 'Asthma', treatment: 'Salbutamol', date_of_visit: '2025-05-01T08:00:00.000Z' })
    await api.insert('billing_insurance', { patient_id: Number(first), amount: '99.00', date: '2025-03-01', insurance_provider: 'Metropolitan', insurance_policy_number: POLICY })
  })

  afterAll(async () => {
    api?.close()
    await daemon?.stop()
  })

  it('export --out writes every row of every table to a new 0600 file, and only a summary on stderr', async () => {
    const out = join(home, 'all.ndjson')
    const r = await run(['export', '--out', out])
    expect(r.code, r.stderr).toBe(EXIT.OK)
    expect(r.stdout).toBe('')
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect((await stat(out)).mode & 0o777).toBe(0o600)
    const got = lines(await readFile(out, 'utf8'))
    for (const t of TABLES) {
      // A query answers in primary-key order; an export streams each table in the store's order: compared by key.
      const byKey = (rows: Array<Record<string, unknown>>): Array<Record<string, unknown>> => [...rows].sort((a, b) => keyOf(t.primaryKey, a) < keyOf(t.primaryKey, b) ? -1 : 1)
      const stored = (await api.query(t.name, {}, { limit: 1000 })).rows
      const exported = got.filter(l => l.table === t.name).map(l => l.row)
      expect(byKey(exported), t.name).toEqual(byKey(stored))
    }
    expect(got.filter(l => l.table === 'patient_records').map(l => l.row.patient_name).sort()).toEqual(PATIENTS.map(p => p.patient_name))
    expect(got.filter(l => l.table === 'medical_history')).toHaveLength(3)
    expect(JSON.stringify(got)).not.toContain('token_hash')
  })

  it('never writes over an existing file (exit 2, the file untouched)', async () => {
    const out = join(home, 'taken.ndjson')
    await writeFile(out, 'keep me\n')
    const r = await run(['export', '--out', out])
    expect(r.code).toBe(EXIT.USAGE)
    expect(r.stderr).toContain('exists')
    expect(await readFile(out, 'utf8')).toBe('keep me\n')
  })

  it('export --anonymize --table patient_records --table medical_history: no names or contacts, history joins patients by pseudonym, stdout only NDJSON', async () => {
    const r = await run(['export', '--anonymize', '--table', 'patient_records', '--table', 'medical_history'])
    expect(r.code, r.stderr).toBe(EXIT.OK)
    const got = lines(r.stdout)
    expect(new Set(got.map(l => l.table))).toEqual(new Set(['patient_records', 'medical_history']))
    for (const p of PATIENTS) {
      for (const v of [p.patient_name, p.email, p.contact_number, p.address, p.date_of_birth]) expect(r.stdout).not.toContain(v)
    }
    for (const id of ids.values()) expect(r.stdout).not.toMatch(new RegExp(`"patient_id":${id}[,}]`))
    const patients = got.filter(l => l.table === 'patient_records').map(l => l.row)
    expect(patients).toHaveLength(3)
    for (const p of patients) expect(Object.keys(p).sort()).toEqual(['allergies', 'date_of_birth', 'gender', 'patient_id'])
    const pseudonymOf = new Map(patients.map(p => [p.date_of_birth as string, p.patient_id as string]))
    expect([...pseudonymOf.keys()].sort()).toEqual(['1971', '1982', '1993'])
    const history = got.filter(l => l.table === 'medical_history').map(l => l.row)
    expect(history.filter(h => h.patient_id === pseudonymOf.get('1971')).map(h => h.diagnosis).sort()).toEqual(['Hypertension', 'Type 2 diabetes'])
    expect(history.filter(h => h.patient_id === pseudonymOf.get('1982')).map(h => h.diagnosis)).toEqual(['Asthma'])
    expect(r.stderr).not.toContain('{')

    const again = lines((await run(['export', '--anonymize', '--table', 'patient_records'])).stdout)
    expect(again.find(l => l.row.date_of_birth === '1971')?.row.patient_id).not.toBe(pseudonymOf.get('1971'))
  })

  it('a nurse: a plain export is refused naming the right, an anonymized one leaves out billing', async () => {
    const made = await run(['user', 'add', 'nurse.palesa', '--role', 'nurse', '--json'])
    expect(made.code, made.stderr).toBe(EXIT.OK)
    const token = json<{ token: string }>(made).token
    const plain = await run(['export'], token)
    expect(plain.code).toBe(EXIT.REFUSED)
    expect(plain.stderr).toContain('right export')
    expect(plain.stdout).toBe('')
    const billing = await run(['export', '--anonymize', '--table', 'billing_insurance'], token)
    expect(billing.code).toBe(EXIT.REFUSED)
    const anon = await run(['export', '--anonymize'], token)
    expect(anon.code, anon.stderr).toBe(EXIT.OK)
    const got = lines(anon.stdout)
    expect(got.some(l => l.table === 'billing_insurance' || l.table === 'users')).toBe(false)
    expect(anon.stdout).not.toContain(POLICY)
    expect(got.filter(l => l.table === 'medical_history')).toHaveLength(3)
  })

  it('exit codes: unknown table 2 (a usage error, issue 12), bad flag 2, no daemon 3', async () => {
    const unknown = await run(['export', '--table', 'nope'])
    expect(unknown.code).toBe(EXIT.USAGE)
    expect(unknown.stderr).toContain('UNKNOWN_TABLE')
    expect((await run(['export', '--tables', 'patient_records'])).code).toBe(EXIT.USAGE)
    expect((await run(['export', '--table'])).code).toBe(EXIT.USAGE)
    const none = await cli(['export'], { home: await makeHome() })
    expect(none.code).toBe(EXIT.NO_DAEMON)
  })
})

/** A row's key as one sortable string (numbers padded, so they sort as numbers) */
function keyOf (columns: readonly string[], row: Record<string, unknown>): string {
  return columns.map(c => String(row[c]).padStart(20, '0')).join(':')
}
