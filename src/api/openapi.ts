/**
 * `GET /v1/openapi.json`: the socket API as an OpenAPI 3.1 document,
 * generated from the route schemas fastify validates requests with
 * (src/api/schemas.ts), so the document cannot say one thing while the
 * routes check another. Every route that declares a schema is in it; a
 * route without one is left out (test/unit/openapi.test.ts lists them).
 */
import type { FastifyInstance, HTTPMethods } from 'fastify'
import type { TableDef } from '../schema/index.js'
import { HIDDEN_COLUMNS } from '../security/rights.js'
import { AUTHENTICATED } from './access.js'
import { NAMED_SCHEMAS, ROUTE_SCHEMAS, headerName, type JsonSchema } from './schemas.js'

export const OPENAPI_ROUTE = '/v1/openapi.json'

/** One route as fastify registered it */
export interface RouteEntry {
  method: string
  /** fastify's form: `/v1/tables/:table/rows` */
  url: string
  schema?: JsonSchema
  /** The right it needs (`config.access`), absent for admin-only routes */
  access?: string
}

const RECORDED = new WeakMap<FastifyInstance, RouteEntry[]>()

/**
 * Records every route registered on `app` from now on (call it before the
 * routes are added). HEAD routes fastify adds for each GET are left out.
 */
export function recordRoutes (app: FastifyInstance): RouteEntry[] {
  const routes: RouteEntry[] = []
  RECORDED.set(app, routes)
  app.addHook('onRoute', route => {
    const methods = (Array.isArray(route.method) ? route.method : [route.method]) as HTTPMethods[]
    const access = (route.config as { access?: string } | undefined)?.access
    for (const method of methods) {
      if (method === 'HEAD') continue
      routes.push({
        method,
        url: route.url,
        ...(route.schema === undefined ? {} : { schema: route.schema as JsonSchema }),
        ...(access === undefined ? {} : { access })
      })
    }
  })
  return routes
}

/** The routes `recordRoutes` has seen on `app` (createApi records its own) */
export function routesOf (app: FastifyInstance): readonly RouteEntry[] {
  return RECORDED.get(app) ?? []
}

/** `/v1/tables/:table/rows` → `/v1/tables/{table}/rows` */
export function openApiPath (url: string): string {
  return url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')
}

export interface DocumentInit {
  /** The package version, `info.version` */
  version: string
  /** The tables whose row shapes the document lists */
  tables: readonly TableDef[]
}

const OPERATION_IDS = new Map<object, string>(Object.entries(ROUTE_SCHEMAS).map(([name, schema]) => [schema, name]))
/** Our schema keywords that mean nothing to a reader of the document */
const INTERNAL_KEYWORDS = new Set(['x-message'])

const STATUS_TEXT: Record<string, string> = {
  200: 'OK',
  201: 'Created',
  default: 'An error: `{ error: { code, message, column? } }`, with the status its code maps to (400, 401, 403, 404, 409, 412, 413, 415, 503…)'
}

/** The OpenAPI 3.1 document of the routes that declare a schema */
export function openApiDocument (routes: readonly RouteEntry[], init: DocumentInit): JsonSchema {
  const components: Record<string, JsonSchema> = {}
  const convert = (schema: unknown): unknown => toDocumentSchema(schema, init.tables, components)
  const paths: Record<string, Record<string, JsonSchema>> = {}
  for (const route of routes) {
    const schema = route.schema
    if (schema === undefined || schema.hide === true) continue
    const operation: JsonSchema = {
      operationId: OPERATION_IDS.get(schema) ?? `${route.method.toLowerCase()} ${route.url}`,
      ...pick(schema, ['summary', 'description', 'tags']),
      'x-required-right': route.access ?? 'admin',
      parameters: [
        ...parameters(schema.params, 'path', convert),
        ...parameters(schema.querystring, 'query', convert),
        ...parameters(schema.headers, 'header', convert)
      ]
    }
    if (schema.body !== undefined) {
      operation.requestBody = { required: true, content: { 'application/json': { schema: convert(schema.body) } } }
    } else if (Array.isArray(schema.consumes)) {
      operation.requestBody = { required: true, content: Object.fromEntries((schema.consumes as string[]).map(type => [type, { schema: { type: 'string' } }])) }
    }
    const produces = Array.isArray(schema.produces) ? schema.produces as string[] : ['application/json']
    const responses: Record<string, JsonSchema> = {}
    for (const [status, body] of Object.entries((schema.response ?? {}) as Record<string, JsonSchema>)) {
      const types = status === 'default' || status.startsWith('4') || status.startsWith('5') ? ['application/json'] : produces
      responses[status.replace(/xx$/, 'XX')] = {
        description: typeof body.description === 'string' ? body.description : STATUS_TEXT[status] ?? status,
        content: Object.fromEntries(types.map(type => [type, { schema: convert(body) }]))
      }
    }
    operation.responses = responses
    const path = openApiPath(route.url)
    paths[path] = { ...paths[path], [route.method.toLowerCase()]: operation }
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Ntsoekhe socket API',
      version: init.version,
      description: 'HTTP/JSON on the daemon\'s Unix socket (`<home>/api.sock`, or `api.socket` in config.json). Every request carries `Authorization: Bearer <token>`; each operation\'s `x-required-right` names the right it needs (`rows`: the role\'s table and column rights).'
    },
    security: [{ bearer: [] }],
    paths: sortKeys(paths),
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'A user\'s token (`ntsoekhe user add` prints one; the first admin\'s is `<home>/admin.token`)' } },
      schemas: sortKeys({ ...components, ...rowSchemas(init.tables) })
    }
  }
}

/** The route that serves the document: any authenticated user may read it */
export function openApiRoute (app: FastifyInstance, routes: readonly RouteEntry[], init: () => DocumentInit): void {
  let document: JsonSchema | undefined
  app.get(OPENAPI_ROUTE, { schema: ROUTE_SCHEMAS.openapi, config: { access: AUTHENTICATED } }, async () => {
    // Built at the first request, when every route is registered (none can be added after the server starts).
    document ??= openApiDocument(routes, init())
    return document
  })
}

function parameters (schema: unknown, where: 'path' | 'query' | 'header', convert: (s: unknown) => unknown): JsonSchema[] {
  if (schema === undefined || schema === null || typeof schema !== 'object') return []
  const s = schema as JsonSchema
  const required = new Set(Array.isArray(s.required) ? s.required as string[] : [])
  const out: JsonSchema[] = []
  for (const [name, property] of Object.entries((s.properties ?? {}) as Record<string, JsonSchema>)) {
    out.push({
      name: where === 'header' ? headerName(name) : name,
      in: where,
      ...(where === 'path' || required.has(name) ? { required: true } : {}),
      ...(typeof property.description === 'string' ? { description: property.description } : {}),
      ...(property.type === 'array' ? { style: 'form', explode: true } : {}),
      schema: convert(property)
    })
  }
  // Any other query parameter (a list's column filters): one form-exploded object.
  const extra = s.additionalProperties
  if (where === 'query' && extra !== undefined && extra !== false) {
    out.push({
      name: 'filters',
      in: 'query',
      style: 'form',
      explode: true,
      ...(typeof (extra as JsonSchema).description === 'string' ? { description: (extra as JsonSchema).description } : {}),
      schema: { type: 'object', additionalProperties: extra === true ? true : convert(extra) }
    })
  }
  return out
}

/**
 * A route schema as the document shows it: named schemas become `$ref`s
 * (their body going once into `components`), a table row lists each
 * table's shape, our internal keywords are dropped.
 */
function toDocumentSchema (schema: unknown, tables: readonly TableDef[], components: Record<string, JsonSchema>): unknown {
  if (Array.isArray(schema)) return schema.map(s => toDocumentSchema(s, tables, components))
  if (schema === null || typeof schema !== 'object') return schema
  const name = NAMED_SCHEMAS.get(schema)
  if (name !== undefined) {
    if (components[name] === undefined) {
      components[name] = {} // claimed first: a schema that holds itself ends in a $ref
      components[name] = toDocumentBody(schema as JsonSchema, tables, components)
    }
    return { $ref: `#/components/schemas/${name}` }
  }
  return toDocumentBody(schema as JsonSchema, tables, components)
}

function toDocumentBody (schema: JsonSchema, tables: readonly TableDef[], components: Record<string, JsonSchema>): JsonSchema {
  const out: JsonSchema = {}
  for (const [k, v] of Object.entries(schema)) {
    if (INTERNAL_KEYWORDS.has(k)) continue
    out[k] = typeof v === 'object' ? toDocumentSchema(v, tables, components) : v
  }
  if (schema['x-table-row'] === true) out.anyOf = tables.map(t => ({ $ref: `#/components/schemas/${rowSchemaName(t)}` }))
  return out
}

export function rowSchemaName (table: TableDef): string {
  return `row.${table.name}`
}

/** Each table's row as JSON Schema, from its definition (src/schema/tables.ts) */
export function rowSchemas (tables: readonly TableDef[]): Record<string, JsonSchema> {
  const out: Record<string, JsonSchema> = {}
  for (const table of tables) {
    const properties: Record<string, JsonSchema> = {}
    // A column no role reads or writes through the API (a token's hash) is not part of its rows.
    const hidden = HIDDEN_COLUMNS[table.name] ?? []
    const columns = table.columns.filter(c => !hidden.includes(c.name))
    for (const col of columns) {
      const nullable = (type: string): string | string[] => col.notNull ? type : [type, 'null']
      switch (col.type) {
        case 'INT':
          properties[col.name] = { type: nullable('integer'), description: 'INT (a string of digits is taken too)' }
          break
        case 'VARCHAR':
          properties[col.name] = { type: nullable('string'), ...(col.length === undefined ? {} : { maxLength: col.length }), description: `VARCHAR(${col.length ?? ''})${col.sensitive === true ? ', stored encrypted' : ''}` }
          break
        case 'DATE':
          properties[col.name] = { type: nullable('string'), format: 'date', description: 'DATE, YYYY-MM-DD' }
          break
        case 'TIMESTAMP':
          properties[col.name] = { type: nullable('string'), format: 'date-time', description: 'TIMESTAMP, ISO 8601' }
          break
        case 'DECIMAL': {
          const p = col.precision ?? 10
          const s = col.scale ?? 2
          properties[col.name] = { type: nullable('string'), pattern: `^-?\\d{1,${p - s}}\\.\\d{${s}}$`, description: `DECIMAL(${p},${s}), as text with ${s} decimals (a number is taken too)` }
          break
        }
      }
    }
    const notNull = columns.filter(c => c.notNull).map(c => c.name)
    out[rowSchemaName(table)] = {
      title: table.name,
      type: 'object',
      description: `A ${table.name} row, keyed by ${table.primaryKey.join(':')}. NOT NULL (needed by insert and replace; a key of one integer may be left out on insert): ${notNull.join(', ')}. A read holds the columns the role may read.`,
      properties,
      additionalProperties: false
    }
  }
  return out
}

function pick (schema: JsonSchema, keys: string[]): JsonSchema {
  return Object.fromEntries(keys.filter(k => schema[k] !== undefined).map(k => [k, schema[k]]))
}

function sortKeys<T> (o: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0))
}
