/**
 * Roles and their rights, by table and by column (minimum necessary).
 *
 * The rights are a constant of the code, not rows of a table: they change
 * with the schema and the routes (a new table or route ships with its rule),
 * they are the same on every node at once with no replication lag, and no
 * token, however privileged, can widen them at run time or lock a network out
 * by damaging a rule row. The roles themselves are rows of the global
 * `user_roles` table (made when a network is created), and `GET /v1/roles`
 * (`ntsoekhe roles`) shows this map to those who may audit it.
 */
import { ForbiddenError } from '../errors/index.js'
import { TABLES, referencingTables, type TableDef } from '../schema/index.js'

/** Every column of the table, or the named ones */
export type Columns = '*' | readonly string[]

export interface TableRights {
  read?: Columns
  write?: Columns
}

export interface RoleRights {
  /** Every table and every right (the admin) */
  all?: true
  tables: Readonly<Record<string, TableRights>>
  /** Named rights of routes that are not table rows (see RIGHTS) */
  rights: readonly string[]
  /** May read any patient data table by stating a reason (X-Break-Glass) */
  breakGlass: boolean
}

/** Named rights that routes declare (`config: { access: '<right>' }`) */
export const RIGHTS = {
  /** Status, schema, peers, ring: no patient data */
  cluster: 'cluster:read',
  /** Remove a member, leave the network */
  membership: 'cluster:admin',
  /** Add, list and revoke users */
  users: 'users',
  /** Read this map */
  roles: 'roles',
  /** Read the audit trail */
  audit: 'audit',
  /** Export every row in full, identifiers included (an anonymized export needs only the read rights) */
  export: 'export',
  /** The right every route without a declaration needs: only the admin has it */
  admin: 'admin'
} as const

/** Columns no role reads or writes through the rows API, admins included */
export const HIDDEN_COLUMNS: Readonly<Record<string, readonly string[]>> = {
  users: ['token_hash']
}

/** The roles a new network is created with, and their ids there */
export const DEFAULT_ROLES: ReadonlyArray<{ id: number, name: string }> = [
  { id: 1, name: 'admin' },
  { id: 2, name: 'doctor' },
  { id: 3, name: 'nurse' },
  { id: 4, name: 'billing' },
  { id: 5, name: 'auditor' }
]

/** Tables of patient data a break-glass read may open */
export const PATIENT_TABLES = ['patient_records', 'appointments', 'medical_history', 'medications', 'patient_medications', 'lab_results', 'billing_insurance', 'doctors_info']

const RW = { read: '*', write: '*' } as const
const R = { read: '*' } as const

export const ROLE_RIGHTS: Readonly<Record<string, RoleRights>> = {
  admin: { all: true, tables: {}, rights: [], breakGlass: false },
  doctor: {
    tables: {
      patient_records: RW,
      appointments: RW,
      medical_history: RW,
      medications: RW,
      patient_medications: RW,
      lab_results: RW,
      doctors_info: RW,
      billing_insurance: R
    },
    rights: [RIGHTS.cluster],
    breakGlass: true
  },
  nurse: {
    tables: {
      patient_records: RW,
      appointments: RW,
      medications: RW,
      patient_medications: RW,
      medical_history: R,
      lab_results: R
    },
    rights: [RIGHTS.cluster],
    breakGlass: true
  },
  billing: {
    tables: {
      billing_insurance: RW,
      patient_records: { read: ['patient_id', 'patient_name', 'contact_number', 'email', 'address'] }
    },
    rights: [RIGHTS.cluster],
    breakGlass: false
  },
  auditor: {
    tables: {},
    rights: [RIGHTS.cluster, RIGHTS.audit, RIGHTS.roles],
    breakGlass: false
  }
}

function rightsOf (role: string): RoleRights | undefined {
  return Object.prototype.hasOwnProperty.call(ROLE_RIGHTS, role) ? ROLE_RIGHTS[role] : undefined
}

export function hasRight (role: string, right: string): boolean {
  const r = rightsOf(role)
  return r !== undefined && (r.all === true || r.rights.includes(right))
}

export function mayBreakGlass (role: string): boolean {
  return rightsOf(role)?.breakGlass === true
}

/** The columns `role` may read (or write) in `table`, in schema order; undefined when it has no such right */
export function columnsFor (role: string, table: TableDef, mode: 'read' | 'write'): string[] | undefined {
  const r = rightsOf(role)
  if (r === undefined) return undefined
  const hidden = HIDDEN_COLUMNS[table.name] ?? []
  const all = table.columns.map(c => c.name).filter(c => !hidden.includes(c))
  if (r.all === true) return all
  const t = Object.prototype.hasOwnProperty.call(r.tables, table.name) ? r.tables[table.name] : undefined
  const cols = t?.[mode]
  if (cols === undefined) return undefined
  return cols === '*' ? all : all.filter(c => cols.includes(c))
}

/** Every column of a patient data table (a break-glass read); undefined for other tables */
export function breakGlassColumns (table: TableDef): string[] | undefined {
  if (!PATIENT_TABLES.includes(table.name)) return undefined
  const hidden = HIDDEN_COLUMNS[table.name] ?? []
  return table.columns.map(c => c.name).filter(c => !hidden.includes(c))
}

/** Throws ForbiddenError unless `role` may write each of `columns` of `table` */
export function assertWritable (role: string, table: TableDef, columns: Iterable<string>): void {
  const allowed = columnsFor(role, table, 'write')
  if (allowed === undefined) throw new ForbiddenError(`Role ${role} may not write table ${table.name}`)
  for (const c of columns) {
    // An unknown column is the schema's error (400), raised by validation.
    if (!table.columns.some(col => col.name === c)) continue
    if (!allowed.includes(c)) throw new ForbiddenError(`Role ${role} may not write column ${c} of ${table.name}`, { column: c })
  }
}

/**
 * Tables a cascading delete from `table` may reach (rows referencing it, and
 * rows referencing those): the writer needs the write right on each.
 */
export function cascadeTables (table: TableDef): TableDef[] {
  const seen = new Map<string, TableDef>()
  const walk = (t: TableDef): void => {
    for (const { table: ref } of referencingTables(t.name)) {
      if (seen.has(ref.name)) continue
      seen.set(ref.name, ref)
      walk(ref)
    }
  }
  walk(table)
  return [...seen.values()]
}

/** The map as `GET /v1/roles` shows it: column lists spelled out for every table a role may use */
export function describeRoles (): Array<{ role: string, tables: Record<string, { read: string[], write: string[] }>, rights: string[], breakGlass: boolean }> {
  return Object.entries(ROLE_RIGHTS).map(([role, r]) => {
    const tables: Record<string, { read: string[], write: string[] }> = {}
    for (const t of TABLES) {
      const read = columnsFor(role, t, 'read') ?? []
      const write = columnsFor(role, t, 'write') ?? []
      if (read.length > 0 || write.length > 0) tables[t.name] = { read, write }
    }
    return { role, tables, rights: r.all === true ? ['*'] : [...r.rights], breakGlass: r.breakGlass }
  })
}

/** Keeps only `columns` of a row (absent, not blanked) */
export function project<T extends Record<string, unknown> | null> (row: T, columns: readonly string[]): T {
  if (row === null) return row
  const out: Record<string, unknown> = {}
  for (const c of columns) {
    if (Object.prototype.hasOwnProperty.call(row, c)) out[c] = row[c]
  }
  return out as T
}
