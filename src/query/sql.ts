import { createRequire } from 'node:module'
import { ForbiddenError, ValidationError } from '../errors/index.js'
import { CONSISTENCY_LEVELS, type Consistency, type RequestOptions } from '../cluster/coordinator.js'
import { allOf, columnOf, compareValues, conjuncts, satisfies, type Comparison, type Condition } from '../schema/condition.js'
import { findTable, type Row, type TableDef, type Value } from '../schema/index.js'
import { planRows } from '../storage/ordered.js'
import { singleShardOf } from '../cluster/query-merge.js'
import { MAX_LIMIT, typedValue, type Database } from './database.js'
import { finish, type Fragment, type FragmentAggregate } from './fragment.js'

// node-sql-parser ships CommonJS; its PostgreSQL grammar builds the AST this module reads.
const { Parser } = createRequire(import.meta.url)('node-sql-parser') as { Parser: new () => { astify: (sql: string, opt: object) => unknown } }
const PARSE = { database: 'postgresql' }

/** Rows a query without an index-given order may gather before it is refused (sorted, grouped or joined in memory) */
export const MAX_GATHERED_ROWS = 100_000

export interface SqlAnswer {
  columns: string[]
  rows: Value[][]
  next: string | null
}

/** What the caller may do, per table: read columns (undefined: no read right) and the write check */
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

interface Source { table: TableDef, alias: string }
interface ColumnRef { source: Source, column: string }
type Aggregate = 'COUNT' | 'SUM' | 'AVG' | 'MIN' | 'MAX'
type Item = { kind: 'column', ref: ColumnRef, name: string } | { kind: 'aggregate', fn: Aggregate, ref?: ColumnRef, name: string }

interface Select {
  sources: Source[]
  /** The shared key of a two-table join */
  joinOn?: { left: ColumnRef, right: ColumnRef }
  items: Item[]
  /** Per source, the conditions only it names; a condition over both is refused */
  where: Map<Source, Condition | undefined>
  groupBy: ColumnRef[]
  having?: { fn: Aggregate, ref?: ColumnRef, op: Comparison, value: Value }
  orderBy: Array<{ key: { item: number } | { ref: ColumnRef }, desc: boolean }>
  limit?: number
  offset: number
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
      case 'bool': return node.value === true ? 1 : 0
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

/** Parses one statement (or SETs then one statement) with node-sql-parser; a SET gives the consistency */
export function parseStatements (sql: string): { statement: any, consistency?: Consistency, explain: boolean } {
  if (typeof sql !== 'string' || sql.trim() === '') throw new ValidationError('SQL: the statement is empty')
  if (sql.length > MAX_SQL) throw new ValidationError(`SQL: a statement of at most ${MAX_SQL} characters`)
  // A statement is sent again and again with other parameters: parsed once (the tree is only read).
  let parsed = PARSED.get(sql)
  if (parsed === undefined) {
    parsed = parseOnce(sql)
    if (PARSED.size >= PARSED_MAX) PARSED.clear()
    PARSED.set(sql, parsed)
  }
  return parsed
}

/** Statements parsed lately (see parseStatements) */
const PARSED = new Map<string, { statement: any, consistency?: Consistency, explain: boolean }>()
const PARSED_MAX = 512
/** Longest statement taken, characters */
const MAX_SQL = 64 * 1024

function parseOnce (sql: string): { statement: any, consistency?: Consistency, explain: boolean } {
  // EXPLAIN is not in the parser's PostgreSQL grammar: the leading keyword is taken off and the rest parsed.
  const trimmed = sql.trimStart()
  const explain = trimmed.slice(0, 7).toUpperCase() === 'EXPLAIN' && (trimmed.length === 7 || ' \t\r\n'.includes(trimmed[7] as string))
  let ast: any
  try {
    ast = new Parser().astify(explain ? trimmed.slice(7) : sql, PARSE)
  } catch (err) {
    throw new ValidationError(`SQL: cannot parse: ${(err as Error).message.split('\n')[0] ?? ''}`)
  }
  const list = Array.isArray(ast) ? ast : [ast]
  let consistency: Consistency | undefined
  const rest: any[] = []
  for (const s of list) {
    if (s?.type === 'set') {
      for (const e of s.expr ?? []) {
        const name = String(e?.left?.name ?? '').toLowerCase()
        if (name !== 'consistency') unsupported(`SET ${name}`)
        const v = String(e?.right?.value ?? '')
        if (!CONSISTENCY_LEVELS.includes(v as Consistency)) throw new ValidationError(`SQL: consistency must be one of ${CONSISTENCY_LEVELS.join(', ')}`)
        consistency = v as Consistency
      }
    } else {
      rest.push(s)
    }
  }
  if (rest.length !== 1) throw new ValidationError(rest.length === 0 ? 'SQL: SET needs a statement after it' : 'SQL: one statement at a time (after any SETs)')
  return { statement: rest[0], ...(consistency === undefined ? {} : { consistency }), explain }
}

/**
 * Runs one SQL statement of the subset against the database: SELECT
 * (one table, or two joined on the patient or doctor key they share),
 * INSERT, UPDATE and DELETE by key, EXPLAIN SELECT. Anything else is a 400
 * naming the construct.
 */
export async function runSql (db: Database, sql: string, params: readonly unknown[], access: SqlAccess, options: RequestOptions = {}, cursor?: string): Promise<SqlAnswer> {
  if (!Array.isArray(params)) throw new ValidationError('SQL: params must be an array')
  const { statement, consistency, explain } = parseStatements(sql)
  const opts: RequestOptions = consistency === undefined ? options : { ...options, consistency }
  const bind = new Binder(params)
  if (explain && statement.type !== 'select') unsupported(`EXPLAIN ${String(statement.type).toUpperCase()}`)
  switch (statement.type) {
    case 'select': {
      const select = buildSelect(statement, bind, access)
      if (explain) return await explainSelect(db, select)
      return await runSelect(db, select, access, opts, cursor)
    }
    case 'insert': return await runInsert(db, statement, bind, access, opts)
    case 'update': return await runUpdate(db, statement, bind, access, opts)
    case 'delete': return await runDelete(db, statement, bind, access, opts)
    default: return unsupported(String(statement.type).toUpperCase())
  }
}

function tableOf (name: unknown): TableDef {
  const t = typeof name === 'string' ? findTable(name) : undefined
  if (t === undefined) throw new ValidationError(`SQL: unknown table ${String(name)}`)
  return t
}

function buildSelect (ast: any, bind: Binder, access: SqlAccess): Select {
  if (ast.with != null) unsupported('WITH')
  if (ast.distinct?.type != null) unsupported('DISTINCT')
  if (ast.window != null) unsupported('WINDOW')
  if (ast._next != null || ast.set_op != null) unsupported(String(ast.set_op ?? 'UNION').toUpperCase())
  const from: any[] = ast.from ?? []
  if (from.length === 0) unsupported('SELECT without FROM')
  if (from.length > 2) unsupported('a join of more than two tables')
  const sources: Source[] = from.map((f: any) => {
    if (f.expr != null) unsupported('a subquery in FROM')
    return { table: tableOf(f.table), alias: String(f.as ?? f.table) }
  })
  const resolve = (node: any): ColumnRef => {
    if (node?.type !== 'column_ref') unsupported(`a ${String(node?.type ?? 'missing').replace(/_/g, ' ')} where a column belongs`)
    const name = String(node.column?.expr?.value ?? node.column)
    const candidates = node.table == null ? sources : sources.filter(s => s.alias === node.table || s.table.name === node.table)
    const found = candidates.filter(s => s.table.columns.some(c => c.name === name))
    if (found.length === 0) throw new ValidationError(`SQL: unknown column ${node.table == null ? '' : `${String(node.table)}.`}${name}`, { column: name })
    if (found.length > 1) throw new ValidationError(`SQL: column ${name} is ambiguous: name its table`, { column: name })
    const source = found[0] as Source
    // A column the caller may not read is a 403 wherever it is named.
    if (!access.readable(source.table).includes(name)) throw new ForbiddenError(`You may not read column ${name} of ${source.table.name}`, { column: name })
    return { source, column: name }
  }
  let joinOn: Select['joinOn']
  if (sources.length === 2) {
    const j = from[1]
    if (!/^(INNER )?JOIN$/.test(String(j.join ?? ''))) unsupported(String(j.join ?? 'a comma join (FROM a, b)'))
    if (j.on?.type !== 'binary_expr' || j.on.operator !== '=') unsupported('a join condition other than one shared key')
    const left = resolve(j.on.left)
    const right = resolve(j.on.right)
    const [a, b] = sources as [Source, Source]
    const global = a.table.shardKey === 'global' || b.table.shardKey === 'global'
    if (left.source === right.source || left.column !== right.column || (!global && !['patient_id', 'doctor_id'].includes(left.column))) {
      unsupported('a join on anything but the patient_id or doctor_id both tables hold (or a column shared with a global table)')
    }
    const colocated = (a.table.shardKey === left.column && b.table.shardKey === left.column) || global
    if (!colocated) unsupported(`a join of ${a.table.name} and ${b.table.name} on ${left.column}, which does not place both on the same owners`)
    joinOn = { left, right }
  }
  const items: Item[] = []
  for (const c of ast.columns === '*' ? [{ expr: { type: 'star' } }] : ast.columns ?? []) {
    const e = c.expr
    if (e?.type === 'column_ref' && (e.column === '*' || e.column?.expr?.value === '*')) {
      for (const s of sources.filter(s => e.table == null || s.alias === e.table)) for (const col of access.readable(s.table)) items.push({ kind: 'column', ref: { source: s, column: col }, name: col })
      continue
    }
    if (e?.type === 'star') {
      for (const s of sources) for (const col of access.readable(s.table)) items.push({ kind: 'column', ref: { source: s, column: col }, name: col })
      continue
    }
    if (e?.type === 'aggr_func') {
      const fn = String(e.name).toUpperCase() as Aggregate
      if (!['COUNT', 'SUM', 'AVG', 'MIN', 'MAX'].includes(fn)) unsupported(`the aggregate ${fn}`)
      if (e.args?.distinct != null) unsupported(`${fn}(DISTINCT ...)`)
      const arg = e.args?.expr
      const ref = arg?.type === 'star' ? undefined : resolve(arg)
      if (ref === undefined && fn !== 'COUNT') unsupported(`${fn}(*)`)
      items.push({ kind: 'aggregate', fn, ...(ref === undefined ? {} : { ref }), name: String(c.as ?? (ref === undefined ? fn.toLowerCase() : `${fn.toLowerCase()}`)) })
      continue
    }
    const ref = resolve(e)
    items.push({ kind: 'column', ref, name: String(c.as ?? ref.column) })
  }
  const where = new Map<Source, Condition | undefined>(sources.map(s => [s, undefined]))
  if (ast.where != null) {
    const parts = flattenAnd(ast.where)
    const per = new Map<Source, Condition[]>(sources.map(s => [s, []]))
    for (const p of parts) {
      const { cond, source } = buildCondition(p, resolve, bind)
      per.get(source)?.push(cond)
    }
    for (const s of sources) where.set(s, allOf(per.get(s) ?? []))
  }
  const groupBy = (ast.groupby?.columns ?? (Array.isArray(ast.groupby) ? ast.groupby : [])).map(resolve)
  const aggregated = items.some(i => i.kind === 'aggregate') || groupBy.length > 0
  if (aggregated) {
    for (const i of items) {
      if (i.kind === 'column' && !groupBy.some((g: ColumnRef) => g.source === i.ref.source && g.column === i.ref.column)) {
        throw new ValidationError(`SQL: column ${i.ref.column} must be in GROUP BY or inside an aggregate`, { column: i.ref.column })
      }
    }
  }
  let having: Select['having']
  if (ast.having != null) {
    const h = ast.having
    if (h.type !== 'binary_expr' || h.left?.type !== 'aggr_func' || !['=', '<>', '<', '<=', '>', '>='].includes(h.operator)) unsupported('a HAVING other than <aggregate> <comparison> <value>')
    const fn = String(h.left.name).toUpperCase() as Aggregate
    const arg = h.left.args?.expr
    having = { fn, ...(arg?.type === 'star' ? {} : { ref: resolve(arg) }), op: h.operator, value: bind.value(h.right) }
  }
  const orderBy: Select['orderBy'] = (ast.orderby ?? []).map((o: any) => {
    const desc = String(o.type ?? 'ASC').toUpperCase() === 'DESC'
    const e = o.expr
    if (e?.type === 'number') {
      const n = Number(e.value)
      if (!Number.isInteger(n) || n < 1 || n > items.length) throw new ValidationError(`SQL: ORDER BY ${n} names no output column`)
      return { key: { item: n - 1 }, desc }
    }
    if (e?.type === 'column_ref' && e.table == null) {
      const name = String(e.column?.expr?.value ?? e.column)
      const at = items.findIndex(i => i.name === name)
      if (at >= 0) return { key: { item: at }, desc }
    }
    if (aggregated) {
      if (e?.type === 'aggr_func') {
        const at = items.findIndex(i => i.kind === 'aggregate' && i.fn === String(e.name).toUpperCase())
        if (at >= 0) return { key: { item: at }, desc }
      }
      const ref = resolve(e)
      const at = items.findIndex(i => i.kind === 'column' && i.ref.source === ref.source && i.ref.column === ref.column)
      if (at < 0) unsupported('ORDER BY a column not in the output of an aggregate query')
      return { key: { item: at }, desc }
    }
    return { key: { ref: resolve(e) }, desc }
  })
  let limit: number | undefined
  let offset = 0
  const lim = ast.limit?.value ?? []
  if (lim.length > 0) {
    const l = Number(bind.value(lim[0]))
    if (!Number.isSafeInteger(l) || l < 0) throw new ValidationError('SQL: LIMIT must be a whole number')
    limit = l
    if (lim.length > 1) {
      const o = Number(bind.value(lim[1]))
      if (!Number.isSafeInteger(o) || o < 0) throw new ValidationError('SQL: OFFSET must be a whole number')
      offset = o
    }
  }
  return { sources, ...(joinOn === undefined ? {} : { joinOn }), items, where, groupBy, ...(having === undefined ? {} : { having }), orderBy, ...(limit === undefined ? {} : { limit }), offset }
}

function flattenAnd (node: any): any[] {
  if (node?.type === 'binary_expr' && String(node.operator).toUpperCase() === 'AND') return [...flattenAnd(node.left), ...flattenAnd(node.right)]
  return [node]
}

/** A WHERE condition over one table's columns (a condition spanning both joined tables is refused) */
function buildCondition (node: any, resolve: (n: any) => ColumnRef, bind: Binder): { cond: Condition, source: Source } {
  let source: Source | undefined
  const col = (n: any): string => {
    const ref = resolve(n)
    if (source !== undefined && source !== ref.source) unsupported('a condition that compares columns of both joined tables')
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
    if (n?.type !== 'binary_expr') return unsupported(`a ${String(n?.type ?? 'missing').replace(/_/g, ' ')} in WHERE`)
    const op = String(n.operator).toUpperCase()
    switch (op) {
      case 'AND': return { op: 'and', args: [build(n.left), build(n.right)] }
      case 'OR': return { op: 'or', args: [build(n.left), build(n.right)] }
      case '=': case '<>': case '!=': case '<': case '<=': case '>': case '>=': {
        if (n.left?.type !== 'column_ref') unsupported('a comparison whose left side is not a column')
        if (n.right?.type === 'column_ref') unsupported('a comparison of two columns')
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

/** The one column the owners can sort by for this SELECT, if the whole ORDER BY is one column of one table */
function pushedOrder (s: Select): { column: string, desc: boolean } | undefined {
  if (s.sources.length !== 1 || s.orderBy.length !== 1 || s.groupBy.length > 0 || s.items.some(i => i.kind === 'aggregate')) return undefined
  const o = s.orderBy[0] as Select['orderBy'][number]
  const ref = 'ref' in o.key ? o.key.ref : (s.items[o.key.item] as Item & { kind: 'column' }).ref
  return { column: ref.column, desc: o.desc }
}

/** Reads every row of one source that passes its WHERE (bounded), or one page when the owners give the order */
async function gather (db: Database, source: Source, filter: Condition | undefined, options: RequestOptions, order?: { column: string, desc: boolean }, want?: number, cursor?: string): Promise<{ rows: Row[], next: string | null }> {
  const out: Row[] = []
  let next: string | undefined = cursor
  for (;;) {
    const pageSize = want === undefined ? MAX_LIMIT : Math.min(MAX_LIMIT, want - out.length)
    const page = await db.query(source.table.name, {
      ...(filter === undefined ? {} : { filter }),
      ...(order === undefined ? {} : { orderBy: order.column, desc: order.desc }),
      limit: Math.max(pageSize, 1),
      ...(next === undefined ? {} : { cursor: next })
    }, options)
    out.push(...page.rows)
    if (page.next === null) return { rows: out, next: null }
    next = page.next
    if (want !== undefined && out.length >= want) return { rows: out, next }
    if (out.length > MAX_GATHERED_ROWS) throw new ValidationError(`SQL: this query reads more than ${MAX_GATHERED_ROWS} rows of ${source.table.name}; narrow its WHERE`)
  }
}

async function runSelect (db: Database, s: Select, access: SqlAccess, options: RequestOptions, cursor?: string): Promise<SqlAnswer> {
  for (const src of s.sources) {
    const filter = s.where.get(src)
    // As for a list: break-glass opens one patient's records, so the WHERE must fix the patient.
    if (access.widened?.(src.table) === true && !conjuncts(filter).some(c => c.op === '=' && c.column === 'patient_id' && c.value !== null)) {
      throw new ForbiddenError(`X-Break-Glass reads one patient's records: add a WHERE ${src.table.name}.patient_id = ... to read ${src.table.name}`)
    }
  }
  const columns = s.items.map(i => i.name)
  const aggregated = s.items.some(i => i.kind === 'aggregate') || s.groupBy.length > 0
  const order = pushedOrder(s)
  // The plain case: one table, the order (or none: the primary key's) given by the owners, paged by cursor.
  if (s.sources.length === 1 && !aggregated && (s.orderBy.length === 0 || order !== undefined)) {
    const src = s.sources[0] as Source
    const want = s.limit === undefined ? undefined : s.limit + s.offset
    if (want === 0) return { columns, rows: [], next: null }
    // Without a LIMIT, a page of MAX_LIMIT rows and a cursor for the rest.
    const page = await gather(db, src, s.where.get(src), options, order, want ?? MAX_LIMIT, cursor)
    const rows = page.rows.slice(s.offset, want)
    noteRows(access, src.table, rows)
    const more = s.limit === undefined && page.next !== null
    return { columns, rows: rows.map(r => s.items.map(i => (i as Item & { kind: 'column' }).ref.column in r ? r[(i as Item & { kind: 'column' }).ref.column] ?? null : null)), next: more ? page.next : null }
  }
  if (cursor !== undefined) throw new ValidationError('SQL: a cursor continues a one-table SELECT without LIMIT; this one answers whole')
  // Joined, grouped or sorted on several keys: the owners run it on their copies (see fragment.ts).
  const fragment = toFragment(s)
  const answer = await db.fragment(fragment, options)
  for (const src of s.sources) noteTable(access, src.table, s.where.get(src))
  let rows: Value[][]
  if (aggregated) {
    const aggs = fragment.aggregates as FragmentAggregate[]
    rows = []
    const groups = answer.result.groups ?? []
    // No GROUP BY: one group, even of no rows.
    if (s.groupBy.length === 0 && groups.length === 0) groups.push({ key: [], partials: aggs.map(a => a.fn === 'COUNT' ? 0 : a.fn === 'SUM' || a.fn === 'AVG' ? [0, 0] : null) })
    for (const g of groups) {
      const values = aggs.map((a, i) => finish(a.fn, g.partials[i] ?? null))
      if (s.having !== undefined && !holds(values[aggs.length - 1] ?? null, s.having.op, s.having.value)) continue
      let next = 0
      rows.push(s.items.map(i => i.kind === 'aggregate' ? values[next++] ?? null : g.key[s.groupBy.findIndex(x => x.source === i.ref.source && x.column === i.ref.column)] ?? null))
    }
    if (s.orderBy.length > 0) {
      rows.sort((a, b) => {
        for (const o of s.orderBy) {
          const at = (o.key as { item: number }).item
          const item = s.items[at] as Item
          const x = a[at] ?? null
          const y = b[at] ?? null
          const col = item.kind === 'column' ? columnOf(item.ref.source.table, item.ref.column) : item.ref !== undefined && (item.fn === 'MIN' || item.fn === 'MAX') ? columnOf(item.ref.source.table, item.ref.column) : undefined
          const c = x === null || y === null ? (x === y ? 0 : x === null ? 1 : -1) : col === undefined ? Number(x) - Number(y) : compareValues(col, x, y)
          if (c !== 0) return o.desc ? -c : c
        }
        return 0
      })
    }
  } else {
    rows = (answer.result.rows ?? []).map(r => r.slice(0, s.items.length))
  }
  const end = s.limit === undefined ? undefined : s.offset + s.limit
  return { columns, rows: rows.slice(s.offset, end), next: null }
}

/** The SELECT's part the owners run: the sharded table first (a global one is looked up), its WHERE, the join, the grouping or the projection */
function toFragment (s: Select): Fragment {
  let [first, second] = s.sources as [Source, Source | undefined]
  if (second !== undefined && first.table.shardKey === 'global' && second.table.shardKey !== 'global') [first, second] = [second, first]
  const at = (ref: ColumnRef): [0 | 1, string] => [ref.source === first ? 0 : 1, ref.column]
  const f: Fragment = { table: first.table.name }
  const where = s.where.get(first)
  if (where !== undefined) f.filter = where
  if (second !== undefined && s.joinOn !== undefined) {
    const other = s.where.get(second)
    f.join = { table: second.table.name, column: s.joinOn.left.column, ...(other === undefined ? {} : { filter: other }) }
  }
  if (s.items.some(i => i.kind === 'aggregate') || s.groupBy.length > 0) {
    f.groupBy = s.groupBy.map(at)
    f.aggregates = s.items.filter((i): i is Item & { kind: 'aggregate' } => i.kind === 'aggregate').map(i => ({ fn: i.fn, ...(i.ref === undefined ? {} : { column: at(i.ref) }) }))
    // HAVING's aggregate comes last (the answer drops it).
    if (s.having !== undefined) f.aggregates.push({ fn: s.having.fn, ...(s.having.ref === undefined ? {} : { column: at(s.having.ref) }) })
    return f
  }
  const items = s.items as Array<Item & { kind: 'column' }>
  f.columns = [...items.map(i => at(i.ref)), ...s.orderBy.filter(o => 'ref' in o.key).map(o => at((o.key as { ref: ColumnRef }).ref))]
  let extra = items.length
  f.orderBy = s.orderBy.map(o => ({ at: 'item' in o.key ? o.key.item : extra++, desc: o.desc }))
  if (s.limit !== undefined) f.limit = s.offset + s.limit
  return f
}

/** Notes a table the answer read from, with its patient when the WHERE fixes one */
function noteTable (access: SqlAccess, table: TableDef, filter: Condition | undefined): void {
  const patient = conjuncts(filter).find(c => c.op === '=' && c.column === 'patient_id')
  access.note?.({ action: 'list', table: table.name, ...(patient !== undefined && 'value' in patient && patient.value !== null ? { patientId: String(patient.value) } : {}) })
}

function holds (v: Value, op: Comparison, w: Value): boolean {
  if (v === null || w === null) return false
  return satisfies(Number(v) - Number(w), op)
}

function noteRows (access: SqlAccess, table: TableDef, rows: Row[]): void {
  if (access.note === undefined) return
  const patients = [...new Set(rows.map(r => r.patient_id).filter(p => p !== null && p !== undefined).map(String))]
  if (patients.length === 0) access.note({ action: 'list', table: table.name })
  for (const patientId of patients) access.note({ action: 'list', table: table.name, patientId })
}

async function explainSelect (db: Database, s: Select): Promise<SqlAnswer> {
  const lines: string[][] = []
  const owners = await db.placement()
  for (const src of s.sources) {
    const filter = s.where.get(src)
    const order = pushedOrder(s)
    const plan = planRows(src.table, { ...(filter === undefined ? {} : { filter }), ...(order === undefined ? {} : { orderBy: order.column, desc: order.desc }), limit: 1 }, src.table.indexed)
    const shard = singleShardOf(src.table.name, filter)
    const index = plan.kind === 'ordered'
      ? `ordered index (${plan.index.join(', ')})${order === undefined ? ' in primary-key order' : ` in ${order.column} order`}, stops at the limit`
      : plan.source.type === 'equality' ? `equality index on ${plan.source.column}, best rows kept in order`
        : plan.source.type === 'range' ? `ordered index (${plan.source.index.join(', ')}) for the range, best rows kept in order` : 'no index: every row of the table is read'
    const asked = src.table.shardKey === 'global'
      ? `global table: ${owners.readQuorum} of the ${owners.members.length} members (every member holds it)`
      : shard !== undefined
        ? `single-patient: one replica set, the owners of ${shard}: ${owners.of(src.table.name, shard).join(', ')} (${owners.readQuorum} asked)`
        : `scatter-gather: every replica set, ${owners.readQuorum} copies of each, one stream per member (${owners.members.join(', ')}), merged in order`
    lines.push([src.table.name, asked, index])
  }
  if (s.joinOn !== undefined) lines.push(['join', `co-located on ${s.joinOn.left.column}: each ${s.joinOn.left.column} of ${(s.sources[0] as Source).table.name} reads ${(s.sources[1] as Source).table.name} from that key's replica set`, ''])
  if (s.items.some(i => i.kind === 'aggregate') || s.groupBy.length > 0) lines.push(['aggregate', `${s.groupBy.length > 0 ? `GROUP BY ${s.groupBy.map(g => g.column).join(', ')}` : 'one group'}${s.having === undefined ? '' : ' with HAVING'}`, ''])
  return { columns: ['step', 'owners', 'access'], rows: lines, next: null }
}

/** The key columns' values a WHERE fixes by equality (the only WHERE an UPDATE or DELETE takes) */
function keyFromWhere (table: TableDef, where: any, bind: Binder): string {
  const parts = where == null ? [] : flattenAnd(where)
  const values = new Map<string, Value>()
  for (const p of parts) {
    if (p?.type !== 'binary_expr' || p.operator !== '=' || p.left?.type !== 'column_ref') unsupported('an UPDATE or DELETE whose WHERE is not <key> = <value>')
    const name = String(p.left.column?.expr?.value ?? p.left.column)
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
