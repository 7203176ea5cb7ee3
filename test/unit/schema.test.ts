import { describe, expect, it } from 'vitest'
import { NtsoekheError } from '../../src/errors/index.js'
import {
  TABLES, checkValue, findTable, parseId, referencingTables, rowId, shardValue, upgradeStoredRow, validateRow,
  type Column, type TableDef
} from '../../src/schema/index.js'

function table (name: string): TableDef {
  const t = findTable(name)
  if (t === undefined) throw new Error(`no table ${name}`)
  return t
}

function column (tableName: string, name: string): Column {
  const c = table(tableName).columns.find(col => col.name === name)
  if (c === undefined) throw new Error(`no column ${tableName}.${name}`)
  return c
}

/** Runs `fn`, expects a ValidationError, and returns it */
function invalid (fn: () => unknown): NtsoekheError {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(NtsoekheError)
    const e = err as NtsoekheError
    expect(e.name).toBe('ValidationError')
    expect(e.code).toBe('INVALID')
    return e
  }
  throw new Error('expected a ValidationError, but nothing was thrown')
}

const patient = {
  patient_id: 1,
  patient_name: 'Thabo Mokoena',
  date_of_birth: '1980-05-17',
  gender: 'male',
  address: '12 Church Street, Maseru',
  contact_number: '0712345678',
  email: 'thabo@example.org',
  allergies: null
}

describe('schema: tables', () => {
  it('has the tables of the design, each with key, shard key and indexes', () => {
    expect(TABLES.map(t => t.name).sort()).toEqual([
      'appointments', 'billing_insurance', 'doctors_info', 'lab_results', 'medical_history',
      'medications', 'patient_medications', 'patient_records', 'user_roles', 'users'
    ])
    for (const t of TABLES) {
      for (const k of t.primaryKey) expect(t.columns.map(c => c.name)).toContain(k)
      if (t.shardKey !== 'global') expect(t.columns.map(c => c.name)).toContain(t.shardKey)
      for (const r of t.references) {
        expect(t.indexed.includes(r.column) || t.primaryKey.includes(r.column)).toBe(true)
        expect(findTable(r.table)?.columns.map(c => c.name)).toContain(r.refColumn)
      }
      for (const u of t.unique) expect(t.indexed).toContain(u)
    }
    expect(findTable('nope')).toBeUndefined()
  })

  it('lists the tables that reference a table', () => {
    const refs = referencingTables('patient_records').map(r => r.table.name).sort()
    expect(refs).toEqual(['appointments', 'billing_insurance', 'lab_results', 'medical_history', 'patient_medications'])
    expect(referencingTables('medical_history').map(r => [r.table.name, r.reference.column, r.reference.refColumn]))
      .toEqual([['lab_results', 'record_id', 'history_id']])
  })
})

describe('schema: INT', () => {
  const col = column('patient_records', 'patient_id')

  it('accepts safe integers and integer strings', () => {
    expect(checkValue(col, 42)).toBe(42)
    expect(checkValue(col, -7)).toBe(-7)
    expect(checkValue(col, 0)).toBe(0)
    expect(checkValue(col, Number.MAX_SAFE_INTEGER)).toBe(Number.MAX_SAFE_INTEGER)
    expect(checkValue(col, Number.MIN_SAFE_INTEGER)).toBe(Number.MIN_SAFE_INTEGER)
    expect(checkValue(col, '42')).toBe(42)
    expect(checkValue(col, ' 17 ')).toBe(17)
    expect(checkValue(col, '-3')).toBe(-3)
    expect(checkValue(col, '9007199254740991')).toBe(Number.MAX_SAFE_INTEGER)
  })

  it('rejects fractions, unsafe integers, non-numeric strings and other types', () => {
    for (const bad of [1.5, Number.MAX_SAFE_INTEGER + 1, '9007199254740992', '99999999999999999999', NaN, Infinity,
      '1.0', '1e3', '0x10', '', 'abc', '12abc', true, {}, [1]]) {
      const err = invalid(() => checkValue(col, bad))
      expect(err.column).toBe('patient_id')
    }
  })
})

describe('schema: VARCHAR(n)', () => {
  const col = column('patient_records', 'contact_number') // VARCHAR(10)
  const name = column('patient_records', 'patient_name') // VARCHAR(150)

  it('accepts exactly n characters and rejects n + 1, naming the column, never truncating', () => {
    expect(col.length).toBe(10)
    expect(checkValue(col, '0123456789')).toBe('0123456789')
    const err = invalid(() => checkValue(col, '01234567890'))
    expect(err.column).toBe('contact_number')
    expect(err.message).toContain('contact_number')
    expect(name.length).toBe(150)
    expect(checkValue(name, 'a'.repeat(150))).toBe('a'.repeat(150))
    expect(invalid(() => checkValue(name, 'a'.repeat(151))).column).toBe('patient_name')
  })

  it('counts Unicode code points, not UTF-16 units', () => {
    // Ten astral characters are 20 UTF-16 units but ten characters.
    const ten = '😀'.repeat(10)
    expect(ten.length).toBe(20)
    expect(checkValue(col, ten)).toBe(ten)
    expect(invalid(() => checkValue(col, ten + '😀')).column).toBe('contact_number')
    const accented = 'é'.repeat(10)
    expect(checkValue(col, accented)).toBe(accented)
  })

  it('rejects non-strings and unpaired surrogates', () => {
    expect(invalid(() => checkValue(col, 712345678)).column).toBe('contact_number')
    expect(invalid(() => checkValue(col, 'ab\uD800')).column).toBe('contact_number')
    expect(invalid(() => checkValue(col, '\uDC00ab')).column).toBe('contact_number')
    expect(checkValue(col, 'ab\uD83D\uDE00')).toBe('ab😀')
  })
})

describe('schema: DATE', () => {
  const col = column('patient_records', 'date_of_birth')

  it('accepts real calendar dates', () => {
    for (const ok of ['2024-02-29', '2000-02-29', '1999-12-31', '2023-01-01', '0050-06-15']) {
      expect(checkValue(col, ok)).toBe(ok)
    }
  })

  it('rejects impossible dates and other forms', () => {
    for (const bad of ['2023-02-29', '1900-02-29', '2023-04-31', '2023-13-01', '2023-00-10', '2023-01-00',
      '2023-1-01', '23-01-01', '2023/01/01', '2023-01-01T00:00:00Z', '', 20230101]) {
      expect(invalid(() => checkValue(col, bad)).column).toBe('date_of_birth')
    }
  })
})

describe('schema: TIMESTAMP', () => {
  const col = column('appointments', 'appointment_date')

  it('stores every ISO 8601 form with a zone as one canonical UTC form', () => {
    const cases: Array<[string, string]> = [
      ['2024-03-01T10:00:00Z', '2024-03-01T10:00:00.000Z'],
      ['2024-03-01T10:00Z', '2024-03-01T10:00:00.000Z'],
      ['2024-03-01 10:00Z', '2024-03-01T10:00:00.000Z'],
      ['2024-03-01T10:00:00.123Z', '2024-03-01T10:00:00.123Z'],
      ['2024-03-01T10:00:00.5Z', '2024-03-01T10:00:00.500Z'],
      ['2024-03-01T10:00:00.123456789Z', '2024-03-01T10:00:00.123Z'],
      ['2024-03-01T10:00:00+02:00', '2024-03-01T08:00:00.000Z'],
      ['2024-03-01T10:00:00-0530', '2024-03-01T15:30:00.000Z'],
      ['2024-03-01T01:00:00+02:00', '2024-02-29T23:00:00.000Z'],
      ['2024-02-29T23:59:59Z', '2024-02-29T23:59:59.000Z'],
      ['0050-06-01T12:00:00Z', '0050-06-01T12:00:00.000Z']
    ]
    for (const [given, stored] of cases) expect(checkValue(col, given), given).toBe(stored)
    // The canonical form is its own: storing it again changes nothing.
    for (const [, stored] of cases) expect(checkValue(col, stored)).toBe(stored)
  })

  it('refuses a time without a zone, naming the column and the accepted forms', () => {
    for (const bare of ['2024-03-01T10:00', '2024-03-01 10:00', '2024-03-01T10:00:00.123']) {
      const err = invalid(() => checkValue(col, bare))
      expect(err.column).toBe('appointment_date')
      expect(err.message).toMatch(/no time zone/)
      expect(err.message).toContain('2026-12-02T10:00:00+02:00')
      expect(err.message.match(/appointment_date/g)).toHaveLength(1)
    }
  })

  it('keeps a value a member stored before the canonical form, and upgrades it when its row is rewritten', () => {
    expect(checkValue(col, '2024-03-01 10:00', { stored: true })).toBe('2024-03-01 10:00')
    expect(invalid(() => checkValue(col, 'yesterday', { stored: true })).column).toBe('appointment_date')
    const table = TABLES.find(t => t.name === 'appointments') as TableDef
    const old = { appointment_id: 1, patient_id: 2, doctor_id: 3, appointment_date: '2024-03-01 10:00', purpose: 'x' }
    expect(upgradeStoredRow(table, old)).toEqual({ ...old, appointment_date: '2024-03-01T10:00:00.000Z' })
    expect(upgradeStoredRow(table, { ...old, appointment_date: '2024-03-01T12:00+02:00' }).appointment_date).toBe('2024-03-01T10:00:00.000Z')
    const canonical = { ...old, appointment_date: '2024-03-01T10:00:00.000Z' }
    expect(upgradeStoredRow(table, canonical)).toBe(canonical)
  })

  it('rejects impossible times, dates alone and garbage', () => {
    for (const bad of ['2024-03-01', '2023-02-29T10:00:00Z', '2024-03-01T24:00:00Z', '2024-03-01T10:60:00Z',
      '2024-03-01T10:00:60Z', '2024-03-01T10:00:00+25:00', '2024-03-01T10', 'yesterday', '', 1709287200000]) {
      expect(invalid(() => checkValue(col, bad)).column).toBe('appointment_date')
    }
  })
})

describe('schema: DECIMAL(10,2)', () => {
  const col = column('billing_insurance', 'amount')

  it('normalises exact values to two decimals and returns a string', () => {
    expect(col.precision).toBe(10)
    expect(col.scale).toBe(2)
    expect(checkValue(col, '12.5')).toBe('12.50')
    expect(checkValue(col, 12.5)).toBe('12.50')
    expect(checkValue(col, 12)).toBe('12.00')
    expect(checkValue(col, '0012.30')).toBe('12.30')
    expect(checkValue(col, '99999999.99')).toBe('99999999.99')
    expect(checkValue(col, 99999999.99)).toBe('99999999.99')
    expect(checkValue(col, '0')).toBe('0.00')
    expect(checkValue(col, '+3.1')).toBe('3.10')
  })

  it('keeps negative amounts and has no negative zero', () => {
    expect(checkValue(col, '-12.5')).toBe('-12.50')
    expect(checkValue(col, -0.01)).toBe('-0.01')
    expect(checkValue(col, '-0.00')).toBe('0.00')
    expect(checkValue(col, '-99999999.99')).toBe('-99999999.99')
  })

  it('rejects more decimals than the scale, never rounding', () => {
    expect(invalid(() => checkValue(col, 12.345)).column).toBe('amount')
    expect(invalid(() => checkValue(col, '12.345')).column).toBe('amount')
    expect(invalid(() => checkValue(col, 0.1 + 0.2)).column).toBe('amount')
  })

  it('rejects values out of range', () => {
    for (const bad of [9999999999, '9999999999', '100000000', 100000000, '-100000000', 1e21]) {
      expect(invalid(() => checkValue(col, bad)).column).toBe('amount')
    }
  })

  it('rejects what is not a decimal', () => {
    for (const bad of ['abc', '', '.5', '5.', '1e3', '1,50', NaN, Infinity, true, {}]) {
      expect(invalid(() => checkValue(col, bad)).column).toBe('amount')
    }
  })
})

describe('schema: rows', () => {
  const patients = table('patient_records')

  it('validates a full row, filling nullable columns with null', () => {
    const { allergies: _, ...withoutAllergies } = patient
    const row = validateRow(patients, withoutAllergies, 'full')
    expect(row).toEqual({ ...patient, allergies: null })
  })

  it('refuses a missing NOT NULL column and a null NOT NULL value, naming the column', () => {
    const { email: _, ...noEmail } = patient
    expect(invalid(() => validateRow(patients, noEmail, 'full')).column).toBe('email')
    expect(invalid(() => validateRow(patients, { ...patient, gender: null }, 'full')).column).toBe('gender')
    expect(validateRow(patients, { ...patient, allergies: null }, 'full').allergies).toBeNull()
  })

  it('refuses an unknown column, naming it', () => {
    expect(invalid(() => validateRow(patients, { ...patient, blood_type: 'O+' }, 'full')).column).toBe('blood_type')
    expect(invalid(() => validateRow(patients, { blood_type: 'O+' }, 'partial')).column).toBe('blood_type')
  })

  it('refuses a body that is not an object', () => {
    for (const bad of [null, 42, 'row', [patient]]) invalid(() => validateRow(patients, bad, 'full'))
  })

  it('lets a single-column key be missing only when asked', () => {
    const { patient_id: _, ...noKey } = patient
    expect(invalid(() => validateRow(patients, noKey, 'full')).column).toBe('patient_id')
    const row = validateRow(patients, noKey, 'full', { allowMissingKey: true })
    expect('patient_id' in row).toBe(false)
  })

  it('checks only the given columns in partial mode', () => {
    expect(validateRow(patients, { email: 'new@example.org' }, 'partial')).toEqual({ email: 'new@example.org' })
    expect(validateRow(patients, {}, 'partial')).toEqual({})
    expect(invalid(() => validateRow(patients, { contact_number: '01234567890' }, 'partial')).column).toBe('contact_number')
    expect(invalid(() => validateRow(patients, { email: null }, 'partial')).column).toBe('email')
  })
})

describe('schema: ids and shard values', () => {
  it('parses and prints single keys', () => {
    const patients = table('patient_records')
    expect(parseId(patients, '42')).toEqual({ patient_id: 42 })
    expect(parseId(patients, '-5')).toEqual({ patient_id: -5 })
    expect(rowId(patients, { ...patient, patient_id: 42 })).toBe('42')
    for (const bad of ['', 'abc', '4.2', '3:7', '99999999999999999999']) invalid(() => parseId(patients, bad))
  })

  it('parses and prints composite keys in key order', () => {
    const pm = table('patient_medications')
    expect(pm.primaryKey).toEqual(['patient_id', 'medication_id'])
    expect(parseId(pm, '3:7')).toEqual({ patient_id: 3, medication_id: 7 })
    expect(rowId(pm, { medication_id: 7, patient_id: 3 })).toBe('3:7')
    for (const bad of ['3', '3:7:9', '3:x', ':7']) invalid(() => parseId(pm, bad))
  })

  it("puts a patient's rows in every patient table on one shard value", () => {
    const p = 42
    const values = [
      shardValue(table('patient_records'), { patient_id: p }),
      shardValue(table('medical_history'), { history_id: 9001, patient_id: p }),
      shardValue(table('billing_insurance'), { billing_id: 9002, patient_id: p }),
      shardValue(table('patient_medications'), { patient_id: p, medication_id: 3 }),
      shardValue(table('lab_results'), { result_id: 9003, record_id: 9001, patient_id: p })
    ]
    expect(new Set(values).size).toBe(1)
    expect(shardValue(table('patient_records'), { patient_id: 43 })).not.toBe(values[0])
  })

  it("puts a doctor's appointments with the doctor", () => {
    const doctor = shardValue(table('doctors_info'), { doctor_id: 7 })
    expect(shardValue(table('appointments'), { appointment_id: 100, patient_id: 42, doctor_id: 7 })).toBe(doctor)
    expect(shardValue(table('appointments'), { appointment_id: 100, patient_id: 42, doctor_id: 8 })).not.toBe(doctor)
  })

  it('places medications by id and global tables by table name', () => {
    expect(shardValue(table('medications'), { medication_id: 3 })).not.toBe(shardValue(table('medications'), { medication_id: 4 }))
    expect(shardValue(table('users'), { user_id: 1 })).toBe(shardValue(table('users'), { user_id: 2 }))
    expect(shardValue(table('users'), { user_id: 1 })).not.toBe(shardValue(table('user_roles'), { role_id: 1 }))
  })

  it('refuses a row without its shard key', () => {
    expect(invalid(() => shardValue(table('appointments'), { appointment_id: 1 })).column).toBe('doctor_id')
  })
})
