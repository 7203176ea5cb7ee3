/**
 * The healthcare schema of both design documents: tables, column types and
 * lengths, NOT NULL rules, keys, references and shard keys.
 */
export type ColumnType = 'INT' | 'VARCHAR' | 'DATE' | 'TIMESTAMP' | 'DECIMAL'

export interface Column {
  name: string
  type: ColumnType
  /** VARCHAR(n): at most n characters */
  length?: number
  /** DECIMAL(precision, scale) */
  precision?: number
  scale?: number
  notNull: boolean
  /** Health or contact data: stored encrypted under the node's data key, indexed only as a keyed hash */
  sensitive?: boolean
}

export interface Reference {
  column: string
  table: string
  /** The referenced table's key column */
  refColumn: string
}

export interface TableDef {
  name: string
  columns: Column[]
  /** The key columns, in the order used to address a row (`3:7`) */
  primaryKey: string[]
  /** The column whose value places the row on the ring, or 'global' for tables copied to every node */
  shardKey: string | 'global'
  references: Reference[]
  /** Columns whose values must be unique across the table */
  unique: string[]
  /** Columns with a secondary index (references, unique columns and the shard key) */
  indexed: string[]
  /**
   * Ordered indexes, each a list of columns: the store keeps every row's
   * entry sorted by their values, for ranges and ORDER BY. The first is
   * always the primary key's (rows come in key order when no order is
   * asked); none is on a sensitive column, whose values are indexed only as
   * keyed hashes, for equality.
   */
  ordered: string[][]
}

const int = (name: string, notNull = true): Column => ({ name, type: 'INT', notNull })
const varchar = (name: string, length: number, notNull = true): Column => ({ name, type: 'VARCHAR', length, notNull })
/** A VARCHAR column holding health or contact data (see Column.sensitive) */
const secret = (name: string, length: number, notNull = true): Column => ({ ...varchar(name, length, notNull), sensitive: true })
const date = (name: string): Column => ({ name, type: 'DATE', notNull: true })
const timestamp = (name: string, notNull = true): Column => ({ name, type: 'TIMESTAMP', notNull })
const decimal = (name: string, precision: number, scale: number): Column => ({ name, type: 'DECIMAL', precision, scale, notNull: true })
const ref = (column: string, table: string, refColumn = column): Reference => ({ column, table, refColumn })

function table (def: Omit<TableDef, 'indexed' | 'unique' | 'ordered'> & { unique?: string[], index?: string[], ordered?: string[][] }): TableDef {
  const { index = [], ordered = [], ...rest } = def
  const unique = def.unique ?? []
  const indexed = new Set<string>([...def.references.map(r => r.column), ...unique, ...index])
  if (def.shardKey !== 'global') indexed.add(def.shardKey)
  for (const k of def.primaryKey) indexed.delete(k)
  for (const cols of ordered) {
    for (const c of cols) {
      const col = def.columns.find(x => x.name === c)
      if (col === undefined || col.sensitive === true) throw new Error(`schema: ${def.name}.${c} cannot have an ordered index`)
    }
  }
  return { ...rest, unique, indexed: [...indexed], ordered: [[...def.primaryKey], ...ordered] }
}

export const TABLES: readonly TableDef[] = [
  table({
    name: 'patient_records',
    columns: [int('patient_id'), varchar('patient_name', 150), date('date_of_birth'), varchar('gender', 10),
      secret('address', 100), secret('contact_number', 10), secret('email', 50), secret('allergies', 50, false)],
    primaryKey: ['patient_id'],
    shardKey: 'patient_id',
    references: [],
    ordered: [['patient_name']]
  }),
  table({
    name: 'doctors_info',
    columns: [int('doctor_id'), varchar('name', 150), varchar('specialization', 150), secret('contact_number', 10),
      secret('email', 50), varchar('availability', 150)],
    primaryKey: ['doctor_id'],
    shardKey: 'doctor_id',
    references: []
  }),
  table({
    name: 'appointments',
    columns: [int('appointment_id'), int('patient_id'), int('doctor_id'), timestamp('appointment_date'), varchar('purpose', 100)],
    primaryKey: ['appointment_id'],
    shardKey: 'doctor_id',
    references: [ref('patient_id', 'patient_records'), ref('doctor_id', 'doctors_info')],
    // A doctor's day in time order; every appointment by time; a patient's appointments
    ordered: [['doctor_id', 'appointment_date'], ['appointment_date'], ['patient_id', 'appointment_date']]
  }),
  table({
    name: 'medical_history',
    columns: [int('history_id'), int('patient_id'), secret('diagnosis', 200), secret('treatment', 200),
      timestamp('date_of_visit'), int('role_id', false)],
    primaryKey: ['history_id'],
    shardKey: 'patient_id',
    references: [ref('patient_id', 'patient_records'), ref('role_id', 'user_roles')],
    ordered: [['patient_id', 'date_of_visit'], ['date_of_visit']]
  }),
  table({
    name: 'medications',
    columns: [int('medication_id'), varchar('name', 20), varchar('dosage', 20), varchar('manufacturer', 100)],
    primaryKey: ['medication_id'],
    shardKey: 'medication_id',
    references: []
  }),
  table({
    name: 'billing_insurance',
    columns: [int('billing_id'), int('patient_id'), decimal('amount', 10, 2), date('date'),
      varchar('insurance_provider', 100), secret('insurance_policy_number', 50)],
    primaryKey: ['billing_id'],
    shardKey: 'patient_id',
    references: [ref('patient_id', 'patient_records')],
    ordered: [['patient_id', 'date'], ['date']]
  }),
  table({
    name: 'patient_medications',
    columns: [int('patient_id'), int('medication_id')],
    primaryKey: ['patient_id', 'medication_id'],
    shardKey: 'patient_id',
    references: [ref('patient_id', 'patient_records'), ref('medication_id', 'medications')]
  }),
  table({
    name: 'lab_results',
    columns: [int('result_id'), int('record_id'), int('patient_id'), varchar('test_name', 100), date('test_date'),
      secret('test_result', 200)],
    primaryKey: ['result_id'],
    shardKey: 'patient_id',
    references: [ref('record_id', 'medical_history', 'history_id'), ref('patient_id', 'patient_records')],
    ordered: [['patient_id', 'test_date'], ['test_date']]
  }),
  table({
    name: 'user_roles',
    columns: [int('role_id'), varchar('role_name', 50)],
    primaryKey: ['role_id'],
    shardKey: 'global',
    references: [],
    unique: ['role_name']
  }),
  table({
    name: 'users',
    // token_hash: SHA-256 (hex) of the user's bearer token, never answered on the socket; NULL for a
    // user without a token. revoked_at: set by a revoke, after which the token no longer works.
    columns: [int('user_id'), varchar('user_name', 50), int('role_id'), varchar('token_hash', 64, false), timestamp('revoked_at', false)],
    primaryKey: ['user_id'],
    shardKey: 'global',
    references: [ref('role_id', 'user_roles')],
    unique: ['user_name'],
    // Every request looks its token up by hash: an index, not a scan of every user.
    index: ['token_hash']
  })
]

const BY_NAME = new Map(TABLES.map(t => [t.name, t]))
const SENSITIVE = new Map(TABLES.map(t => [t.name, t.columns.filter(c => c.sensitive === true).map(c => c.name)]))
const NONE: readonly string[] = []

/** The table's sensitive columns (none for unknown and internal tables) */
export function sensitiveColumns (table: string): readonly string[] {
  return SENSITIVE.get(table) ?? NONE
}

export function findTable (name: string): TableDef | undefined {
  return BY_NAME.get(name)
}

/** Tables whose rows reference `table`, with the referencing column */
export function referencingTables (table: string): Array<{ table: TableDef, reference: Reference }> {
  const out: Array<{ table: TableDef, reference: Reference }> = []
  for (const t of TABLES) {
    for (const r of t.references) {
      if (r.table === table) out.push({ table: t, reference: r })
    }
  }
  return out
}
