/**
 * What an anonymized export does to each column: the rule is data, one entry
 * per column of every table, so README's table and the code cannot drift and
 * a new column is dropped until someone decides what it is (a column with no
 * rule is never exported anonymized).
 *
 * An anonymized export is pseudonymised data, not Safe Harbor de-identified
 * data: dates other than the date of birth are kept, and free text is kept
 * where the caller's role may read it.
 */
import { createHmac, randomBytes } from 'node:crypto'
import type { Row, TableDef } from '../schema/index.js'

/**
 * - `keep`: the value as stored
 * - `drop`: a direct identifier, absent from the output
 * - `year`: a DATE cut to its year (`"1980"`)
 * - `{ pseudonym: t }`: an id of a row of table `t`, replaced by a pseudonym
 *   that is the same for that row everywhere in one export (so rows still
 *   join within the export) and different in the next export
 */
export type AnonymizeRule = 'keep' | 'drop' | 'year' | { pseudonym: string }

const KEEP = 'keep'
const DROP = 'drop'
const YEAR = 'year'
const of = (table: string): { pseudonym: string } => ({ pseudonym: table })

/** The rule of every column, by table */
export const ANONYMIZE_RULES: Readonly<Record<string, Readonly<Record<string, AnonymizeRule>>>> = {
  patient_records: {
    patient_id: of('patient_records'),
    patient_name: DROP,
    date_of_birth: YEAR,
    gender: KEEP,
    address: DROP,
    contact_number: DROP,
    email: DROP,
    allergies: KEEP
  },
  doctors_info: {
    doctor_id: of('doctors_info'),
    name: DROP,
    specialization: KEEP,
    contact_number: DROP,
    email: DROP,
    availability: KEEP
  },
  appointments: {
    appointment_id: of('appointments'),
    patient_id: of('patient_records'),
    doctor_id: of('doctors_info'),
    appointment_date: KEEP,
    purpose: KEEP
  },
  medical_history: {
    history_id: of('medical_history'),
    patient_id: of('patient_records'),
    diagnosis: KEEP,
    treatment: KEEP,
    date_of_visit: KEEP,
    role_id: KEEP
  },
  // A catalogue of drugs: nothing about a person.
  medications: {
    medication_id: KEEP,
    name: KEEP,
    dosage: KEEP,
    manufacturer: KEEP
  },
  billing_insurance: {
    billing_id: of('billing_insurance'),
    patient_id: of('patient_records'),
    amount: KEEP,
    date: KEEP,
    insurance_provider: KEEP,
    insurance_policy_number: DROP
  },
  patient_medications: {
    patient_id: of('patient_records'),
    medication_id: KEEP
  },
  lab_results: {
    result_id: of('lab_results'),
    record_id: of('medical_history'),
    patient_id: of('patient_records'),
    test_name: KEEP,
    test_date: KEEP,
    test_result: KEEP
  },
  user_roles: {
    role_id: KEEP,
    role_name: KEEP
  },
  users: {
    user_id: of('users'),
    user_name: DROP,
    role_id: KEEP,
    token_hash: DROP,
    revoked_at: KEEP
  }
}

/** The rule of one column; `drop` for a column that has none */
export function ruleFor (table: string, column: string): AnonymizeRule {
  const rules = Object.prototype.hasOwnProperty.call(ANONYMIZE_RULES, table) ? ANONYMIZE_RULES[table] : undefined
  const rule = rules !== undefined && Object.prototype.hasOwnProperty.call(rules, column) ? rules[column] : undefined
  return rule ?? DROP
}

/** Bytes of the per-export key */
const KEY_BYTES = 32
/** Characters of a pseudonym (base64url of the HMAC): 128 bits */
const PSEUDONYM_CHARS = 22

/**
 * Pseudonyms for one export: HMAC-SHA256 of `<table>:<id>` under a key made
 * for this export and never stored, so the same row gets the same pseudonym
 * in every table of this export and an unrelated one in the next, and no one
 * (the node included) can map a pseudonym back once the export is done.
 */
export class Pseudonymizer {
  private readonly key: Buffer

  constructor (key: Buffer = randomBytes(KEY_BYTES)) {
    this.key = key
  }

  pseudonym (table: string, id: unknown): string {
    return createHmac('sha256', this.key).update(`${table}:${String(id)}`).digest('base64url').slice(0, PSEUDONYM_CHARS)
  }
}

/**
 * The anonymized form of `row`: only `columns` (those the caller may read),
 * each treated by its rule. A null value stays null.
 */
export function anonymizeRow (table: TableDef, row: Row, columns: readonly string[], pseudonyms: Pseudonymizer): Row {
  const out: Row = {}
  for (const c of columns) {
    if (!Object.prototype.hasOwnProperty.call(row, c)) continue
    const rule = ruleFor(table.name, c)
    if (rule === DROP) continue
    const value = row[c]
    if (value === null || value === undefined || rule === KEEP) {
      out[c] = value ?? null
    } else if (rule === YEAR) {
      out[c] = String(value).slice(0, 4)
    } else {
      out[c] = pseudonyms.pseudonym(rule.pseudonym, value)
    }
  }
  return out
}

/** The columns of `columns` an anonymized export writes (those whose rule is not `drop`) */
export function anonymizedColumns (table: TableDef, columns: readonly string[]): string[] {
  return columns.filter(c => ruleFor(table.name, c) !== DROP)
}
