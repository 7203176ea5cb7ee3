import { createHash } from 'node:crypto'
import { createRequire } from 'node:module'
import { Worker } from 'node:worker_threads'
import { fromString, toString } from 'uint8arrays'
import { ForbiddenError, ValidationError } from '../errors/index.js'
import { CONSISTENCY_LEVELS, type Consistency, type RequestOptions } from '../cluster/coordinator.js'
import { allOf, columnOf, compareValues, conjuncts, MAX_CONDITION_DEPTH, MAX_CONDITION_ITEMS, satisfies, type Comparison, type Condition } from '../schema/condition.js'
import { findTable, type Row, type TableDef, type Value } from '../schema/index.js'
import { planRows, type RowPlan } from '../storage/ordered.js'
import { singleShardOf } from '../cluster/query-merge.js'
import { MAX_LIMIT, typedValue, type Database } from './database.js'
import { finish, keyOf, MAX_FRAGMENT_ROWS, MAX_JOINS, type AggregateFn, type Fragment, type FragmentColumn, type Partial } from './fragment.js'

// node-sql-parser ships CommonJS; its PostgreSQL grammar builds the AST this module reads. It backtracks
// without memory, so on some malformed statements (a value inside 20 unclosed parentheses) its work doubles
// with each parenthesis: it runs in a worker thread, given PARSE_TIMEOUT_MS, so no statement holds the
// event loop (and a slow one is refused, its worker replaced).
const PARSER_MODULE = createRequire(import.meta.url).resolve('node-sql-parser')
const PARSER_WORKER = `
const { parentPort, workerData } = require('node:worker_threads')
const { Parser } = require(workerData.parser)
const parser = new Parser()
parentPort.on('message', ({ sql }) => {
  try {
    parentPort.postMessage({ ast: parser.astify(sql, { database: 'postgresql' }) })
    return
  } catch (err) {
    // A parse error, or a tree too deep to send back
    parentPort.postMessage({ error: { message: String(err && err.message), found: err && err.found, location: err && err.location } })
  }
})
`
/** Longest a statement may take to parse (a 64 KiB statement of the subset takes well under a second; a busy machine may take several) */
const PARSE_TIMEOUT_MS = 10_000

/** A parse error as the worker sends it back */
interface ParseFailure { message: string, found?: unknown, location?: { start?: { line?: number, column?: number } } }

/** A statement waiting for the parser, and its answer's callbacks */
interface ParseJob { sql: string, resolve: (ast: unknown) => void, reject: (err: ParseFailure | Error) => void }

/** Statements to parse, in order: the first is the one the worker is at (one at a time, so each has its own time) */
const parseQueue: ParseJob[] = []
let parserWorker: Worker | undefined
let parseTimer: NodeJS.Timeout | undefined

/** The parser's worker thread, started when first needed (or again after one was stopped) */
function parser (): Worker {
  if (parserWorker !== undefined) return parserWorker
  const w = new Worker(PARSER_WORKER, { eval: true, workerData: { parser: PARSER_MODULE } })
  parserWorker = w
  w.on('message', (m: { ast?: unknown, error?: ParseFailure }) => {
    if (parserWorker !== w) return
    const job = parseQueue.shift()
    clearTimeout(parseTimer)
    if (m.error !== undefined) job?.reject(m.error)
    else job?.resolve(m.ast)
    nextParse()
  })
  w.on('error', err => {
    if (parserWorker !== w) return
    // A crash fails the statement it was at; the others go to a new worker.
    parserWorker = undefined
    clearTimeout(parseTimer)
    parseQueue.shift()?.reject(err)
    nextParse()
  })
  w.on('exit', () => {
    if (parserWorker !== w) return
    parserWorker = undefined
    clearTimeout(parseTimer)
    parseQueue.shift()?.reject(new Error('the parser stopped'))
    nextParse()
  })
  return w
}

/** Sends the first waiting statement to the worker, with PARSE_TIMEOUT_MS to answer (the worker is idle: unreferenced) */
function nextParse (): void {
  const job = parseQueue[0]
  if (job === undefined) {
    parserWorker?.unref()
    return
  }
  const w = parser()
  w.ref()
  w.postMessage({ sql: job.sql })
  parseTimer = setTimeout(() => {
    // The worker is still at it: it is stopped (a new one takes the statements after).
    parserWorker = undefined
    void w.terminate()
    parseQueue.shift()?.reject(new ValidationError(`SQL: cannot parse the statement within ${PARSE_TIMEOUT_MS / 1000} s (some malformed nestings of parentheses make the parser try every reading): check its parentheses`))
    nextParse()
  }, PARSE_TIMEOUT_MS)
}

/** node-sql-parser's AST of a statement, from the worker, or a refusal after PARSE_TIMEOUT_MS of parsing */
async function astify (sql: string): Promise<unknown> {
  return await new Promise((resolve, reject) => {
    parseQueue.push({ sql, resolve, reject })
    if (parseQueue.length === 1) nextParse()
  })
}

/** Most rows an OFFSET may skip (each is read to be skipped; `next` pages on without reading them again) */
export const MAX_GATHERED_ROWS = 100_000

export interface SqlAnswer {
  columns: string[]
  rows: Value[][]
  next: string | null
}

/** What the caller may do, per table: the columns it reads (a ForbiddenError: no read right) and the write check */
export interface SqlAccess {
  readable: (table: TableDef) => readonly string[]
  writable: (table: TableDef, columns: string[]) => void
  /** The caller reads through break-glass: a SELECT must fix one patient */
  widened?: (table: TableDef) => boolean
  /** Notes what the statement touched, for the audit trail */
  note?: (n: { action: 'list' | 'insert' | 'update' | 'delete', table: string, id?: string, patientId?: string, columns?: string[] }) => void
}

/** A refusal that names the SQL construct outside the subset */
function unsupported (construct: string): never {
  throw new ValidationError(`SQL: ${construct} is not supported (see README, Queries and SQL)`)
}

/** Turns `$n` placeholders and literals into values; `params` are bound, never spliced */
class Binder {
  constructor (private readonly params: readonly unknown[]) {}
  value (node: any): Value {
    if (node === null || typeof node !== 'object') unsupported('this expression')
    switch (node.type) {
      case 'number': return Number(node.value)
      case 'single_quote_string':
      case 'string':
        return String(node.value)
      case 'null': return null
      // No column is boolean: TRUE would be taken as 1 (PostgreSQL refuses integer = boolean).
      case 'bool': return unsupported(`the boolean ${node.value === true ? 'TRUE' : 'FALSE'} (no column is boolean)`)
      case 'var': {
        if (node.prefix !== '$' || typeof node.name !== 'number') unsupported(`the placeholder ${String(node.prefix ?? '')}${String(node.name)}`)
        const i = node.name - 1
        if (i < 0 || i >= this.params.length) throw new ValidationError(`SQL: $${String(node.name)} has no parameter (${this.params.length} given)`)
        const v = this.params[i]
        if (v === null || typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v))) return v
        throw new ValidationError(`SQL: parameter $${String(node.name)} must be a string, a number or null`)
      }
      case 'unary_expr':
        if (node.operator === '-' && node.expr?.type === 'number') return -Number(node.expr.value)
        return unsupported(`the operator ${String(node.operator)}`)
      default:
        return unsupported(`a ${String(node.type).replace(/_/g, ' ')} where a value belongs`)
    }
  }
}

/** A statement as parsed: the one statement, its SET consistency, whether EXPLAINed, and how many `$n` it takes (the highest n) */
export interface ParsedStatement { statement: any, consistency?: Consistency, explain: boolean, params: number }

/** Parses one statement (or SETs then one statement) with node-sql-parser; a SET gives the consistency */
export async function parseStatements (sql: string): Promise<ParsedStatement> {
  if (typeof sql !== 'string' || sql.trim() === '') throw new ValidationError('SQL: the statement is empty')
  if (sql.length > MAX_SQL) throw new ValidationError(`SQL: a statement of at most ${MAX_SQL} characters`)
  // A statement is sent again and again with other parameters: parsed once (the tree is only read).
  let parsed = PARSED.get(sql)
  if (parsed === undefined) {
    parsed = await parseOnce(sql)
    if (PARSED.size >= PARSED_MAX) PARSED.clear()
    PARSED.set(sql, parsed)
  }
  return parsed
}

/** Statements parsed lately (see parseStatements) */
const PARSED = new Map<string, ParsedStatement>()
const PARSED_MAX = 512
/** Longest statement taken, characters */
const MAX_SQL = 64 * 1024

async function parseOnce (sql: string): Promise<ParsedStatement> {
  // EXPLAIN is not in the parser's PostgreSQL grammar: the leading keyword is taken off and the rest parsed.
  const trimmed = sql.trimStart()
  const explain = trimmed.slice(0, 7).toUpperCase() === 'EXPLAIN' && (trimmed.length === 7 || ' \t\r\n'.includes(trimmed[7] as string))
  let ast: any
  try {
    ast = await astify(explain ? trimmed.slice(7) : sql)
  } catch (err) {
    if (err instanceof ValidationError) throw err
    // The parser lists every token it could have taken; where it stopped says more.
    const e = err as ParseFailure
    const at = e.location?.start
    if (at?.line !== undefined && at.column !== undefined) {
      throw new ValidationError(`SQL: cannot parse: ${e.found === null || e.found === undefined ? 'the statement ends too soon' : `unexpected ${JSON.stringify(e.found)}`} at line ${at.line}, column ${at.column}`)
    }
    throw new ValidationError(`SQL: cannot parse: ${e.message.split('\n')[0] ?? ''}`)
  }
  const list = Array.isArray(ast) ? ast : [ast]
  let consistency: Consistency | undefined
  const rest: any[] = []
  for (const s of list) {
    if (s?.type === 'set') {
      if (rest.length > 0) unsupported('SET after the statement (SET comes first)')
      for (const e of s.expr ?? []) {
        const name = String(e?.left?.name ?? '').toLowerCase()
        if (name !== 'consistency') unsupported(`SET ${name}`)
        // A quoted level or a bare word (SET consistency = one), in any case.
        const right = e?.right
        const v = String(right?.type === 'var' && right.prefix === null && typeof right.name === 'string' ? right.name : right?.value ?? '').toLowerCase()
        if (!CONSISTENCY_LEVELS.includes(v as Consistency)) throw new ValidationError(`SQL: consistency must be one of ${CONSISTENCY_LEVELS.join(', ')}`)
        consistency = v as Consistency
      }
    } else {
      rest.push(s)
    }
  }
  // Nothing but comments or semicolons (or a bare EXPLAIN) parses to no statement, or to an empty one.
  if (rest.length === 1 && rest[0]?.type == null) rest.pop()
  if (rest.length === 0 && list.every(s => s?.type !== 'set')) throw new ValidationError('SQL: the statement is empty')
  if (rest.length !== 1) throw new ValidationError(rest.length === 0 ? 'SQL: SET needs a statement after it' : 'SQL: one statement at a time (after any SETs)')
  return { statement: rest[0], ...(consistency === undefined ? {} : { consistency }), explain, params: placeholders(rest[0]) }
}

/** The highest `$n` a parsed statement names (0: none); walked without recursion, as a long OR chain nests deep */
function placeholders (root: unknown): number {
  let most = 0
  const stack: unknown[] = [root]
  while (stack.length > 0) {
    const node = stack.pop()
    if (node === null || typeof node !== 'object') continue
    const n = node as Record<string, unknown>
    if (n.type === 'var' && n.prefix === '$' && typeof n.name === 'number') most = Math.max(most, n.name)
    for (const v of Object.values(n)) if (v !== null && typeof v === 'object') stack.push(v)
  }
  return most
}

/**
 * Runs one SQL statement of the subset against the database: SELECT
 * (one table, or several joined on the patient or doctor key they share,
 * or to global tables), paged by `cursor`,
 * INSERT, UPDATE and DELETE by key, EXPLAIN SELECT. Anything else is a 400
 * naming the construct.
 */
export async function runSql (db: Database, sql: string, params: readonly unknown[], access: SqlAccess, options: RequestOptions = {}, cursor?: string): Promise<SqlAnswer> {
  if (!Array.isArray(params)) throw new ValidationError('SQL: params must be an array')
  const { statement, consistency, explain, params: wanted } = await parseStatements(sql)
  // As PostgreSQL's bind: each $n has its value, and no value is left over.
  if (params.length !== wanted) throw new ValidationError(`SQL: the statement takes ${wanted} parameter${wanted === 1 ? '' : 's'}${wanted === 0 ? '' : ` ($1${wanted > 1 ? `..$${wanted}` : ''})`}, ${params.length} given`)
  if (cursor !== undefined && (statement.type !== 'select' || explain)) throw new ValidationError('SQL: a cursor continues a SELECT')
  const opts: RequestOptions = consistency === undefined ? options : { ...options, consistency }
  const bind = new Binder(params)
  if (explain && statement.type !== 'select') unsupported(`EXPLAIN ${String(statement.type).toUpperCase()}`)
  switch (statement.type) {
    case 'select': {
      const select = shallow(() => buildSelect(statement, bind, access))
      if (explain) return await explainSelect(db, select)
      return await runSelect(db, select, access, opts, stampOf(sql, params), cursor)
    }
    case 'insert': return await runInsert(db, statement, bind, access, opts)
    case 'update': return await runUpdate(db, statement, bind, access, opts)
    case 'delete': return await runDelete(db, statement, bind, access, opts)
    default: return unsupported(String(statement.type).toUpperCase())
  }
}

/** Runs a step over the parsed tree, refusing a statement nested past the stack's depth (never a 500) */
function shallow<T> (step: () => T): T {
  try {
    return step()
  } catch (err) {
    if (err instanceof RangeError) throw new ValidationError('SQL: the statement nests its expressions too deeply')
    throw err
  }
}

function tableOf (name: unknown): TableDef {
  const t = typeof name === 'string' ? findTable(name) : undefined
  if (t === undefined) throw new ValidationError(`SQL: unknown table ${String(name)}`)
  return t
}

interface Source { table: TableDef, alias: string }
interface ColumnRef { source: Source, column: string }
type Aggregate = AggregateFn
interface AggregateRef { fn: Aggregate, ref?: ColumnRef }
type Item = { kind: 'column', ref: ColumnRef, name: string } | { kind: 'aggregate', agg: number, name: string }
/** A grouped query's values of one group: its GROUP BY columns, then each of `Select.aggregates` */
type Slots = Value[]
/** HAVING over one group's slots: true, false or unknown (a NULL met), as SQL's three-valued logic */
type HavingTest = (slots: Slots) => boolean | null
/** An output item, a table column (plain rows) or a slot (grouped rows) */
type OrderKey = { item: number } | { ref: ColumnRef } | { slot: number }

interface Select {
  /** In FROM's order */
  sources: Source[]
  /** The table the owners read first: the first placed by a key (a global one only when all are) */
  driver: Source
  /** The others, in the order the owners join them, each on a column of one before it */
  joins: Array<{ source: Source, column: string, on: ColumnRef }>
  items: Item[]
  /** Every aggregate named: the output's, then those only HAVING or ORDER BY name */
  aggregates: AggregateRef[]
  /** Per source, the conditions only it names; a condition over several is refused */
  where: Map<Source, Condition | undefined>
  groupBy: ColumnRef[]
  aggregated: boolean
  having?: HavingTest
  orderBy: Array<{ key: OrderKey, desc: boolean }>
  limit?: number
  offset: number
}

const AGGREGATES: readonly string[] = ['COUNT', 'SUM', 'AVG', 'MIN', 'MAX']
const COMPARISONS: readonly string[] = ['=', '<>', '!=', '<', '<=', '>', '>=']

/** Rows one answer holds at most; `next` continues after them */
export const SQL_PAGE = MAX_LIMIT

/** A function call's name as written */
function functionName (node: any): string {
  return String(node?.name?.name?.map((n: any) => n?.value).join('.') ?? node?.name ?? '').toUpperCase()
}

/** What a node is, in words, for a refusal */
function describe (node: any): string {
  if (node?.type === 'function') return `the function ${functionName(node)}()`
  if (node?.type === 'aggr_func') return `the aggregate ${String(node.name).toUpperCase()}`
  if (node?.type === 'binary_expr') return `an expression with ${String(node.operator)}`
  if (node?.ast != null || node?.type === 'select') return 'a subquery'
  return `a ${String(node?.type ?? 'missing').replace(/_/g, ' ')}`
}

/** The table or alias a column reference is qualified with (the parser gives a name or a node) */
function qualifier (t: any): string | undefined {
  if (t === null || t === undefined) return undefined
  return typeof t === 'string' ? t : String(t.value ?? t)
}

/** Refuses the SELECT clauses outside the subset */
function refuseOutside (ast: any): void {
  if (ast.with != null) unsupported('WITH (a common table expression)')
  if (ast.distinct?.type != null) unsupported('DISTINCT')
  if (ast.window != null) unsupported('WINDOW')
  if (ast._next != null || ast.set_op != null) unsupported(String(ast.set_op ?? 'UNION').toUpperCase())
  if (ast.into?.position != null) unsupported('SELECT ... INTO')
}

/** Finds the column a reference names among the sources, checking the caller may read it */
function resolver (sources: Source[], access: SqlAccess): (node: any) => ColumnRef {
  return (node: any): ColumnRef => {
    if (node?.type !== 'column_ref') unsupported(`${describe(node)} where a column belongs`)
    if (node.collate != null) unsupported('COLLATE')
    const name = String(node.column?.expr?.value ?? node.column)
    const table = qualifier(node.table)
    const candidates = table === undefined ? sources : sources.filter(s => s.alias === table)
    if (table !== undefined && candidates.length === 0) throw new ValidationError(`SQL: unknown table or alias ${table}`)
    const found = candidates.filter(s => s.table.columns.some(c => c.name === name))
    if (found.length === 0) throw new ValidationError(`SQL: unknown column ${table === undefined ? '' : `${table}.`}${name}`, { column: name })
    if (found.length > 1) throw new ValidationError(`SQL: column ${name} is ambiguous: name its table`, { column: name })
    const source = found[0] as Source
    // A column the caller may not read is a 403 wherever it is named.
    if (!access.readable(source.table).includes(name)) throw new ForbiddenError(`You may not read column ${name} of ${source.table.name}`, { column: name })
    return { source, column: name }
  }
}

/**
 * The order the owners join the tables in: from the first table placed by a
 * key (the driver), each next one by the ON that links it to one already
 * joined. A table placed by a key joins only on that key, shared with the
 * driver's (so its rows live on the same owners); a global table joins on
 * any column both hold.
 */
function planJoins (from: any[], sources: Source[], resolve: (n: any) => ColumnRef): { driver: Source, joins: Select['joins'] } {
  const edges: Array<[ColumnRef, ColumnRef]> = []
  for (const [i, f] of from.entries()) {
    if (i === 0) continue
    const self = sources[i] as Source
    const kind = String(f.join ?? '').toUpperCase()
    if (kind === '') unsupported('a comma join (FROM a, b): use JOIN ... ON a.key = b.key')
    if (kind !== 'JOIN' && kind !== 'INNER JOIN') unsupported(kind)
    if (f.using != null) unsupported('JOIN ... USING: use ON a.key = b.key')
    const on = f.on
    if (on?.type !== 'binary_expr' || on.operator !== '=' || on.left?.type !== 'column_ref' || on.right?.type !== 'column_ref') {
      unsupported('a join condition other than one shared key (ON a.key = b.key)')
    }
    const a = resolve(on.left)
    const b = resolve(on.right)
    if (a.source !== self && b.source !== self) unsupported(`a JOIN ${self.alias} whose ON does not name ${self.alias}`)
    const other = a.source === self ? b : a
    if (other.source === self) unsupported('a join condition within one table')
    if (sources.indexOf(other.source) > i) unsupported(`a join condition naming ${other.source.alias} before it is joined`)
    if (a.column !== b.column) unsupported(`a join on two different columns (${a.column}, ${b.column}): tables join on the key they share`)
    edges.push([a, b])
  }
  const driver = sources.find(s => s.table.shardKey !== 'global') ?? sources[0] as Source
  const key = driver.table.shardKey
  const placed = new Set<Source>([driver])
  const joins: Select['joins'] = []
  // Each JOIN's ON links it to one before it: the edges form a tree, walked from the driver.
  while (edges.length > 0) {
    const at = edges.findIndex(([a, b]) => placed.has(a.source) !== placed.has(b.source))
    if (at < 0) unsupported('a join condition that links no table to the others')
    const [a, b] = edges.splice(at, 1)[0] as [ColumnRef, ColumnRef]
    const [on, x] = placed.has(a.source) ? [a, b] : [b, a]
    const t = x.source.table
    const colocated = t.shardKey === 'global' || (t.shardKey === x.column && key === x.column && on.source.table.shardKey === x.column)
    if (!colocated) {
      unsupported(`a join of ${on.source.table.name} and ${t.name} on ${x.column}, which does not place both on the same owners (tables join on the patient_id or doctor_id that places them all, or to a global table)`)
    }
    placed.add(x.source)
    joins.push({ source: x.source, column: x.column, on })
  }
  return { driver, joins }
}

function buildSelect (ast: any, bind: Binder, access: SqlAccess): Select {
  refuseOutside(ast)
  const from: any[] = ast.from ?? []
  if (from.length === 0) unsupported('SELECT without FROM')
  if (from.length > MAX_JOINS + 1) unsupported(`a join of more than ${MAX_JOINS + 1} tables`)
  const sources: Source[] = from.map((f: any) => {
    if (f.expr != null) unsupported('a subquery in FROM')
    if (f.db != null && f.db !== 'public') throw new ValidationError(`SQL: unknown schema ${String(f.db)} (the tables are in public)`)
    if (f.tablesample != null) unsupported('TABLESAMPLE')
    const table = tableOf(f.table)
    // Every table named is read (COUNT(*) and EXPLAIN name none of its columns): asking for its columns
    // is the check that the role may read it (a 403 when not).
    access.readable(table)
    return { table, alias: String(f.as ?? f.table) }
  })
  for (const [i, s] of sources.entries()) if (sources.findIndex(o => o.alias === s.alias) !== i) unsupported(`${s.alias} named twice in FROM without an alias of its own`)
  const resolve = resolver(sources, access)
  const { driver, joins } = planJoins(from, sources, resolve)
  const aggregates: AggregateRef[] = []
  const aggregateOf = (e: any): number => {
    const fn = String(e.name).toUpperCase()
    if (e.over != null) unsupported(`the window function ${fn}(...) OVER`)
    if (!AGGREGATES.includes(fn)) unsupported(`the aggregate ${fn}`)
    if (e.args?.distinct != null) unsupported(`${fn}(DISTINCT ...)`)
    if (e.filter != null) unsupported(`${fn}(...) FILTER`)
    const arg = e.args?.expr
    const ref = arg?.type === 'star' ? undefined : resolve(arg)
    if (ref === undefined && fn !== 'COUNT') unsupported(`${fn}(*)`)
    if (ref !== undefined && (fn === 'SUM' || fn === 'AVG')) {
      const type = columnOf(ref.source.table, ref.column).type
      if (type !== 'INT' && type !== 'DECIMAL') unsupported(`${fn} of the ${type} column ${ref.column}`)
    }
    let at = aggregates.findIndex(a => a.fn === fn && a.ref?.source === ref?.source && a.ref?.column === ref?.column)
    if (at < 0) {
      at = aggregates.length
      aggregates.push({ fn: fn as Aggregate, ...(ref === undefined ? {} : { ref }) })
    }
    return at
  }
  const items: Item[] = []
  for (const c of ast.columns === '*' ? [{ expr: { type: 'star' } }] : ast.columns ?? []) {
    const e = c.expr
    if (e?.type === 'column_ref' && (e.column === '*' || e.column?.expr?.value === '*')) {
      const named = qualifier(e.table)
      const of = sources.filter(s => named === undefined || s.alias === named)
      if (of.length === 0) throw new ValidationError(`SQL: unknown table or alias ${String(named)}`)
      for (const s of of) for (const col of access.readable(s.table)) items.push({ kind: 'column', ref: { source: s, column: col }, name: col })
      continue
    }
    if (e?.type === 'star') {
      for (const s of sources) for (const col of access.readable(s.table)) items.push({ kind: 'column', ref: { source: s, column: col }, name: col })
      continue
    }
    if (e?.type === 'aggr_func') {
      const agg = aggregateOf(e)
      items.push({ kind: 'aggregate', agg, name: String(c.as ?? String(e.name).toLowerCase()) })
      continue
    }
    const ref = resolve(e)
    items.push({ kind: 'column', ref, name: String(c.as ?? ref.column) })
  }
  const where = buildWhere(ast.where, sources, joins, resolve, bind)
  const groupBy: ColumnRef[] = (ast.groupby?.columns ?? (Array.isArray(ast.groupby) ? ast.groupby : [])).map((g: any) => {
    if (g?.type !== 'number') return resolve(g)
    const item = items[Number(g.value) - 1]
    if (item?.kind !== 'column') throw new ValidationError(`SQL: GROUP BY ${String(g.value)} names no output column`)
    return item.ref
  })
  const aggregated = aggregates.length > 0 || groupBy.length > 0 || ast.having != null || (ast.orderby ?? []).some((o: any) => o?.expr?.type === 'aggr_func')
  const groupSlot = (ref: ColumnRef): number => groupBy.findIndex(g => g.source === ref.source && g.column === ref.column)
  if (aggregated) {
    for (const i of items) {
      if (i.kind === 'column' && groupSlot(i.ref) < 0) throw new ValidationError(`SQL: column ${i.ref.column} must be in GROUP BY or inside an aggregate`, { column: i.ref.column })
    }
  }
  /** A grouped query's slot for an output item */
  const itemSlot = (i: Item): number => i.kind === 'aggregate' ? groupBy.length + i.agg : groupSlot(i.ref)
  const itemNamed = (e: any): number => e?.type === 'column_ref' && e.table == null ? items.findIndex(i => i.name === String(e.column?.expr?.value ?? e.column)) : -1
  let having: HavingTest | undefined
  if (ast.having != null) {
    having = buildHaving(ast.having, {
      slot: e => {
        if (e?.type === 'aggr_func') return groupBy.length + aggregateOf(e)
        if (e?.type !== 'column_ref') return undefined
        // A name no table has may be an output column's (HAVING visits > 2).
        const name = String(e.column?.expr?.value ?? e.column)
        if (e.table == null && !sources.some(s => s.table.columns.some(c => c.name === name)) && itemNamed(e) >= 0) return itemSlot(items[itemNamed(e)] as Item)
        const ref = resolve(e)
        const at = groupSlot(ref)
        if (at < 0) throw new ValidationError(`SQL: column ${ref.column} in HAVING must be in GROUP BY or inside an aggregate`, { column: ref.column })
        return at
      },
      info: slot => slotInfo(slot, groupBy, aggregates)
    }, bind)
  }
  const orderBy: Select['orderBy'] = (ast.orderby ?? []).map((o: any) => {
    const desc = String(o.type ?? 'ASC').toUpperCase() === 'DESC'
    // NULLs sort last ascending, first descending (PostgreSQL's default); the other way is refused.
    const nulls = String(o.nulls ?? '').toUpperCase().replace(/\s+/g, ' ')
    if (nulls !== '' && nulls !== (desc ? 'NULLS FIRST' : 'NULLS LAST')) unsupported(`ORDER BY ... ${desc ? 'DESC' : 'ASC'} ${nulls}`)
    const e = o.expr
    let item: number
    if (e?.type === 'number') {
      item = Number(e.value) - 1
      if (!Number.isInteger(item) || item < 0 || item >= items.length) throw new ValidationError(`SQL: ORDER BY ${String(e.value)} names no output column`)
    } else {
      item = itemNamed(e)
    }
    if (!aggregated) return { key: item >= 0 ? { item } : { ref: resolve(e) }, desc }
    if (item >= 0) return { key: { slot: itemSlot(items[item] as Item) }, desc }
    if (e?.type === 'aggr_func') return { key: { slot: groupBy.length + aggregateOf(e) }, desc }
    const at = groupSlot(resolve(e))
    if (at < 0) unsupported('ORDER BY a column neither in GROUP BY nor inside an aggregate')
    return { key: { slot: at }, desc }
  })
  const { limit, offset } = limitOf(ast, bind)
  return { sources, driver, joins, items, aggregates, where, groupBy, aggregated, ...(having === undefined ? {} : { having }), orderBy, ...(limit === undefined ? {} : { limit }), offset }
}

/** LIMIT and OFFSET, in either order (LIMIT ALL is no limit) */
function limitOf (ast: any, bind: Binder): { limit?: number, offset: number } {
  const whole = (node: any, what: string): number | undefined => {
    if (node?.type === 'origin' && String(node.value).toUpperCase() === 'ALL' && what === 'LIMIT') return undefined
    const raw = bind.value(node)
    const n = typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : raw
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new ValidationError(`SQL: ${what} must be a whole number`)
    return n
  }
  let limit: number | undefined
  let offset = 0
  const values: any[] = ast.limit?.value ?? []
  if (values.length === 2) {
    limit = whole(values[0], 'LIMIT')
    offset = whole(values[1], 'OFFSET') ?? 0
  } else if (values.length === 1) {
    if (String(ast.limit?.seperator ?? '').toLowerCase() === 'offset') offset = whole(values[0], 'OFFSET') ?? 0
    else limit = whole(values[0], 'LIMIT')
  }
  // OFFSET written before LIMIT: the parser keeps the LIMIT apart (and takes a second LIMIT or OFFSET there too).
  const later: any[] = ast._limit?.value ?? []
  if (later.length > 0) {
    const offsetFirst = values.length === 1 && String(ast.limit?.seperator ?? '').toLowerCase() === 'offset'
    if (!offsetFirst || later.length !== 1 || String(ast._limit?.seperator ?? '').toLowerCase() === 'offset') throw new ValidationError('SQL: LIMIT or OFFSET given twice')
    limit = whole(later[0], 'LIMIT')
  }
  return { ...(limit === undefined ? {} : { limit }), offset }
}

/** The table and column a slot's values compare as (none: a count, sum or average, compared as numbers) */
function slotInfo (slot: number, groupBy: ColumnRef[], aggregates: AggregateRef[]): ColumnRef | undefined {
  if (slot < groupBy.length) return groupBy[slot]
  const a = aggregates[slot - groupBy.length]
  return a !== undefined && (a.fn === 'MIN' || a.fn === 'MAX') ? a.ref : undefined
}

/** Compares two slot values as their column orders them (NULL unknown) */
function compareSlot (info: ColumnRef | undefined, x: Value, y: Value): number | null {
  if (x === null || y === null) return null
  if (info !== undefined) return compareValues(columnOf(info.source.table, info.column), x, y)
  return Number(x) - Number(y)
}

/** The WHERE's conditions per table; a shard key fixed on one joined table is fixed on those joined on it */
function buildWhere (node: any, sources: Source[], joins: Select['joins'], resolve: (n: any) => ColumnRef, bind: Binder): Map<Source, Condition | undefined> {
  const per = new Map<Source, Condition[]>(sources.map(s => [s, []]))
  if (node != null) {
    for (const p of flattenAnd(node)) {
      const { cond, source } = buildCondition(p, resolve, bind)
      per.get(source)?.push(cond)
    }
  }
  // An inner join on equal keys: a key one side fixes by `=`, the other side has too (so a chart whose
  // WHERE names h.patient_id still asks one replica set).
  for (let changed = true; changed;) {
    changed = false
    for (const j of joins) {
      const sides: Array<[ColumnRef, ColumnRef]> = [[j.on, { source: j.source, column: j.column }], [{ source: j.source, column: j.column }, j.on]]
      for (const [a, b] of sides) {
        const fixed = (per.get(a.source) ?? []).find(c => c.op === '=' && c.column === a.column && c.value !== null)
        const target = per.get(b.source) as Condition[]
        if (fixed === undefined || !('value' in fixed) || target.some(c => c.op === '=' && c.column === b.column)) continue
        target.push({ op: '=', column: b.column, value: typedValue(b.source.table, b.column, fixed.value) })
        changed = true
      }
    }
  }
  const where = new Map(sources.map(s => [s, allOf(per.get(s) ?? [])]))
  // The owners take conditions of a bounded size (see checkCondition): a larger one is refused here, on one node as on many.
  for (const c of where.values()) if (c !== undefined) checkSize(c)
  return where
}

/** Refuses a condition deeper or wider than a peer takes */
function checkSize (c: Condition, depth = 0): void {
  if (depth > MAX_CONDITION_DEPTH) throw new ValidationError(`SQL: a WHERE nested more than ${MAX_CONDITION_DEPTH} deep`)
  if ((c.op === 'and' || c.op === 'or') && c.args.length > MAX_CONDITION_ITEMS) throw new ValidationError(`SQL: more than ${MAX_CONDITION_ITEMS} conditions joined by ${c.op.toUpperCase()}`)
  if (c.op === 'in' && c.values.length > MAX_CONDITION_ITEMS) throw new ValidationError(`SQL: more than ${MAX_CONDITION_ITEMS} values in one IN`)
  if (c.op === 'and' || c.op === 'or') for (const a of c.args) checkSize(a, depth + 1)
  if (c.op === 'not') checkSize(c.arg, depth + 1)
}

/** HAVING as a test of a group's slots: AND, OR, NOT of comparisons, BETWEEN, IN and IS [NOT] NULL over aggregates and group columns */
function buildHaving (node: any, ctx: { slot: (n: any) => number | undefined, info: (slot: number) => ColumnRef | undefined }, bind: Binder): HavingTest {
  type Operand = { slot: number } | { value: Value }
  const operand = (n: any): Operand => {
    const slot = ctx.slot(n)
    if (slot !== undefined) return { slot }
    if (n?.type === 'function' || n?.type === 'binary_expr' || n?.ast != null) unsupported(`${describe(n)} in HAVING`)
    return { value: bind.value(n) }
  }
  /** A literal typed as the slot it meets */
  const typed = (slot: number, v: Value): Value => {
    if (v === null) return null
    const info = ctx.info(slot)
    if (info !== undefined) return typedValue(info.source.table, info.column, v)
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v
    if (typeof n !== 'number' || !Number.isFinite(n)) throw new ValidationError(`SQL: HAVING compares a count, sum or average with ${JSON.stringify(v)}, not a number`)
    return n
  }
  const valueOf = (o: Operand, slots: Slots): Value => 'slot' in o ? slots[o.slot] ?? null : o.value
  const build = (n: any): HavingTest => {
    if ((n?.type === 'unary_expr' && String(n.operator).toUpperCase() === 'NOT') || (n?.type === 'function' && functionName(n) === 'NOT')) {
      const arg = build(n.type === 'unary_expr' ? n.expr : n.args?.value?.[0])
      return s => { const r = arg(s); return r === null ? null : !r }
    }
    if (n?.type !== 'binary_expr') return unsupported(`${describe(n)} in HAVING`)
    const op = String(n.operator).toUpperCase()
    if (op === 'AND' || op === 'OR') {
      const l = build(n.left)
      const r = build(n.right)
      return op === 'AND'
        ? s => { const a = l(s); const b = r(s); return a === false || b === false ? false : a === null || b === null ? null : true }
        : s => { const a = l(s); const b = r(s); return a === true || b === true ? true : a === null || b === null ? null : false }
    }
    const left = operand(n.left)
    // A value on the left of a comparison is turned round (5 < COUNT(*) is COUNT(*) > 5).
    if (!('slot' in left) && COMPARISONS.includes(op) && ctx.slot(n.right) !== undefined) return build({ ...n, left: n.right, right: n.left, operator: FLIPPED[op] ?? op })
    if (!('slot' in left)) unsupported('a HAVING condition whose left side is not an aggregate or a GROUP BY column')
    const info = ctx.info(left.slot)
    const negate = (t: HavingTest): HavingTest => s => { const r = t(s); return r === null ? null : !r }
    if (COMPARISONS.includes(op)) {
      let right = operand(n.right)
      if ('value' in right) right = { value: typed(left.slot, right.value) }
      const cmp = (op === '!=' ? '<>' : op) as Comparison
      return s => { const c = compareSlot(info, valueOf(left, s), valueOf(right, s)); return c === null ? null : satisfies(c, cmp) }
    }
    if (op === 'BETWEEN' || op === 'NOT BETWEEN') {
      const [lo, hi] = (n.right?.value ?? []).map((v: any) => typed(left.slot, bind.value(v)))
      const t: HavingTest = s => {
        const v = valueOf(left, s)
        if (v === null) return null
        // As in WHERE: a NULL bound is unknown, but a bound the value misses makes it false.
        const a = lo === null || lo === undefined ? null : (compareSlot(info, v, lo) as number) >= 0
        const b = hi === null || hi === undefined ? null : (compareSlot(info, v, hi) as number) <= 0
        return a === false || b === false ? false : a === null || b === null ? null : true
      }
      return op === 'BETWEEN' ? t : negate(t)
    }
    if (op === 'IN' || op === 'NOT IN') {
      if (n.right?.type !== 'expr_list') unsupported('IN with a subquery')
      const values = (n.right.value as any[]).map(v => typed(left.slot, bind.value(v)))
      const t: HavingTest = s => {
        let unknown = false
        for (const w of values) {
          const c = compareSlot(info, valueOf(left, s), w)
          if (c === 0) return true
          if (c === null) unknown = true
        }
        return unknown ? null : false
      }
      return op === 'IN' ? t : negate(t)
    }
    if (op === 'IS' || op === 'IS NOT') {
      if (n.right?.type !== 'null') unsupported(`IS ${String(n.right?.type ?? '')}`)
      return s => (valueOf(left, s) === null) === (op === 'IS')
    }
    return unsupported(`the operator ${op} in HAVING`)
  }
  return build(node)
}

function flattenAnd (node: any): any[] {
  return chain(node, 'AND')
}

/** The operands of a chain of one operator (a AND b AND c), in order, without recursion (the parser nests a chain one deeper per operand) */
function chain (node: any, op: 'AND' | 'OR'): any[] {
  const out: any[] = []
  const stack: any[] = [node]
  while (stack.length > 0) {
    const n = stack.pop()
    if (n?.type === 'binary_expr' && String(n.operator).toUpperCase() === op) stack.push(n.right, n.left)
    else out.push(n)
  }
  return out
}

/** The comparison that holds with its sides swapped */
const FLIPPED: Record<string, string> = { '=': '=', '<>': '<>', '!=': '<>', '<': '>', '<=': '>=', '>': '<', '>=': '<=' }

/** A WHERE condition over one table's columns (a condition spanning two joined tables is refused) */
function buildCondition (node: any, resolve: (n: any) => ColumnRef, bind: Binder): { cond: Condition, source: Source } {
  let source: Source | undefined
  const col = (n: any): string => {
    const ref = resolve(n)
    if (source !== undefined && source !== ref.source) unsupported('a condition over columns of two joined tables (each condition names one table; join on ON)')
    source = ref.source
    return ref.column
  }
  const build = (n: any): Condition => {
    if (n?.parentheses === true && n.type === 'binary_expr') { /* grouping only */ }
    if (n?.type === 'unary_expr' && String(n.operator).toUpperCase() === 'NOT') return { op: 'not', arg: build(n.expr) }
    if (n?.type === 'function' && String(n.name?.name?.[0]?.value ?? '').toUpperCase() === 'NOT') {
      const args = n.args?.value ?? []
      if (args.length !== 1) unsupported('NOT with several arguments')
      return { op: 'not', arg: build(args[0]) }
    }
    if (n?.type !== 'binary_expr') return unsupported(`${describe(n)} in WHERE`)
    const op = String(n.operator).toUpperCase()
    if (op !== 'AND' && op !== 'OR') {
      // A value on the left of a comparison is turned round (5 < x is x > 5); other expressions are refused by name.
      if (COMPARISONS.includes(op) && n.left?.type !== 'column_ref' && n.right?.type === 'column_ref') return build({ ...n, left: n.right, right: n.left, operator: FLIPPED[op] ?? op })
      if (n.left?.type !== 'column_ref') unsupported(`${describe(n.left)} in WHERE (a condition compares a column with values)`)
      for (const side of Array.isArray(n.right?.value) ? n.right.value : [n.right]) {
        if (side?.type === 'column_ref') unsupported('a comparison of two columns in WHERE')
        if (side?.type === 'function' || side?.type === 'aggr_func' || side?.type === 'binary_expr' || side?.ast != null) unsupported(`${describe(side)} in WHERE`)
      }
    }
    switch (op) {
      case 'AND': return { op: 'and', args: chain(n, 'AND').map(build) }
      case 'OR': return { op: 'or', args: chain(n, 'OR').map(build) }
      case '=': case '<>': case '!=': case '<': case '<=': case '>': case '>=': {
        const column = col(n.left)
        return { op: op === '!=' ? '<>' : op as Comparison, column, value: bind.value(n.right) }
      }
      case 'BETWEEN': case 'NOT BETWEEN': {
        const column = col(n.left)
        const [low, high] = n.right?.value ?? []
        const c: Condition = { op: 'between', column, low: bind.value(low), high: bind.value(high) }
        return op === 'BETWEEN' ? c : { op: 'not', arg: c }
      }
      case 'IN': case 'NOT IN': {
        const column = col(n.left)
        if (n.right?.type !== 'expr_list') unsupported('IN with a subquery')
        const c: Condition = { op: 'in', column, values: (n.right.value as any[]).map(v => bind.value(v)) }
        return op === 'IN' ? c : { op: 'not', arg: c }
      }
      case 'LIKE': case 'NOT LIKE': {
        const column = col(n.left)
        // As in PostgreSQL, LIKE matches text: on a number or a date it is an error, not an empty answer.
        const type = columnOf((source as Source).table, column).type
        if (type !== 'VARCHAR') throw new ValidationError(`SQL: LIKE needs a text column; ${column} is ${type}`, { column })
        if (n.right?.escape != null) unsupported('LIKE ... ESCAPE')
        const pattern = bind.value(n.right)
        if (typeof pattern !== 'string' || !pattern.endsWith('%') || pattern.slice(0, -1).includes('%') || pattern.includes('_') || pattern.includes('\\')) {
          unsupported(`LIKE ${JSON.stringify(pattern)} (only LIKE 'prefix%')`)
        }
        const c: Condition = { op: 'like', column, prefix: pattern.slice(0, -1) }
        return op === 'LIKE' ? c : { op: 'not', arg: c }
      }
      case 'IS': case 'IS NOT': {
        if (n.right?.type !== 'null') unsupported(`IS ${String(n.right?.type ?? '')}`)
        return { op: 'null', column: col(n.left), negated: op === 'IS NOT' }
      }
      default:
        return unsupported(`the operator ${op}`)
    }
  }
  const cond = build(node)
  if (source === undefined) unsupported('a condition that names no column')
  return { cond: typeConditions(source.table, cond), source }
}

/** Values typed by their column (a timestamp also takes a date), as the socket routes type filters */
function typeConditions (table: TableDef, c: Condition): Condition {
  switch (c.op) {
    case 'and': case 'or': return { op: c.op, args: c.args.map(a => typeConditions(table, a)) }
    case 'not': return { op: 'not', arg: typeConditions(table, c.arg) }
    case 'null': case 'like': return c
    case 'in': return { ...c, values: c.values.map(v => typedValue(table, c.column, v)) }
    case 'between': return { ...c, low: typedValue(table, c.column, c.low), high: typedValue(table, c.column, c.high) }
    default: return { ...c, value: typedValue(table, c.column, c.value) }
  }
}

/**
 * The one column the owners can sort by for this SELECT, if the whole ORDER
 * BY is one NOT NULL column of one table (a list's order puts NULLs first,
 * SQL's last: a nullable column is sorted as several keys are)
 */
function pushedOrder (s: Select): { column: string, desc: boolean } | undefined {
  if (s.sources.length !== 1 || s.orderBy.length !== 1 || s.aggregated) return undefined
  const o = s.orderBy[0] as Select['orderBy'][number]
  const ref = 'ref' in o.key ? o.key.ref : 'item' in o.key ? (s.items[o.key.item] as Item & { kind: 'column' }).ref : undefined
  if (ref === undefined || !columnOf(ref.source.table, ref.column).notNull) return undefined
  return { column: ref.column, desc: o.desc }
}

/** Whether a SELECT is a list (db.query: one table, in an order its owners give, stopping at the page) rather than a fragment */
function isList (s: Select): boolean {
  return s.sources.length === 1 && !s.aggregated && (s.orderBy.length === 0 || pushedOrder(s) !== undefined)
}

/** Reads the rows of one source that pass its WHERE, up to `want`, from a cursor of db.query */
async function gather (db: Database, source: Source, filter: Condition | undefined, options: RequestOptions, order: { column: string, desc: boolean } | undefined, want: number, cursor?: string): Promise<{ rows: Row[], next: string | null }> {
  const out: Row[] = []
  let next: string | undefined = cursor
  for (;;) {
    const page = await db.query(source.table.name, {
      ...(filter === undefined ? {} : { filter }),
      ...(order === undefined ? {} : { orderBy: order.column, desc: order.desc }),
      limit: Math.max(Math.min(MAX_LIMIT, want - out.length), 1),
      ...(next === undefined ? {} : { cursor: next })
    }, options)
    out.push(...page.rows)
    if (page.next === null) return { rows: out, next: null }
    next = page.next
    if (out.length >= want) return { rows: out, next }
  }
}

/**
 * A SQL cursor: the statement and parameters it belongs to (a digest), the
 * rows of the answer given so far, and where the last page stopped: for a
 * one-table list the position of db.query's cursor, for the owners' sorted
 * rows or merged groups the sort key of the last row given (`k`). A page
 * after the first runs the statement again and continues after that
 * position, so rows written or deleted before it neither come twice nor
 * push a row past the page.
 */
interface SqlCursor { h: string, n: number, c?: string, k?: Value[] }

function stampOf (sql: string, params: readonly unknown[]): string {
  return createHash('sha256').update(sql).update('\u0000').update(JSON.stringify(params)).digest('base64url').slice(0, 16)
}

function writeCursor (c: SqlCursor): string {
  return 's' + toString(fromString(JSON.stringify(c), 'utf8'), 'base64url')
}

function readCursor (cursor: string, stamp: string): SqlCursor {
  let c: any
  try {
    c = cursor.startsWith('s') ? JSON.parse(toString(fromString(cursor.slice(1), 'base64url'), 'utf8')) : undefined
  } catch {}
  const scalar = (v: unknown): boolean => v === null || typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v))
  if (c === null || typeof c !== 'object' || typeof c.h !== 'string' || !Number.isSafeInteger(c.n) || c.n < 0 || (c.c !== undefined && typeof c.c !== 'string') ||
    (c.k !== undefined && (!Array.isArray(c.k) || !c.k.every(scalar)))) {
    throw new ValidationError(`SQL: invalid cursor ${JSON.stringify(cursor.slice(0, 100))}`)
  }
  if (c.h !== stamp) throw new ValidationError('SQL: this cursor continues another statement (or other parameters): send the same sql and params with it')
  return c as SqlCursor
}

async function runSelect (db: Database, s: Select, access: SqlAccess, options: RequestOptions, stamp: string, cursor?: string): Promise<SqlAnswer> {
  for (const src of s.sources) {
    const filter = s.where.get(src)
    // As for a list: break-glass opens one patient's records, so the WHERE must fix the patient.
    if (access.widened?.(src.table) === true && !conjuncts(filter).some(c => c.op === '=' && c.column === 'patient_id' && c.value !== null)) {
      throw new ForbiddenError(`X-Break-Glass reads one patient's records: add a WHERE ${src.table.name}.patient_id = ... to read ${src.table.name}`)
    }
  }
  const columns = s.items.map(i => i.name)
  const at = cursor === undefined ? { h: stamp, n: 0 } : readCursor(cursor, stamp)
  // Rows of the answer (after OFFSET) the statement gives in all, and this page's.
  const total = s.limit ?? Number.POSITIVE_INFINITY
  const want = Math.min(SQL_PAGE, total - at.n)
  if (want <= 0) return { columns, rows: [], next: null }
  const order = pushedOrder(s)
  // The plain case: one table, the order (or none: the primary key's) given by the owners, paged by db.query's cursor.
  if (isList(s)) {
    const src = s.driver
    const skip = cursor === undefined ? s.offset : 0
    if (skip > MAX_GATHERED_ROWS) throw new ValidationError(`SQL: an OFFSET of more than ${MAX_GATHERED_ROWS} rows; page with next instead`)
    const page = await gather(db, src, s.where.get(src), options, order, skip + want, at.c)
    const rows = page.rows.slice(skip, skip + want)
    noteRows(access, src.table, rows)
    const given = at.n + rows.length
    // A full page's cursor may lead nowhere (the last row was the table's last): next only when a row follows.
    const more = page.next !== null && given < total && (await gather(db, src, s.where.get(src), options, order, 1, page.next)).rows.length > 0
    const next = more ? writeCursor({ h: stamp, n: given, c: page.next as string }) : null
    return { columns, rows: rows.map(r => s.items.map(i => r[(i as Item & { kind: 'column' }).ref.column] ?? null)), next }
  }
  // Joined, grouped or sorted on several keys: the owners run it on their copies (see fragment.ts). A page
  // after the first continues after the sort key of the last row given (an OFFSET applies to the first).
  const from = cursor === undefined ? s.offset : 0
  if (cursor !== undefined && at.k === undefined) throw new ValidationError(`SQL: invalid cursor ${JSON.stringify(cursor.slice(0, 100))}`)
  if (s.aggregated) return await groupedPage(db, s, access, options, stamp, at, from, want)
  // The owners each keep the best OFFSET + page + 1 rows: an OFFSET past what a range may give is refused.
  if (from + want + 1 > MAX_FRAGMENT_ROWS) throw new ValidationError(`SQL: an OFFSET of more than ${MAX_FRAGMENT_ROWS - want - 1} rows on a joined or sorted answer; page with next instead`)
  const { fragment, patients } = toFragment(s, from + want + 1)
  if (at.k !== undefined) {
    if (at.k.length !== (fragment.orderBy ?? []).length) throw new ValidationError(`SQL: invalid cursor ${JSON.stringify((cursor as string).slice(0, 100))}`)
    fragment.after = at.k
  }
  const answer = await db.fragment(fragment, options)
  const rows = answer.result.rows ?? []
  const page = rows.slice(from, from + want)
  // As a list does: each patient whose rows the page holds is noted, per table.
  for (const src of s.sources) {
    const col = patients.get(src)
    const seen = col === undefined ? [] : [...new Set(page.map(r => r[col]).filter(p => p !== null && p !== undefined).map(String))]
    if (seen.length === 0) noteTable(access, src.table, s.where.get(src))
    for (const patientId of seen) access.note?.({ action: 'list', table: src.table.name, patientId })
  }
  const given = at.n + page.length
  const last = page[page.length - 1]
  const next = given < total && rows.length > from + want && last !== undefined ? writeCursor({ h: stamp, n: given, k: keyOf(fragment, last) }) : null
  return { columns, rows: page.map(r => r.slice(0, s.items.length)), next }
}

/** A page of a grouped answer: the groups merged from the owners, HAVING applied, sorted, from OFFSET or after the cursor's group */
async function groupedPage (db: Database, s: Select, access: SqlAccess, options: RequestOptions, stamp: string, at: SqlCursor, from: number, want: number): Promise<SqlAnswer> {
  const { fragment } = toFragment(s, undefined)
  const answer = await db.fragment(fragment, options)
  const { all, order, compare } = groupSlots(s, answer.result.groups ?? [])
  const keyOfGroup = (g: Slots): Value[] => order.map(o => g[o.slot] ?? null)
  let start = from
  if (at.k !== undefined) {
    const k = at.k
    if (k.length !== order.length) throw new ValidationError('SQL: invalid cursor')
    start = all.findIndex(g => compare(keyOfGroup(g), k) > 0)
    if (start < 0) start = all.length
  }
  const page = all.slice(start, start + want)
  notePatientGroups(s, access, page)
  const given = at.n + page.length
  const last = page[page.length - 1]
  const total = s.limit ?? Number.POSITIVE_INFINITY
  const next = given < total && all.length > start + want && last !== undefined ? writeCursor({ h: stamp, n: given, k: keyOfGroup(last) }) : null
  const slots = s.items.map(i => i.kind === 'aggregate' ? s.groupBy.length + i.agg : s.groupBy.findIndex(g => g.source === i.ref.source && g.column === i.ref.column))
  return { columns: s.items.map(i => i.name), rows: page.map(v => slots.map(x => v[x] ?? null)), next }
}

/**
 * Notes the tables a grouped page read: grouped by a patient_id, each
 * patient of the page (their rows, and those of every table the join places
 * by the patient, are what each group tells of), else the patient its
 * WHERE fixes
 */
function notePatientGroups (s: Select, access: SqlAccess, page: Slots[]): void {
  for (const src of s.sources) {
    const slot = s.groupBy.findIndex(g => g.column === 'patient_id' && (g.source === src || (g.source.table.shardKey === 'patient_id' && src.table.shardKey === 'patient_id')))
    const seen = slot < 0 ? [] : [...new Set(page.map(g => g[slot]).filter(p => p !== null && p !== undefined).map(String))]
    if (seen.length === 0) noteTable(access, src.table, s.where.get(src))
    for (const patientId of seen) access.note?.({ action: 'list', table: src.table.name, patientId })
  }
}

/**
 * A grouped answer's groups as slots: each group's aggregates finished,
 * HAVING applied, sorted (by the GROUP BY columns when no ORDER BY, and
 * after the ORDER BY's keys, so no two groups tie); `order` and `compare`
 * are that order, over the values of its slots
 */
function groupSlots (s: Select, groups: Array<{ key: Value[], partials: Partial[] }>): { all: Slots[], order: Array<{ slot: number, desc: boolean }>, compare: (x: Value[], y: Value[]) => number } {
  // No GROUP BY: one group, even of no rows.
  if (s.groupBy.length === 0 && groups.length === 0) groups.push({ key: [], partials: s.aggregates.map(a => a.fn === 'COUNT' ? 0 : a.fn === 'SUM' || a.fn === 'AVG' ? [0, 0] : null) })
  let all: Slots[] = groups.map(g => [...g.key, ...s.aggregates.map((a, i) => finish(a.fn, g.partials[i] ?? null))])
  if (s.having !== undefined) all = all.filter(slots => (s.having as HavingTest)(slots) === true)
  // Groups the ORDER BY ties (or all, without one) in the order of their GROUP BY columns.
  const order = [...s.orderBy.map(o => ({ slot: (o.key as { slot: number }).slot, desc: o.desc })), ...s.groupBy.map((_, slot) => ({ slot, desc: false }))]
  const infos = order.map(o => slotInfo(o.slot, s.groupBy, s.aggregates))
  /** Two groups' values of `order`'s slots, NULLs last ascending and first descending */
  const compare = (a: Value[], b: Value[]): number => {
    for (const [i, o] of order.entries()) {
      const x = a[i] ?? null
      const y = b[i] ?? null
      const c = x === null || y === null ? (x === y ? 0 : x === null ? 1 : -1) : compareSlot(infos[i], x, y) as number
      if (c !== 0) return o.desc ? -c : c
    }
    return 0
  }
  const keyed = all.map(g => ({ g, key: order.map(o => g[o.slot] ?? null) }))
  keyed.sort((a, b) => compare(a.key, b.key))
  return { all: keyed.map(x => x.g), order, compare }
}

/**
 * The SELECT's part the owners run: the driver table, its WHERE, the joins,
 * the grouping or the projection and order; `patients` says where a row
 * holds each table's patient_id (for the audit trail)
 */
function toFragment (s: Select, limit: number | undefined): { fragment: Fragment, patients: Map<Source, number> } {
  const order = [s.driver, ...s.joins.map(j => j.source)]
  const at = (ref: ColumnRef): FragmentColumn => [order.indexOf(ref.source), ref.column]
  const f: Fragment = { table: s.driver.table.name }
  const where = s.where.get(s.driver)
  if (where !== undefined) f.filter = where
  if (s.joins.length > 0) {
    f.joins = s.joins.map(j => {
      const filter = s.where.get(j.source)
      return { table: j.source.table.name, column: j.column, on: at(j.on), ...(filter === undefined ? {} : { filter }) }
    })
  }
  const patients = new Map<Source, number>()
  if (s.aggregated) {
    f.groupBy = s.groupBy.map(at)
    f.aggregates = s.aggregates.map(a => ({ fn: a.fn, ...(a.ref === undefined ? {} : { column: at(a.ref) }) }))
    return { fragment: f, patients }
  }
  const items = s.items as Array<Item & { kind: 'column' }>
  f.columns = items.map(i => at(i.ref))
  const keyAt = (ref: ColumnRef): number => {
    f.columns?.push(at(ref))
    return (f.columns?.length ?? 0) - 1
  }
  // Without ORDER BY, rows come in their tables' primary-key order (so pages and LIMIT are the lowest keys);
  // with one, rows it ties stay in that order, so a page after the first continues the same sequence.
  f.orderBy = [
    ...s.orderBy.map(o => ({ at: 'item' in o.key ? o.key.item : keyAt((o.key as { ref: ColumnRef }).ref), desc: o.desc })),
    ...order.flatMap(src => src.table.primaryKey.map(column => ({ at: keyAt({ source: src, column }), desc: false })))
  ]
  for (const src of order) if (src.table.columns.some(c => c.name === 'patient_id')) patients.set(src, keyAt({ source: src, column: 'patient_id' }))
  if (limit !== undefined) f.limit = limit
  return { fragment: f, patients }
}

/** Notes a table the answer read from, with its patient when the WHERE fixes one */
function noteTable (access: SqlAccess, table: TableDef, filter: Condition | undefined): void {
  const patient = conjuncts(filter).find(c => c.op === '=' && c.column === 'patient_id')
  access.note?.({ action: 'list', table: table.name, ...(patient !== undefined && 'value' in patient && patient.value !== null ? { patientId: String(patient.value) } : {}) })
}

function noteRows (access: SqlAccess, table: TableDef, rows: Row[]): void {
  if (access.note === undefined) return
  const patients = [...new Set(rows.map(r => r.patient_id).filter(p => p !== null && p !== undefined).map(String))]
  if (patients.length === 0) access.note({ action: 'list', table: table.name })
  for (const patientId of patients) access.note({ action: 'list', table: table.name, patientId })
}

/** Whether an ordered plan reads less than the whole table (a fixed prefix or a bound) */
function narrows (table: TableDef, plan: RowPlan & { kind: 'ordered' }): boolean {
  const whole = planRows(table, { limit: 1 }, table.indexed)
  return plan.lower !== undefined || plan.upper !== undefined || whole.kind !== 'ordered' || whole.prefix !== plan.prefix
}

async function explainSelect (db: Database, s: Select): Promise<SqlAnswer> {
  const lines: string[][] = []
  const owners = await db.placement()
  const src = s.driver
  const filter = s.where.get(src)
  const order = pushedOrder(s)
  const plan = planRows(src.table, { ...(filter === undefined ? {} : { filter }), ...(order === undefined ? {} : { orderBy: order.column, desc: order.desc }), limit: 1 }, src.table.indexed)
  const shard = singleShardOf(src.table.name, filter)
  const list = isList(s)
  // A list reads in the index's order and stops at the page; a fragment reads every row its index narrows to.
  const index = plan.kind === 'ordered'
    ? list
      ? `ordered index (${plan.index.join(', ')})${order === undefined ? ' in primary-key order' : ` in ${order.column} order`}, stops at the limit`
      : narrows(src.table, plan) ? `ordered index (${plan.index.join(', ')}) narrows the rows read` : 'no index narrows it: every row of the table is read'
    : plan.source.type === 'equality' ? `equality index on ${plan.source.column}${list ? ', best rows kept in order' : ''}`
      : plan.source.type === 'range' ? `ordered index (${plan.source.index.join(', ')}) for the range${list ? ', best rows kept in order' : ''}` : 'no index: every row of the table is read'
  const asked = src.table.shardKey === 'global'
    ? `global table: ${owners.readQuorum} of the ${owners.members.length} members (every member holds it)`
    : shard !== undefined
      ? `single-patient: one replica set, the owners of ${shard}: ${owners.of(src.table.name, shard).join(', ')} (${owners.readQuorum} asked)`
      : `scatter-gather: every replica set, ${owners.readQuorum} copies of each, one ${list ? 'stream' : 'request'} per member (${owners.members.join(', ')}), ${list ? 'merged in order' : 'results merged on this node'}`
  lines.push([src.table.name, asked, index])
  for (const j of s.joins) {
    const t = j.source.table
    const how = t.shardKey === 'global'
      ? `joined on ${j.column} on each owner, from its own copy (a global table is on every member)`
      : `joined on ${j.column} on each owner: the rows of each ${j.column} live on the same replica set (co-located, no rows shipped)`
    lines.push([t.name, how, t.indexed.includes(j.column) ? `equality index on ${j.column}` : `ordered index (${(t.ordered.find(o => o[0] === j.column) ?? [j.column]).join(', ')}) by ${j.column}`])
  }
  if (s.aggregated) {
    lines.push(['aggregate', `${s.groupBy.length > 0 ? `GROUP BY ${s.groupBy.map(g => g.column).join(', ')}` : 'one group'}: partial ${[...new Set(s.aggregates.map(a => a.fn))].join(', ') || 'groups'} on each owner, merged on this node${s.having === undefined ? '' : ', then HAVING'}`, ''])
  } else if (s.joins.length > 0 || (s.orderBy.length > 0 && order === undefined)) {
    lines.push(['sort', `sorted on each owner${s.limit === undefined ? '' : ' and cut to OFFSET + LIMIT'}, merged on this node`, ''])
  }
  return { columns: ['step', 'owners', 'access'], rows: lines, next: null }
}

/** The key columns' values a WHERE fixes by equality (the only WHERE an UPDATE or DELETE takes) */
function keyFromWhere (table: TableDef, where: any, bind: Binder): string {
  const parts = where == null ? [] : flattenAnd(where)
  const values = new Map<string, Value>()
  for (const p of parts) {
    if (p?.type !== 'binary_expr' || p.operator !== '=' || p.left?.type !== 'column_ref') unsupported('an UPDATE or DELETE whose WHERE is not <key> = <value>')
    const name = String(p.left.column?.expr?.value ?? p.left.column)
    // WHERE id = 1 AND id = 2 matches no row: it must not write the last one named.
    if (values.has(name)) throw new ValidationError(`SQL: ${name} named twice in the WHERE of an UPDATE or DELETE`, { column: name })
    values.set(name, typedValue(table, name, bind.value(p.right)))
  }
  if (values.size !== table.primaryKey.length || !table.primaryKey.every(k => values.has(k))) {
    unsupported(`an UPDATE or DELETE of ${table.name} without WHERE ${table.primaryKey.map(k => `${k} = ...`).join(' AND ')}`)
  }
  return table.primaryKey.map(k => String(values.get(k))).join(':')
}

async function runInsert (db: Database, ast: any, bind: Binder, access: SqlAccess, options: RequestOptions): Promise<SqlAnswer> {
  if (ast.conflict != null) unsupported('ON CONFLICT')
  if (ast.returning != null) unsupported('RETURNING')
  const table = tableOf(ast.table?.[0]?.table)
  const names: string[] = (ast.columns ?? []).map((c: any) => String(c?.value ?? c))
  if (names.length === 0) unsupported('INSERT without a column list')
  const twice = names.find((n, i) => names.indexOf(n) !== i)
  if (twice !== undefined) throw new ValidationError(`SQL: column ${twice} named twice in the INSERT`, { column: twice })
  if (ast.values?.type !== 'values') unsupported('INSERT ... SELECT')
  const tuples: any[] = ast.values.values
  if (tuples.length !== 1) unsupported('INSERT of several rows (use one statement per row, or import)')
  const values = tuples[0].value as any[]
  if (values.length !== names.length) throw new ValidationError(`SQL: ${names.length} columns but ${values.length} values`)
  const row: Record<string, Value> = {}
  names.forEach((n, i) => { row[n] = typedValue(table, n, bind.value(values[i])) })
  access.writable(table, names)
  const result = await db.insert(table.name, row, options)
  access.note?.({ action: 'insert', table: table.name, id: result.id, columns: names, ...(row.patient_id !== undefined && row.patient_id !== null ? { patientId: String(row.patient_id) } : {}) })
  return { columns: ['id', 'version'], rows: [[result.id, result.version]], next: null }
}

async function runUpdate (db: Database, ast: any, bind: Binder, access: SqlAccess, options: RequestOptions): Promise<SqlAnswer> {
  if (ast.from != null) unsupported('UPDATE ... FROM')
  if (ast.returning != null) unsupported('RETURNING')
  const table = tableOf(ast.table?.[0]?.table)
  const changes: Record<string, Value> = {}
  for (const s of ast.set ?? []) {
    const name = String(s.column?.expr?.value ?? s.column)
    if (Object.prototype.hasOwnProperty.call(changes, name)) throw new ValidationError(`SQL: column ${name} set twice in the UPDATE`, { column: name })
    changes[name] = typedValue(table, name, bind.value(s.value))
  }
  const id = keyFromWhere(table, ast.where, bind)
  access.writable(table, Object.keys(changes))
  const result = await db.patch(table.name, id, changes, options)
  access.note?.({ action: 'update', table: table.name, id, columns: Object.keys(changes), ...(table.name === 'patient_records' ? { patientId: id } : result.row?.patient_id != null ? { patientId: String(result.row.patient_id) } : {}) })
  return { columns: ['id', 'version'], rows: [[result.id, result.version]], next: null }
}

async function runDelete (db: Database, ast: any, bind: Binder, access: SqlAccess, options: RequestOptions): Promise<SqlAnswer> {
  if (ast.returning != null) unsupported('RETURNING')
  const table = tableOf(ast.from?.[0]?.table ?? ast.table?.[0]?.table)
  const id = keyFromWhere(table, ast.where, bind)
  access.writable(table, [])
  const result = await db.delete(table.name, id, options)
  access.note?.({ action: 'delete', table: table.name, id, ...(table.name === 'patient_records' ? { patientId: id } : {}) })
  return { columns: ['id', 'version', 'deleted'], rows: [[result.id, result.version, 1]], next: null }
}
