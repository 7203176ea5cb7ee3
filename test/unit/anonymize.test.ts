import { describe, expect, it } from 'vitest'
import { ANONYMIZE_RULES, Pseudonymizer, anonymizeRow, anonymizedColumns, ruleFor } from '../../src/security/anonymize.js'
import { TABLES, findTable, type Row, type TableDef } from '../../src/schema/index.js'
import { columnsFor } from '../../src/security/rights.js'

const table = (name: string): TableDef => {
  const t = findTable(name)
  if (t === undefined) throw new Error(`no table ${name}`)
  return t
}
const all = (name: string): string[] => table(name).columns.map(c => c.name)

const PATIENT: Row = {
  patient_id: 42,
  patient_name: 'Palesa Mohapi',
  date_of_birth: '1980-05-17',
  gender: 'female',
  address: '12 Church Street, Maseru',
  contact_number: '0712345678',
  email: 'palesa@example.org',
  allergies: 'Penicillin'
}
const HISTORY: Row = { history_id: 7, patient_id: 42, diagnosis: 'Hypertension', treatment: 'Amlodipine', date_of_visit: '2025-01-02T10:00:00.000Z', role_id: 2 }
const LAB: Row = { result_id: 9, record_id: 7, patient_id: 42, test_name: 'Blood pressure', test_date: '2025-01-02', test_result: '150/95' }
const BILL: Row = { billing_id: 3, patient_id: 42, amount: '12.50', date: '2025-01-02', insurance_provider: 'Acme', insurance_policy_number: 'POL-778899' }
const DOCTOR: Row = { doctor_id: 5, name: 'Dr. Lerato Nthabiseng', specialization: 'Cardiology', contact_number: '2622230000', email: 'lerato@example.org', availability: 'Mon-Fri' }
const USER: Row = { user_id: 11, user_name: 'nurse.lineo', role_id: 3, revoked_at: null }

describe('anonymize: the rules', () => {
  it('has a rule for every column of every table, and no rule for a column that does not exist', () => {
    for (const t of TABLES) {
      expect(Object.keys(ANONYMIZE_RULES[t.name] ?? {}).sort(), t.name).toEqual(all(t.name).sort())
    }
    expect(Object.keys(ANONYMIZE_RULES).sort()).toEqual(TABLES.map(t => t.name).sort())
  })

  it('drops a column that has no rule (a new column is never exported until someone decides)', () => {
    expect(ruleFor('patient_records', 'new_column')).toBe('drop')
    expect(ruleFor('no_such_table', 'x')).toBe('drop')
    expect(ruleFor('patient_records', '__proto__')).toBe('drop')
  })

  it('drops every direct identifier', () => {
    const direct: Array<[string, string]> = [
      ['patient_records', 'patient_name'], ['patient_records', 'address'], ['patient_records', 'contact_number'], ['patient_records', 'email'],
      ['doctors_info', 'name'], ['doctors_info', 'contact_number'], ['doctors_info', 'email'],
      ['billing_insurance', 'insurance_policy_number'], ['users', 'user_name'], ['users', 'token_hash']
    ]
    for (const [t, c] of direct) expect(ruleFor(t, c), `${t}.${c}`).toBe('drop')
    const out = anonymizeRow(table('patient_records'), PATIENT, all('patient_records'), new Pseudonymizer())
    for (const c of ['patient_name', 'address', 'contact_number', 'email']) expect(out).not.toHaveProperty(c)
    expect(anonymizeRow(table('doctors_info'), DOCTOR, all('doctors_info'), new Pseudonymizer())).not.toHaveProperty('name')
    expect(anonymizeRow(table('billing_insurance'), BILL, all('billing_insurance'), new Pseudonymizer())).not.toHaveProperty('insurance_policy_number')
    expect(anonymizeRow(table('users'), USER, all('users'), new Pseudonymizer())).not.toHaveProperty('user_name')
  })

  it('cuts a date of birth to its year', () => {
    const out = anonymizeRow(table('patient_records'), PATIENT, all('patient_records'), new Pseudonymizer())
    expect(out.date_of_birth).toBe('1980')
  })

  it('replaces every id that links a patient\'s rows by one pseudonym per patient, stable within one export', () => {
    const p = new Pseudonymizer()
    const patient = anonymizeRow(table('patient_records'), PATIENT, all('patient_records'), p)
    const history = anonymizeRow(table('medical_history'), HISTORY, all('medical_history'), p)
    const lab = anonymizeRow(table('lab_results'), LAB, all('lab_results'), p)
    const bill = anonymizeRow(table('billing_insurance'), BILL, all('billing_insurance'), p)
    const pair = anonymizeRow(table('patient_medications'), { patient_id: 42, medication_id: 4 }, all('patient_medications'), p)
    expect(patient.patient_id).toMatch(/^[A-Za-z0-9_-]{22}$/)
    for (const r of [history, lab, bill, pair]) expect(r.patient_id).toBe(patient.patient_id)
    // A lab result still joins its history row, by the history row's own pseudonym.
    expect(lab.record_id).toBe(history.history_id)
    expect(history.history_id).not.toBe(7)
    expect(history.history_id).not.toBe(patient.patient_id)
    // The same id in two tables that are not the same thing gets two pseudonyms.
    expect(p.pseudonym('patient_records', 7)).not.toBe(p.pseudonym('medical_history', 7))
    expect(anonymizeRow(table('patient_records'), { ...PATIENT, patient_id: 43 }, all('patient_records'), p).patient_id).not.toBe(patient.patient_id)
    // Ids of other rows and of people do not survive either; a drug's id, not personal, does.
    expect(bill.billing_id).not.toBe(3)
    expect(lab.result_id).not.toBe(9)
    expect(anonymizeRow(table('doctors_info'), DOCTOR, all('doctors_info'), p).doctor_id).not.toBe(5)
    expect(anonymizeRow(table('users'), USER, all('users'), p).user_id).not.toBe(11)
    expect(pair.medication_id).toBe(4)
  })

  it('gives a patient another pseudonym in the next export', () => {
    const a = new Pseudonymizer()
    const b = new Pseudonymizer()
    expect(a.pseudonym('patient_records', 42)).toBe(a.pseudonym('patient_records', '42'))
    expect(a.pseudonym('patient_records', 42)).not.toBe(b.pseudonym('patient_records', 42))
  })

  it('keeps free text, clinical dates and amounts for a role that may read them', () => {
    const p = new Pseudonymizer()
    const history = anonymizeRow(table('medical_history'), HISTORY, all('medical_history'), p)
    expect(history).toMatchObject({ diagnosis: 'Hypertension', treatment: 'Amlodipine', date_of_visit: HISTORY.date_of_visit, role_id: 2 })
    expect(anonymizeRow(table('patient_records'), PATIENT, all('patient_records'), p)).toMatchObject({ allergies: 'Penicillin', gender: 'female' })
    expect(anonymizeRow(table('lab_results'), LAB, all('lab_results'), p)).toMatchObject({ test_result: '150/95', test_name: 'Blood pressure', test_date: '2025-01-02' })
    expect(anonymizeRow(table('billing_insurance'), BILL, all('billing_insurance'), p)).toMatchObject({ amount: '12.50', insurance_provider: 'Acme' })
  })

  it('drops free text a role may not read: only the columns given survive', () => {
    const billing = columnsFor('billing', table('patient_records'), 'read') ?? []
    const out = anonymizeRow(table('patient_records'), PATIENT, billing, new Pseudonymizer())
    expect(Object.keys(out)).toEqual(['patient_id'])
    expect(anonymizedColumns(table('patient_records'), billing)).toEqual(['patient_id'])
    const out2 = anonymizeRow(table('medical_history'), HISTORY, ['history_id', 'patient_id'], new Pseudonymizer())
    expect(out2).not.toHaveProperty('diagnosis')
    expect(out2).not.toHaveProperty('treatment')
  })

  it('keeps a null as null', () => {
    const out = anonymizeRow(table('patient_records'), { ...PATIENT, allergies: null }, all('patient_records'), new Pseudonymizer())
    expect(out.allergies).toBeNull()
  })

  it('leaves no direct identifier value anywhere in the rows', () => {
    const p = new Pseudonymizer()
    const lines = [
      anonymizeRow(table('patient_records'), PATIENT, all('patient_records'), p),
      anonymizeRow(table('doctors_info'), DOCTOR, all('doctors_info'), p),
      anonymizeRow(table('billing_insurance'), BILL, all('billing_insurance'), p),
      anonymizeRow(table('users'), USER, all('users'), p)
    ].map(r => JSON.stringify(r))
    const identifiers = [PATIENT.patient_name, PATIENT.address, PATIENT.contact_number, PATIENT.email, DOCTOR.name, DOCTOR.contact_number, DOCTOR.email, BILL.insurance_policy_number, USER.user_name, '1980-05-17']
    for (const line of lines) {
      for (const v of identifiers) expect(line).not.toContain(String(v))
    }
  })
})
