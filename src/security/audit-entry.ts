import { createHash } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { fromString } from 'uint8arrays'
import type { AccessEvent } from './principal.js'

/**
 * One audit entry as stored in the internal `_audit` table: a row like any
 * other (string, number or null values), immutable, addressed `<node>.<seq>`.
 * `hash` is SHA-256 over the canonical encoding of every other field, and
 * `prev` is the hash of the entry this node wrote just before (GENESIS for
 * seq 1): a chain per node.
 */
// A type alias, not an interface, so that an entry is a Row (string, number or null values) as it is.
export type AuditBody = {
  /** The peer id of the node that served the request and wrote the entry */
  node: string
  /** This node's sequence number, from 1, without gaps */
  seq: number
  prev: string
  /** When (ISO 8601, UTC) */
  time: string
  user: string | null
  role: string | null
  action: AccessEvent['action']
  table: string | null
  key: string | null
  /** Columns read or written, comma-separated */
  columns: string | null
  outcome: AccessEvent['outcome']
  status: number
  /** Purpose, break-glass reason, or why access was denied */
  reason: string | null
  /** 1 when access was allowed only by break-glass */
  break_glass: number
  /** The patient the entry concerns; it places the entry in that patient's shard */
  patient_id: string | null
}

export type AuditRow = AuditBody & { hash: string }

export const AUDIT_ACTIONS: ReadonlyArray<AccessEvent['action']> = ['read', 'list', 'history', 'insert', 'update', 'delete', 'batch', 'import', 'export', 'backup', 'restore', 'purge', 'login', 'admin', 'seal']

/**
 * Seals. Each batch a node writes ends with a `seal` entry whose `reason` is
 * `seal:<base64 signature>`, by the node's identity key, over its node, seq
 * and `prev`: it vouches for every entry before it, through their hashes.
 * Any member can write rows into `_audit`, but only the node can seal its
 * chain: entries of a sealed chain that no seal follows (past a grace that
 * covers a batch in flight) were not written by that node.
 */
export const SEAL_PREFIX = 'seal:'
/** How long an entry may stand unsealed: a batch and its seal are written together */
export const SEAL_GRACE_MS = 60_000

export function sealBytes (node: string, seq: number, prev: string): Uint8Array {
  return fromString(`ntsoekhe/audit-seal/1\n${node}\n${seq}\n${prev}`, 'utf8')
}

/** Whether a seal entry carries its node's valid signature */
export function sealValid (row: AuditBody): boolean {
  if (row.reason === null || !row.reason.startsWith(SEAL_PREFIX)) return false
  try {
    const key = peerIdFromString(row.node).publicKey
    return key !== undefined && key.verify(sealBytes(row.node, row.seq, row.prev), fromString(row.reason.slice(SEAL_PREFIX.length), 'base64pad')) === true
  } catch {
    return false
  }
}
export const AUDIT_OUTCOMES: ReadonlyArray<AccessEvent['outcome']> = ['ok', 'denied', 'unauthenticated', 'error']

/** The `prev` of a node's first entry */
export const GENESIS = '0'.repeat(64)

/** Every field but `hash`, in the order the hash covers them: changing it breaks every stored chain */
const HASHED_FIELDS = ['node', 'seq', 'prev', 'time', 'user', 'role', 'action', 'table', 'key', 'columns', 'outcome', 'status', 'reason', 'break_glass', 'patient_id'] as const
const ALL_FIELDS = new Set<string>([...HASHED_FIELDS, 'hash'])

/** Longest value each text field may hold (what a peer may send, and what `record` keeps) */
export const AUDIT_LIMITS = { user: 50, role: 50, table: 64, key: 200, columns: 2000, reason: 500 } as const

const NODE_RE = /^[A-Za-z0-9]{1,100}$/
const HASH_RE = /^[0-9a-f]{64}$/
const PATIENT_RE = /^-?\d{1,19}$/
const TIME_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/
/** `<node>.<seq>`: the id of an `_audit` row */
export const AUDIT_ID_RE = /^[A-Za-z0-9]{1,100}\.[1-9]\d{0,15}$/

export function auditId (node: string, seq: number): string {
  return `${node}.${seq}`
}

/** Where an entry lives: with the patient's chart (the same token), else in its node's own shard */
export function auditShard (row: { node: string, patient_id: string | null }): string {
  return row.patient_id === null ? `audit:${row.node}` : `patient_id:${row.patient_id}`
}

export function hashEntry (row: AuditBody): string {
  // HASHED_FIELDS spelled out: the same encoding, without a closure call per field.
  const fields = [row.node, row.seq, row.prev, row.time, row.user, row.role, row.action, row.table, row.key, row.columns, row.outcome, row.status, row.reason, row.break_glass, row.patient_id]
  return createHash('sha256').update(JSON.stringify(fields)).digest('hex')
}

/** A patient id as the schema writes it (an integer), or null when the event names none or a malformed one */
export function patientOf (id: string | undefined): string | null {
  return id !== undefined && PATIENT_RE.test(id) && Number.isSafeInteger(Number(id)) ? String(Number(id)) : null
}

/** A text field cut to its limit: an entry is kept even when a caller hands over too much */
export function clip (s: string | undefined, field: keyof typeof AUDIT_LIMITS): string | null {
  if (s === undefined) return null
  const max = AUDIT_LIMITS[field]
  return s.length <= max ? s : s.slice(0, max - 1) + '…'
}

/**
 * Checks a row that claims to be the audit entry `id`: exactly the fields,
 * each of its type and length, node and seq matching the id. Returns what is
 * wrong, or undefined. The hash is not checked here: a changed entry is
 * verify's to find, not a reason to refuse a copy.
 */
export function auditRowProblem (id: string, input: unknown): string | undefined {
  const r = input as Record<string, unknown>
  if (r === null || typeof r !== 'object' || Array.isArray(r)) return 'an audit entry must be an object'
  const keys = Object.keys(r)
  if (keys.length !== ALL_FIELDS.size || !keys.every(k => ALL_FIELDS.has(k))) return 'an audit entry has exactly the audit fields'
  if (typeof r.node !== 'string' || !NODE_RE.test(r.node)) return 'malformed audit node'
  if (!Number.isSafeInteger(r.seq) || (r.seq as number) < 1) return 'malformed audit seq'
  if (auditId(r.node, r.seq as number) !== id) return `audit entry ${String(r.node)}.${String(r.seq)} does not match id ${id}`
  if (typeof r.prev !== 'string' || !HASH_RE.test(r.prev) || typeof r.hash !== 'string' || !HASH_RE.test(r.hash)) return 'malformed audit hash'
  if (typeof r.time !== 'string' || !TIME_RE.test(r.time) || Number.isNaN(Date.parse(r.time))) return 'malformed audit time'
  for (const f of Object.keys(AUDIT_LIMITS) as Array<keyof typeof AUDIT_LIMITS>) {
    const v = r[f]
    if (v !== null && (typeof v !== 'string' || v.length > AUDIT_LIMITS[f])) return `malformed audit ${f}`
  }
  if (!AUDIT_ACTIONS.includes(r.action as AccessEvent['action'])) return 'unknown audit action'
  if (!AUDIT_OUTCOMES.includes(r.outcome as AccessEvent['outcome'])) return 'unknown audit outcome'
  if (!Number.isSafeInteger(r.status) || (r.status as number) < 100 || (r.status as number) > 599) return 'malformed audit status'
  if (r.break_glass !== 0 && r.break_glass !== 1) return 'malformed audit break_glass'
  if (r.patient_id !== null && (typeof r.patient_id !== 'string' || patientOf(r.patient_id) !== r.patient_id)) return 'malformed audit patient_id'
  return undefined
}

/** The first place a node's chain breaks */
export interface BrokenLink {
  node: string
  seq: number
  problem: 'missing' | 'altered' | 'wrong-prev' | 'forged' | 'unsealed'
  message: string
}

export interface VerifyResult {
  ok: boolean
  /** Entries checked */
  checked: number
  /** Nodes whose chains were walked */
  nodes: number
  broken: BrokenLink | null
}

/** What verify keeps of one entry: enough to check its link and its hash */
export interface ChainLink {
  seq: number
  prev: string
  hash: string
  intact: boolean
  versions: number
  /** When it was written (ms) */
  time: number
  /** For a seal: whether its signature is the node's */
  seal?: boolean
}

export function toLink (row: AuditRow, versions = 1): ChainLink {
  const link: ChainLink = { seq: row.seq, prev: row.prev, hash: row.hash, intact: hashEntry(row) === row.hash, versions, time: Date.parse(row.time) }
  if (row.action === 'seal') link.seal = sealValid(row)
  return link
}

/**
 * Walks each node's chain from seq 1 (nodes in id order) and names the first
 * broken link: a seq with no entry, an entry whose hash does not match its
 * fields (or that has more than one version), or one whose `prev` is not the
 * hash of the entry before. `expected` gives, for a node, the last seq known
 * to be written (this node's own head), so a removed last entry is found too.
 */
export function verifyChains (links: Map<string, Map<number, ChainLink>>, expected: Map<string, number> = new Map(), now = Date.now()): VerifyResult {
  let checked = 0
  const nodes = [...new Set([...links.keys(), ...expected.keys()])].sort()
  for (const node of nodes) {
    const chain = links.get(node) ?? new Map<number, ChainLink>()
    let last = expected.get(node) ?? 0
    for (const seq of chain.keys()) if (seq > last) last = seq
    let prev = GENESIS
    let sealed = 0
    let sealing = false
    for (let seq = 1; seq <= last; seq++) {
      const link = chain.get(seq)
      const broken = (problem: BrokenLink['problem'], what: string): VerifyResult =>
        ({ ok: false, checked, nodes: nodes.length, broken: { node, seq, problem, message: `node ${node} entry ${seq}: ${what}` } })
      if (link === undefined) return broken('missing', `missing (the chain runs to ${last})`)
      if (!link.intact) return broken('altered', 'altered: its hash does not match its fields')
      if (link.versions > 1) return broken('altered', `altered: it has ${link.versions} versions, an entry is written once`)
      if (link.prev !== prev) return broken('wrong-prev', `wrong previous hash: it does not follow entry ${seq - 1}`)
      if (link.seal === false) return broken('forged', 'forged: a seal that is not signed by its node')
      if (link.seal === true) { sealed = seq; sealing = true }
      prev = link.hash
      checked++
    }
    // A chain its node seals stays sealed: an entry no seal follows, past the grace, is not the node's.
    if (sealing) {
      for (let seq = sealed + 1; seq <= last; seq++) {
        const link = chain.get(seq) as ChainLink
        if (now - link.time > SEAL_GRACE_MS) {
          return { ok: false, checked, nodes: nodes.length, broken: { node, seq, problem: 'unsealed', message: `node ${node} entry ${seq}: unsealed: no seal of its node follows it (written by another member, or its batch was cut off)` } }
        }
      }
    }
  }
  return { ok: true, checked, nodes: nodes.length, broken: null }
}
