import { randomBytes } from 'node:crypto'
import { readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { tokenOf } from '../../src/cluster/token.js'
import { sensitiveColumns, TABLES, type Row } from '../../src/schema/index.js'
import { DATA_KEY_FILE, loadOrCreateDataKey } from '../../src/security/data-key.js'
import { Store, winner, type VersionEntry } from '../../src/storage/store.js'
import { HybridClock } from '../../src/storage/version.js'
import { allBytes, unique } from '../helpers/files.js'
import { openLocalNode, patientRow, tempDir, type TempDir } from '../helpers/temp.js'

let dir: TempDir

beforeEach(async () => { dir = await tempDir('ntk-crypt-') })
afterEach(async () => { await dir.remove() })


/** The values of `values` found in `bytes` */
function found (bytes: Buffer, values: string[]): string[] {
  return values.filter(v => bytes.includes(Buffer.from(v, 'utf8')))
}


async function failure (p: Promise<unknown>): Promise<{ code?: string, name?: string, message: string }> {
  const err = await p.then(() => undefined, (e: unknown) => e)
  if (err === undefined) throw new Error('expected the call to fail, but it succeeded')
  return err as { code?: string, name?: string, message: string }
}

describe('encryption at rest: the schema', () => {
  it('marks the sensitive columns of the issue, and only VARCHARs', () => {
    const marked = TABLES.flatMap(t => sensitiveColumns(t.name).map(c => `${t.name}.${c}`)).sort()
    expect(marked).toEqual([
      'billing_insurance.insurance_policy_number',
      'doctors_info.contact_number', 'doctors_info.email',
      'lab_results.test_result',
      'medical_history.diagnosis', 'medical_history.treatment',
      'patient_records.address', 'patient_records.allergies', 'patient_records.contact_number', 'patient_records.email'
    ])
    expect(sensitiveColumns('_locator')).toEqual([])
  })
})

describe('encryption at rest: a node\'s home', () => {
  it('holds no sensitive value in any file (rows, history, hints), and reads every one back', async () => {
    const node = await openLocalNode(dir.path)
    // One distinctive value per sensitive column, first and second versions, and controls in plain columns.
    const v = (tag: string): string => unique(tag)
    const secret = {
      address: v('addr'), contact_number: v('tel').slice(0, 10), email: `${v('mail')}@x.org`, allergies: v('allergy'),
      doc_contact: v('dtel').slice(0, 10), doc_email: `${v('dmail')}@x.org`,
      diagnosis: v('diag'), treatment: v('treat'), policy: v('policy'), result: v('result'),
      address2: v('addrtwo'), diagnosis2: v('diagtwo'), hinted: v('hinted')
    }
    const control = { name: v('CtrlName'), purpose: v('CtrlPurpose') }
    const db = node.db
    await db.insert('patient_records', patientRow(1, { patient_name: control.name, address: secret.address, contact_number: secret.contact_number, email: secret.email, allergies: secret.allergies }))
    await db.insert('doctors_info', { doctor_id: 2, name: 'Dr Two', specialization: 'GP', contact_number: secret.doc_contact, email: secret.doc_email, availability: 'Mon' })
    await db.insert('appointments', { appointment_id: 3, patient_id: 1, doctor_id: 2, appointment_date: '2026-01-05T09:00:00Z', purpose: control.purpose })
    await db.insert('medical_history', { history_id: 4, patient_id: 1, diagnosis: secret.diagnosis, treatment: secret.treatment, date_of_visit: '2026-01-05T09:00:00Z' })
    await db.insert('billing_insurance', { billing_id: 5, patient_id: 1, amount: '10.00', date: '2026-01-05', insurance_provider: 'Acme', insurance_policy_number: secret.policy })
    await db.insert('lab_results', { result_id: 6, record_id: 4, patient_id: 1, test_name: 'CBC', test_date: '2026-01-05', test_result: secret.result })
    // Updates: the first versions move to history.
    await db.patch('patient_records', '1', { address: secret.address2 })
    await db.patch('medical_history', '4', { diagnosis: secret.diagnosis2 })
    // Versions kept for a replica that is down, as the coordinator keeps them.
    const state = (await node.store.get('patient_records', tokenOf('patient_id:1'), '1'))!
    const head = winner(state)!
    const hint: VersionEntry = { ...head, version: node.clock.tick(), parents: [head.version], row: { ...head.row!, allergies: secret.hinted } }
    await node.store.addHint('12D3KooWdownreplica', [hint])
    await node.close()

    const bytes = await allBytes(dir.path)
    expect(found(bytes, Object.values(control))).toEqual(Object.values(control))
    expect(found(bytes, Object.values(secret))).toEqual([])

    const again = await openLocalNode(dir.path)
    try {
      expect((await again.db.get('patient_records', '1')).row).toMatchObject({ patient_name: control.name, address: secret.address2, contact_number: secret.contact_number, email: secret.email, allergies: secret.allergies })
      expect((await again.db.get('doctors_info', '2')).row).toMatchObject({ contact_number: secret.doc_contact, email: secret.doc_email })
      expect((await again.db.get('medical_history', '4')).row).toMatchObject({ diagnosis: secret.diagnosis2, treatment: secret.treatment })
      expect((await again.db.get('billing_insurance', '5')).row).toMatchObject({ insurance_policy_number: secret.policy })
      expect((await again.db.get('lab_results', '6')).row).toMatchObject({ test_result: secret.result })
      expect((await again.db.history('patient_records', '1')).map(h => h.row?.address)).toEqual([secret.address, secret.address2])
      expect((await again.db.history('medical_history', '4')).map(h => h.row?.diagnosis)).toEqual([secret.diagnosis, secret.diagnosis2])
      const hints = await again.store.hintsFor('12D3KooWdownreplica', 10)
      expect(hints.map(h => h.entries.map(e => e.row?.allergies))).toEqual([[secret.hinted]])
      // Equality filters on sensitive columns (not indexed: the scan compares opened values).
      expect((await again.db.list('patient_records', { email: secret.email })).rows.map(r => r.patient_id)).toEqual([1])
      expect((await again.db.list('patient_records', { email: 'nobody@x.org' })).rows).toEqual([])
      expect((await again.db.list('medical_history', { diagnosis: secret.diagnosis2, patient_id: 1 })).rows.map(r => r.history_id)).toEqual([4])
      expect((await again.db.list('medical_history', { diagnosis: secret.diagnosis })).rows).toEqual([])
    } finally {
      await again.close()
    }
  })

  it('creates data.key once (32 bytes, mode 0600), reuses it, and names a damaged one', async () => {
    const key = await loadOrCreateDataKey(dir.path)
    const path = join(dir.path, DATA_KEY_FILE)
    expect(key).toHaveLength(32)
    expect((await stat(path)).mode & 0o777).toBe(0o600)
    expect(Buffer.from(await loadOrCreateDataKey(dir.path))).toEqual(Buffer.from(key))
    const [a, b] = await Promise.all([loadOrCreateDataKey(join(dir.path)), loadOrCreateDataKey(dir.path)])
    expect(Buffer.from(a)).toEqual(Buffer.from(b))
    await writeFile(path, key.subarray(0, 31))
    const err = await failure(loadOrCreateDataKey(dir.path))
    expect(err).toMatchObject({ code: 'DATA_KEY', name: 'DataKeyError' })
    expect(err.message).toContain(path)
    // Not replaced: the damaged file is still there for the operator to restore.
    expect(await readFile(path)).toHaveLength(31)
  })

  it('two homes create two different keys at once without clobbering either', async () => {
    const other = await tempDir('ntk-crypt2-')
    try {
      const keys = await Promise.all([loadOrCreateDataKey(dir.path), loadOrCreateDataKey(other.path)])
      expect(Buffer.from(keys[0]).equals(Buffer.from(keys[1]))).toBe(false)
      expect((await readdir(dir.path)).filter(f => f.endsWith('.tmp'))).toEqual([])
    } finally {
      await other.remove()
    }
  })
})

describe('encryption at rest: the store', () => {
  const INDEXES = { patient_records: ['email'], appointments: ['patient_id'] }
  const TOKEN = tokenOf('patient_id:1')
  const clock = new HybridClock('crypt')
  let path: string
  const key = randomBytes(32)

  beforeEach(() => { path = join(dir.path, 'store') })

  const entry = (id: number, row: Row | null, parents: string[] = []): VersionEntry =>
    ({ table: 'patient_records', id: String(id), token: tokenOf(`patient_id:${id}`), version: clock.tick(), parents, row })

  async function open (init: { dataKey?: Uint8Array, plaintext?: boolean } = { dataKey: key }): Promise<Store> {
    const store = new Store({ path, sync: false, indexes: INDEXES, ...init })
    await store.open()
    return store
  }

  /** Raw LevelDB entries of one sublevel, read with the store closed */
  async function raw (sublevel: string): Promise<Array<[string, string]>> {
    const db = new Level<string, string>(path)
    try {
      const prefix = `!${sublevel}!`
      const out: Array<[string, string]> = []
      for await (const [k, v] of db.iterator({ gt: prefix, lt: prefix + '\xff' })) out.push([k.slice(prefix.length), v])
      return out
    } finally {
      await db.close()
    }
  }

  async function rawPut (key: string, value: string): Promise<void> {
    const db = new Level<string, string>(path)
    try { await db.put(key, value) } finally { await db.close() }
  }

  it('indexes a sensitive column by keyed hash: lookups work, the value is in no key', async () => {
    const store = await open()
    const email = 'indexed-Zq9@x.org'
    await store.apply([entry(1, patientRow(1, { email })), entry(2, patientRow(2, { email: 'other-Zq9@x.org' }))])
    expect((await store.scan('patient_records', { where: { email }, indexed: ['email'], limit: 10 })).rows.map(r => r.state.id)).toEqual(['1'])
    expect((await store.scan('patient_records', { where: { email: 'none@x.org' }, limit: 10 })).rows).toEqual([])
    await store.close()
    const keys = (await raw('i')).map(([k]) => k)
    expect(keys.filter(k => k.startsWith('patient_records!email!'))).toHaveLength(2)
    expect(keys.join('\n')).not.toContain(encodeURIComponent(email))
    const records = (await raw('r')).map(([, v]) => v).join('\n')
    expect(records).not.toContain(email)
    expect(records).toContain('Patient 1')
  })

  it('refuses damaged sealed columns, and sealed columns moved to another row, with INTEGRITY', async () => {
    let store = await open()
    await store.apply([entry(1, patientRow(1)), entry(2, patientRow(2))])
    await store.close()
    const records = await raw('r')
    const [k1, v1] = records.find(([k]) => k.endsWith('!1'))!
    const [k2, v2] = records.find(([k]) => k.endsWith('!2'))!
    // Row 2 gets row 1's sealed columns: a valid ciphertext, but not of this row.
    const moved = JSON.parse(v2)
    moved.heads[0].row.$gcm = JSON.parse(v1).heads[0].row.$gcm
    await rawPut(`!r!${k2}`, JSON.stringify(moved))
    // Row 1's sealed columns get one bit flipped.
    const damaged = JSON.parse(v1)
    const sealed = Buffer.from(damaged.heads[0].row.$gcm, 'base64')
    sealed[sealed.length - 1] = (sealed[sealed.length - 1] as number) ^ 1
    damaged.heads[0].row.$gcm = sealed.toString('base64')
    await rawPut(`!r!${k1}`, JSON.stringify(damaged))
    store = await open()
    try {
      expect(await failure(store.get('patient_records', TOKEN, '1'))).toMatchObject({ code: 'INTEGRITY', name: 'IntegrityError' })
      expect(await failure(store.get('patient_records', tokenOf('patient_id:2'), '2'))).toMatchObject({ code: 'INTEGRITY' })
      expect(await failure(store.scan('patient_records', { limit: 10 }))).toMatchObject({ code: 'INTEGRITY' })
    } finally {
      await store.close()
    }
  })

  it('needs its data key: none, another, or plaintext mode on an encrypted store is DATA_KEY', async () => {
    const store = await open()
    await store.apply([entry(1, patientRow(1))])
    await store.close()
    for (const init of [{}, { dataKey: randomBytes(32) }, { plaintext: true }, { dataKey: key, plaintext: true }]) {
      const s = new Store({ path, sync: false, indexes: INDEXES, ...init })
      expect(await failure(s.open())).toMatchObject({ code: 'DATA_KEY', name: 'DataKeyError' })
      expect(s.status).toBe('closed')
    }
    // Refusals left the store as it was.
    const again = await open()
    expect(winner(await again.get('patient_records', TOKEN, '1'))?.row).toEqual(patientRow(1))
    await again.close()
    expect(() => new Store({ path, dataKey: randomBytes(16) })).toThrow(/32 bytes/)
  })

  it('encrypts a plaintext store in place when opened with a key: rows, history, hints and index entries', async () => {
    // Searched for by its local part: the index key holds it URI-encoded ('%40' for '@').
    const local = unique('e')
    const email = `${local}@x.org`
    const address = unique('a')
    const hinted = unique('h')
    let store = await open({ plaintext: true })
    const v1 = entry(1, patientRow(1, { address }))
    const v2 = entry(1, patientRow(1, { email }), [v1.version])
    await store.apply([v1])
    await store.apply([v2])
    await store.addHint('12D3KooWdown', [entry(2, patientRow(2, { allergies: hinted }))])
    await store.close()
    // A store written before field encryption existed has no marker at all.
    const db = new Level<string, string>(path)
    await db.del('!m!fieldEncryption')
    await db.close()
    const before = await allBytes(path)
    expect(found(before, [local, address, hinted])).toEqual([local, address, hinted])

    store = await open()
    expect((await store.get('patient_records', TOKEN, '1'))?.heads).toEqual([v2])
    expect(await store.versions('patient_records', TOKEN, '1')).toEqual([v1, v2])
    expect((await store.hintsFor('12D3KooWdown', 10))[0]?.entries[0]?.row?.allergies).toBe(hinted)
    expect((await store.scan('patient_records', { where: { email }, limit: 10 })).rows.map(r => r.state.id)).toEqual(['1'])
    await store.close()
    expect(found(await allBytes(path), [local, address, hinted])).toEqual([])
    const indexKeys = (await raw('i')).map(([k]) => k).filter(k => k.startsWith('patient_records!email!'))
    expect(indexKeys).toHaveLength(1)
    expect(indexKeys[0]).toMatch(/^patient_records!email!h[\w-]{43}!/)
    expect(await failure(open({ plaintext: true }))).toMatchObject({ code: 'DATA_KEY' })
    // Opened again, nothing is migrated twice.
    store = await open()
    expect(await store.versions('patient_records', TOKEN, '1')).toEqual([v1, v2])
    await store.close()
  })
})
