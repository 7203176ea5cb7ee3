/**
 * The socket API's route schemas: each route declares one (`schema:` in its
 * options), fastify validates params, query string, headers and JSON bodies
 * with it before the handler runs, and `GET /v1/openapi.json` is generated
 * from the same objects (src/api/openapi.ts). A new route adds its schema
 * here, built from the pieces below, and names it in its options.
 *
 * Schemas are JSON Schema (draft 7, the subset OpenAPI 3.1 shares). Besides
 * the standard keywords a schema may carry:
 * - `x-message`: the error message when the value fails, `{name}` standing
 *   for the parameter or field (e.g. '{name} must be true or false');
 * - `x-table-row`: a row of the table the path names; its columns are
 *   checked by the table's own rules (src/schema/validate.ts), and the
 *   document lists each table's row shape.
 * A route schema's own keys follow @fastify/swagger: `summary`,
 * `description`, `tags`, `consumes`, `produces`, `hide`.
 */
import { Ajv, type ErrorObject, type Options as AjvOptions } from 'ajv'
import type { FastifySchema, FastifySchemaCompiler } from 'fastify'
import { CONSISTENCY_LEVELS } from '../cluster/coordinator.js'
import { ValidationError } from '../errors/index.js'
import { MAX_BATCH, MAX_LIMIT } from '../query/database.js'
import { MAX_REASON } from './access.js'

/** A JSON Schema object as the routes declare it */
export type JsonSchema = Record<string, unknown>

/** The schema keywords of our own (see above); ajv is told they are annotations */
export const SCHEMA_KEYWORDS = ['x-message', 'x-table-row'] as const

/** Longest Idempotency-Key, characters */
export const MAX_IDEMPOTENCY_KEY = 128
/** What an Idempotency-Key may be made of: a UUID, a ULID, base64 or hex fit */
export const IDEMPOTENCY_KEY_PATTERN = '^[A-Za-z0-9._~+/=:-]+$'

/**
 * Schemas the document names in `components.schemas` (and refers to by
 * `$ref`) rather than repeating them inline: the same object, by identity.
 */
export const NAMED_SCHEMAS = new Map<object, string>()

function named<T extends JsonSchema> (name: string, schema: T): T {
  NAMED_SCHEMAS.set(schema, name)
  return schema
}

const str = (description?: string): JsonSchema => ({ type: 'string', ...(description === undefined ? {} : { description }) })
const int = (description?: string): JsonSchema => ({ type: 'integer', ...(description === undefined ? {} : { description }) })
const bool = (description?: string): JsonSchema => ({ type: 'boolean', ...(description === undefined ? {} : { description }) })
const arrayOf = (items: JsonSchema, description?: string): JsonSchema => ({ type: 'array', items, ...(description === undefined ? {} : { description }) })
/** An object whose listed properties are documented; others may appear too */
const obj = (properties: Record<string, JsonSchema>, required: string[] = [], extra: JsonSchema = {}): JsonSchema => ({
  type: 'object',
  properties,
  ...(required.length === 0 ? {} : { required }),
  ...extra
})

// ---- errors -------------------------------------------------------------

/** What went wrong: `{ code, message, column? }` (src/errors) */
const ERROR_DETAIL = obj({
    code: str('INVALID, UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, UNKNOWN_TABLE, CONFLICT, REFERENCE, PRECONDITION_FAILED, TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, UNAVAILABLE, TIMEOUT, INTERNAL…'),
    message: str('What went wrong, for a person to read'),
    column: str('The column at fault, when one is'),
    outcome: str('On a 503 to a write: whether it may have taken effect (partial, unknown)')
}, ['code', 'message'])
export const ERROR_BODY = named('Error', obj({ error: ERROR_DETAIL }, ['error'], { additionalProperties: false }))

/** The success answers given, plus the error answer for every other status */
function answers (ok: Record<number, JsonSchema>): Record<string, JsonSchema> {
  return { ...ok, default: ERROR_BODY }
}

// ---- parameters ---------------------------------------------------------

const FLAG: JsonSchema = { type: 'string', enum: ['', 'true', 'false', '1', '0'], 'x-message': '{name} must be true or false' }
const flag = (description: string): JsonSchema => ({ ...FLAG, description: `${description} (true when given without a value)` })

const CONSISTENCY: JsonSchema = {
  type: 'string',
  enum: [...CONSISTENCY_LEVELS],
  'x-message': `{name} must be one of ${CONSISTENCY_LEVELS.join(', ')}`,
  description: 'How many replicas must answer: one, quorum (the default) or all'
}

const TABLE_PARAM = str('A table name (GET /v1/tables lists them)')
const ID_PARAM = str('The row\'s key: `42`, or `3:7` for a composite key')
const TABLE_PARAMS = obj({ table: TABLE_PARAM }, ['table'], { additionalProperties: false })
const ROW_PARAMS = obj({ table: TABLE_PARAM, id: ID_PARAM }, ['table', 'id'], { additionalProperties: false })
const CONSISTENCY_QUERY = obj({ consistency: CONSISTENCY }, [], { additionalProperties: false, 'x-message': 'Unknown parameter {name}: use consistency' })

const IDEMPOTENCY_KEY: JsonSchema = {
  type: 'string',
  minLength: 1,
  maxLength: MAX_IDEMPOTENCY_KEY,
  pattern: IDEMPOTENCY_KEY_PATTERN,
  'x-message': `Idempotency-Key must be 1 to ${MAX_IDEMPOTENCY_KEY} letters, digits or . _ ~ + / = : - (a UUID fits)`,
  description: 'Makes the write safe to send again: a repeat with the same key (per user) answers the first result'
}
const IF_MATCH = str('The version(s) the write expects, as ETags (`"v1", "v2"`); naming several heads resolves a conflict')
const BREAK_GLASS = str(`Reads outside the role in an emergency, stating why (doctors and nurses; audited); percent-encoded, at most ${MAX_REASON} characters`)

const WRITE_HEADERS = obj({ 'idempotency-key': IDEMPOTENCY_KEY })
const CHANGE_HEADERS = obj({ 'idempotency-key': IDEMPOTENCY_KEY, 'if-match': IF_MATCH })
const READ_HEADERS = obj({ 'x-break-glass': BREAK_GLASS })

// ---- rows ---------------------------------------------------------------

/** A row body: a JSON object whose columns the table's rules check (the document lists each table's shape) */
export const ROW = named('Row', {
  type: 'object',
  'x-table-row': true,
  description: 'A row of the table the path names: column name to value'
})
const ROW_OR_NULL: JsonSchema = { anyOf: [ROW, { type: 'null' }] }
const VERSION = str('The version this write made (also the ETag)')

const ROW_RESULT = named('RowResult', obj({ id: str('The row\'s key'), version: VERSION, row: ROW_OR_NULL }, ['id', 'version', 'row']))

const ROWS_TAG = ['rows']

export const ROUTE_SCHEMAS = {
  insert: {
    summary: 'Insert a row',
    description: 'Answers 201 with the row as stored and its version as the ETag. A table whose key is one integer makes the key when the body has none.',
    tags: ROWS_TAG,
    params: TABLE_PARAMS,
    querystring: CONSISTENCY_QUERY,
    headers: WRITE_HEADERS,
    body: ROW,
    response: answers({ 201: ROW_RESULT })
  },
  get: {
    summary: 'Read a row by its key',
    tags: ROWS_TAG,
    params: ROW_PARAMS,
    querystring: obj({ consistency: CONSISTENCY, local: flag('Read this node\'s copy only') }, [], { additionalProperties: false, 'x-message': 'Unknown parameter {name}: use consistency or local' }),
    headers: READ_HEADERS,
    response: answers({
      200: obj({
        row: ROW,
        version: str('The row\'s version (also the ETag)'),
        conflicts: arrayOf(obj({ version: str(), row: ROW_OR_NULL }), 'Concurrent versions not yet resolved (a write with If-Match naming them all resolves them)')
      }, ['row', 'version', 'conflicts'])
    })
  },
  replace: {
    summary: 'Replace a row',
    description: 'Every column not given becomes null (or is refused when NOT NULL). With If-Match, answers 412 when the row has moved on.',
    tags: ROWS_TAG,
    params: ROW_PARAMS,
    querystring: CONSISTENCY_QUERY,
    headers: CHANGE_HEADERS,
    body: ROW,
    response: answers({ 200: ROW_RESULT })
  },
  patch: {
    summary: 'Change the columns the body names',
    tags: ROWS_TAG,
    params: ROW_PARAMS,
    querystring: CONSISTENCY_QUERY,
    headers: CHANGE_HEADERS,
    body: ROW,
    response: answers({ 200: ROW_RESULT })
  },
  delete: {
    summary: 'Delete a row',
    description: 'A row other rows refer to is refused (409) unless cascade is given, which deletes those rows too. The history is kept (purge erases it).',
    tags: ROWS_TAG,
    params: ROW_PARAMS,
    querystring: obj({ consistency: CONSISTENCY, cascade: flag('Delete the rows that refer to this one too') }, [], { additionalProperties: false, 'x-message': 'Unknown parameter {name}: use consistency or cascade' }),
    headers: CHANGE_HEADERS,
    response: answers({
      200: obj({ id: str(), version: VERSION, deleted: { type: 'boolean', const: true }, cascaded: int('Rows deleted with it') }, ['id', 'version', 'deleted', 'cascaded'])
    })
  },
  purge: {
    summary: 'Erase a row for good, on every node, history included (admins)',
    tags: ROWS_TAG,
    params: ROW_PARAMS,
    response: answers({
      200: obj({ table: str(), id: str(), purged: { type: 'boolean', const: true }, replicas: int('Replicas that erased it') }, ['table', 'id', 'purged', 'replicas'])
    })
  },
  history: {
    summary: 'A row\'s versions, oldest first, deletes included',
    tags: ROWS_TAG,
    params: ROW_PARAMS,
    querystring: CONSISTENCY_QUERY,
    headers: READ_HEADERS,
    response: answers({
      200: obj({
        versions: arrayOf(obj({ version: str(), parents: arrayOf(str()), row: ROW_OR_NULL, deleted: bool() }, ['version', 'parents', 'row', 'deleted']))
      }, ['versions'])
    })
  },
  list: {
    summary: 'List rows, filtered by equality on columns, a page at a time',
    description: 'Any other query parameter is a filter: `?gender=female&patient_id=7` (columns the role may read; each given once).',
    tags: ROWS_TAG,
    params: TABLE_PARAMS,
    querystring: obj({
      limit: { type: 'integer', minimum: 1, maximum: MAX_LIMIT, 'x-message': `{name} must be an integer from 1 to ${MAX_LIMIT}`, description: `Rows per page, 1 to ${MAX_LIMIT}` },
      cursor: str('Where the page starts: the previous page\'s `next`'),
      consistency: CONSISTENCY,
      where: { type: 'array', items: str(), description: 'A filter `col=value` or a comparison with <>, <, <=, >, >= (repeat the parameter; all must hold)' },
      order_by: str('Sort by this column, `col` or `col:desc` (default: primary key order)')
    }, [], { additionalProperties: { type: 'string', description: 'A filter: column = value', 'x-message': 'Filter {name} must be given once' } }),
    headers: READ_HEADERS,
    response: answers({
      200: obj({ rows: arrayOf(ROW), next: { type: ['string', 'null'], description: 'The cursor of the next page, null on the last' } }, ['rows', 'next'])
    })
  },
  batch: {
    summary: 'Apply several writes that share one patient (or shard key), all or nothing',
    tags: ROWS_TAG,
    querystring: CONSISTENCY_QUERY,
    headers: WRITE_HEADERS,
    body: obj({
      operations: {
        type: 'array',
        minItems: 1,
        maxItems: MAX_BATCH,
        'x-message': `A batch needs an operations array of 1 to ${MAX_BATCH} operations (use import for bulk loads)`,
        items: obj({
          op: { type: 'string', enum: ['insert', 'put', 'patch', 'delete'], 'x-message': '{name} must be one of insert, put, patch, delete' },
          table: str('A table name'),
          id: { type: ['string', 'integer'], description: 'The row\'s key (put, patch, delete; insert takes it from the row)' },
          row: ROW,
          ifMatch: { anyOf: [str(), arrayOf(str())], description: 'The version(s) the operation expects' }
        }, ['op', 'table'], { additionalProperties: false, 'x-message': 'Unknown operation field {name}: use op, table, id, row or ifMatch' })
      }
    }, ['operations'], { additionalProperties: false, 'x-message': 'Unknown field {name}: a batch is { "operations": [...] }' }),
    response: answers({
      201: obj({ results: arrayOf(obj({ table: str(), id: str(), version: VERSION, row: ROW_OR_NULL })) }, ['results'])
    })
  },
  import: {
    summary: 'Stream NDJSON or CSV rows into a table',
    description: 'One row a line (CSV: a header line names the columns). Good lines are imported, bad ones reported by line number.',
    tags: ROWS_TAG,
    consumes: ['application/x-ndjson', 'text/csv'],
    params: TABLE_PARAMS,
    querystring: CONSISTENCY_QUERY,
    response: answers({
      200: obj({
        accepted: int('Rows imported'),
        rejected: arrayOf(obj({ line: int(), error: ERROR_DETAIL }, ['line', 'error'])),
        rejectedNotShown: int('Rejected lines beyond those listed')
      }, ['accepted', 'rejected', 'rejectedNotShown'])
    })
  },
  export: {
    summary: 'Stream tables as NDJSON, one `{"table","row"}` object a line',
    description: 'A plain export needs the right export (admins); an anonymized one is open to every role but holds only what the role may read. The header X-Export-Tables names the tables it holds.',
    tags: ROWS_TAG,
    produces: ['application/x-ndjson'],
    querystring: obj({
      table: { type: 'array', items: str(), description: 'Tables to export (repeat the parameter); all when absent' },
      anonymize: flag('Pseudonymize identifiers and leave out what identifies a patient'),
      consistency: CONSISTENCY
    }, [], { additionalProperties: false, 'x-message': 'Unknown export parameter {name}: use table, anonymize or consistency' }),
    response: answers({ 200: obj({ table: str(), row: { type: 'object', description: 'The columns the role may read; anonymized, each treated by its rule (identifiers become pseudonyms, dates years…), so not the table\'s row shape' } }, ['table', 'row'], { description: 'One NDJSON line' }) })
  },

  // ---- the network and this node ----------------------------------------
  status: {
    summary: 'This node and the network: members, replication, storage, audit',
    tags: ['cluster'],
    response: answers({ 200: { type: 'object', description: 'peerId, version, addresses, members, replicas, replication, storage, audit…' } })
  },
  tables: {
    summary: 'The tables and their columns, keys and references',
    tags: ['cluster'],
    response: answers({
      200: obj({
        tables: arrayOf(obj({
          name: str(),
          columns: arrayOf(obj({ name: str(), type: { type: 'string', enum: ['INT', 'VARCHAR', 'DATE', 'TIMESTAMP', 'DECIMAL'] }, length: int(), precision: int(), scale: int(), notNull: bool(), sensitive: bool() }, ['name', 'type', 'notNull'])),
          primaryKey: arrayOf(str()),
          shardKey: str('The column that places a row on the ring, or global'),
          references: arrayOf(obj({ column: str(), table: str(), refColumn: str() })),
          unique: arrayOf(str()),
          indexed: arrayOf(str())
        }, ['name', 'columns', 'primaryKey', 'shardKey']))
      }, ['tables'])
    })
  },
  peers: {
    summary: 'The members and their states',
    tags: ['cluster'],
    response: answers({ 200: obj({ members: arrayOf(obj({ peerId: str(), state: str(), connected: bool() }, ['peerId', 'state'])) }, ['members']) })
  },
  ring: {
    summary: 'Each member\'s share of the ring, and this node\'s row counts',
    tags: ['cluster'],
    response: answers({ 200: obj({ replicas: int(), members: arrayOf(obj({ peerId: str(), state: str(), share: { type: 'number' } })), localRows: { type: 'object' } }, ['replicas', 'members']) })
  },
  invite: {
    summary: 'What a new machine needs to join: carries the network key (admins)',
    tags: ['cluster'],
    response: answers({ 200: obj({ invite: str(), addresses: arrayOf(str()) }, ['invite', 'addresses']) })
  },
  removeMember: {
    summary: 'Declare a down member gone for good',
    tags: ['cluster'],
    params: obj({ peerId: str('The member\'s peer id') }, ['peerId'], { additionalProperties: false }),
    response: answers({ 200: obj({ peerId: str(), state: str() }, ['peerId', 'state']) })
  },
  leave: {
    summary: 'Hand this node\'s records to their owners and leave the network; the daemon then stops',
    tags: ['cluster'],
    response: answers({ 200: obj({ peerId: str(), state: str(), handedOff: int(), rounds: int() }, ['peerId', 'state']) })
  },
  repair: {
    summary: 'Run one anti-entropy round now (admins)',
    tags: ['cluster'],
    response: answers({ 200: obj({ ranges: int(), recordsCompared: int(), recordsSent: int(), seconds: { type: 'number' } }, ['ranges', 'recordsCompared', 'recordsSent', 'seconds']) })
  },

  inspectRecords: {
    summary: 'This node\'s records in key order, with their digests (admins; the chaos checker reads it)',
    tags: ['cluster'],
    querystring: obj({
      limit: { type: 'integer', minimum: 1, maximum: 10_000, 'x-message': '{name} must be from 1 to 10000' },
      after: str('The last key of the previous page')
    }, [], { additionalProperties: false, 'x-message': 'Unknown parameter {name}: use limit or after' }),
    response: answers({ 200: { type: 'object', description: 'records (key, table, id, token, heads, digest) and next' } })
  },
  inspectSummary: {
    summary: 'This node\'s hints, rebalance state and range summaries (admins; the chaos checker reads it)',
    tags: ['cluster'],
    response: answers({ 200: { type: 'object' } })
  },
  backup: {
    summary: 'Stream every record of the network once, whole with its history, as NDJSON (admins; audited)',
    tags: ['operations'],
    produces: ['application/x-ndjson'],
    querystring: obj({}, [], { additionalProperties: false, 'x-message': 'A backup takes no parameters ({name})' }),
    response: answers({ 200: { type: 'object', description: 'One NDJSON line: a page header or a record with its versions' } })
  },
  restore: {
    summary: 'Write the records of a backup on their owners, merged with what they hold (admins; audited; idempotent)',
    tags: ['operations'],
    consumes: ['application/x-ndjson'],
    response: answers({ 200: obj({ records: int(), versions: int(), changed: int('Records that changed something on some owner'), seconds: { type: 'number' } }, ['records', 'versions', 'changed', 'seconds']) })
  },
  metrics: {
    summary: 'This node\'s metrics in the Prometheus text format',
    tags: ['operations'],
    produces: ['text/plain'],
    response: answers({ 200: str('Prometheus text exposition format 0.0.4') })
  },
  metricsSeries: {
    summary: 'Request rate and latency every 5 s over the last 15 minutes (the console\'s charts)',
    tags: ['operations'],
    response: answers({ 200: obj({ points: arrayOf({ type: 'object' }) }, ['points']) })
  },

  sql: {
    summary: 'Run one SQL statement over the network (the subset README lists); `$1`-style parameters are bound, never spliced',
    tags: ROWS_TAG,
    querystring: CONSISTENCY_QUERY,
    headers: READ_HEADERS,
    body: obj({
      sql: str('One statement: SELECT, INSERT, UPDATE, DELETE, EXPLAIN SELECT or SET'),
      params: arrayOf({ description: 'The value of $1, $2, …' }),
      cursor: { type: ['string', 'null'], description: 'The previous answer\'s `next`' }
    }, ['sql'], { additionalProperties: false, 'x-message': 'Unknown field {name}: a SQL request is {"sql","params","cursor"}' }),
    response: answers({ 200: obj({ columns: arrayOf(str()), rows: arrayOf(arrayOf({})), next: { type: ['string', 'null'] } }, ['columns', 'rows', 'next']) })
  },
  reindex: {
    summary: 'Rebuild one table\'s index entries in this node\'s store (admins), answering NDJSON progress lines then the counts',
    tags: ROWS_TAG,
    produces: ['application/x-ndjson'],
    params: TABLE_PARAMS,
    response: answers({ 200: { type: 'object', description: '{"done","total"} lines, then {"rows","added","removed"} or {"error"}' } })
  },

  // ---- users, roles, audit ----------------------------------------------
  roles: {
    summary: 'Each role\'s rights by table and column',
    tags: ['users'],
    response: answers({
      200: obj({ roles: arrayOf(obj({ role: str(), tables: { type: 'object' }, rights: arrayOf(str()), breakGlass: bool() }, ['role', 'tables', 'rights', 'breakGlass'])) }, ['roles'])
    })
  },
  users: {
    summary: 'The users and their roles',
    tags: ['users'],
    response: answers({ 200: obj({ users: arrayOf(named('User', obj({ user: str(), role: str(), revoked: bool(), revokedAt: { type: ['string', 'null'] } }, ['user', 'role', 'revoked']))) }, ['users']) })
  },
  addUser: {
    summary: 'Make a user; the answer carries its token, shown this once',
    tags: ['users'],
    body: obj({ user: str('The user\'s name'), role: str('A role (GET /v1/roles)') }, ['user', 'role'], { additionalProperties: false, 'x-message': 'Unknown field {name}: a user is { "user", "role" }' }),
    response: answers({ 201: obj({ user: str(), role: str(), token: str('The bearer token, never shown again') }, ['user', 'role', 'token']) })
  },
  revokeUser: {
    summary: 'Revoke a user\'s token on every node',
    tags: ['users'],
    params: obj({ name: str('The user\'s name') }, ['name'], { additionalProperties: false }),
    response: answers({ 200: obj({ user: str(), role: str(), revoked: bool(), revokedAt: { type: ['string', 'null'] } }, ['user', 'role', 'revoked']) })
  },
  audit: {
    summary: 'Audit entries across the network, or (verify=true) a walk of every node\'s chain (auditors and admins)',
    tags: ['audit'],
    querystring: obj({
      patient: str('Entries about this patient id'),
      user: str('Entries by this user'),
      since: str('Entries from this moment on: a date (its midnight UTC) or an ISO 8601 time with its zone; a time without one is 400'),
      verify: { type: 'string', enum: ['true', 'false'], 'x-message': '{name} must be true or false', description: 'Check the chains instead of listing entries' }
    }, [], { additionalProperties: false, 'x-message': 'Unknown audit filter {name}: use patient, user, since or verify' }),
    response: answers({
      200: {
        anyOf: [
          obj({ entries: arrayOf({ type: 'object' }), truncated: bool() }, ['entries', 'truncated']),
          obj({ ok: bool(), checked: int(), nodes: int(), broken: { anyOf: [{ type: 'null' }, obj({ node: str(), seq: int(), problem: str(), message: str() })] } }, ['ok', 'checked', 'nodes', 'broken'])
        ]
      }
    })
  },
  openapi: {
    summary: 'This document: the socket API in OpenAPI 3.1 (any authenticated user)',
    tags: ['meta'],
    response: answers({ 200: obj({ openapi: str(), info: { type: 'object' }, paths: { type: 'object' } }, ['openapi', 'info', 'paths']) })
  }
} satisfies Record<string, FastifySchema & JsonSchema>

// ---- validation -----------------------------------------------------------

const AJV_COMMON: AjvOptions = {
  allErrors: false,
  // The error messages read the failing schema and value.
  verbose: true,
  allowUnionTypes: true,
  removeAdditional: false,
  useDefaults: false,
  keywords: [...SCHEMA_KEYWORDS]
}
/** Query strings, params and headers are text: `limit=10` is read as a number, `table=a` as a list of one */
const partsAjv = new Ajv({ ...AJV_COMMON, coerceTypes: 'array' })
/** JSON bodies are taken as typed: `true` is never the string "true" */
const bodyAjv = new Ajv({ ...AJV_COMMON, coerceTypes: false })

/** Fastify's validator compiler for the route schemas (see `schemaErrors` for the errors) */
export const validatorCompiler: FastifySchemaCompiler<JsonSchema> = ({ schema, httpPart }) => {
  const validate = (httpPart === 'body' ? bodyAjv : partsAjv).compile(schema)
  return (data: unknown) => {
    const ok = validate(data)
    return ok ? { value: data } : { error: schemaError(validate.errors ?? [], httpPart ?? 'body') }
  }
}

/**
 * The 400 a failed schema answers: the first error, as one sentence that
 * names the parameter or field (and, in a body, the column).
 */
export function schemaError (errors: ErrorObject[], part: string): ValidationError {
  const e = errors[0]
  if (e === undefined) return new ValidationError(`The request's ${part} is not valid`)
  const schema = (e.parentSchema ?? {}) as JsonSchema
  const path = e.instancePath.split('/').slice(1).map(s => s.replace(/~1/g, '/').replace(/~0/g, '~'))
  let name = part === 'body'
    ? path.map((s, i) => /^\d+$/.test(s) ? `[${s}]` : i === 0 ? s : `.${s}`).join('')
    : path[0] ?? part
  if (part === 'headers') name = headerName(name)
  // An unknown field inside a body is named where it is: `operations[0]: Unknown operation field rows…`.
  const at = part === 'body' && path.length > 0 ? `${name}: ` : ''
  if (e.keyword === 'additionalProperties') name = String((e.params as { additionalProperty?: string }).additionalProperty)
  const custom = schema['x-message']
  if (part === 'body' && path.length === 0 && e.keyword === 'type') {
    if (e.data === undefined || e.data === null) return new ValidationError('This request needs a JSON body')
    return new ValidationError(`The body must be a JSON object, not ${Array.isArray(e.data) ? 'an array' : JSON.stringify(e.data)}`)
  }
  if (e.keyword === 'type' && Array.isArray(e.data) && part === 'querystring') {
    return new ValidationError(`${name} is given more than once`)
  }
  if (typeof custom === 'string' && e.keyword !== 'required') {
    return new ValidationError(e.keyword === 'additionalProperties' ? at + custom.replace(/\{name\}/g, name) : custom.replace(/\{name\}/g, name))
  }
  if (e.keyword === 'additionalProperties') return new ValidationError(`${at}Unknown ${part === 'body' ? 'field' : 'parameter'} ${name}`)
  return new ValidationError(`${name === '' ? `The ${part}` : name} ${phrase(e)}`)
}

/** `idempotency-key` → `Idempotency-Key` */
export function headerName (name: string): string {
  return name.split('-').map(w => w.charAt(0).toUpperCase() + w.slice(1)).join('-')
}

function phrase (e: ErrorObject): string {
  const p = e.params as Record<string, unknown>
  const got = e.data === undefined ? '' : `, got ${JSON.stringify(e.data)}`
  switch (e.keyword) {
    case 'type': return `must be ${String(p.type).split(',').map(t => t === 'integer' ? 'an integer' : t === 'object' ? 'an object' : t === 'array' ? 'an array' : `a ${t}`).join(' or ')}${got}`
    case 'enum': return `must be one of ${(p.allowedValues as unknown[]).map(String).join(', ')}${got}`
    case 'const': return `must be ${JSON.stringify(p.allowedValue)}${got}`
    case 'required': return `needs ${String(p.missingProperty)}`
    case 'minimum': return `must be at least ${String(p.limit)}${got}`
    case 'maximum': return `must be at most ${String(p.limit)}${got}`
    case 'minLength': return `must be at least ${String(p.limit)} characters long`
    case 'maxLength': return `must be at most ${String(p.limit)} characters long`
    case 'minItems': return `must hold at least ${String(p.limit)} items`
    case 'maxItems': return `must hold at most ${String(p.limit)} items`
    default: return `${e.message ?? 'is not valid'}${got}`
  }
}
