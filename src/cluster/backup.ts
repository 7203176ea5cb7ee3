import { ForbiddenError, InvalidMessageError, UnavailableError } from '../errors/index.js'
import { parseBackupRecord, toBackupRecord } from '../backup/record.js'
import { mergeStates, type RecordState, type Store, type WholeRecord } from '../storage/store.js'
import { compareVersions } from '../storage/version.js'
import { chunkBy, MAX_ENTRIES_PER_MESSAGE, resultOk } from './apply-batcher.js'
import { MAX_STATES } from './messages.js'
import type { HashRing } from './ring.js'
import type { PeerTransport } from './transport.js'

export interface BackupServiceComponents {
  store: Store
  transport: PeerTransport
  peerId: string
  ring: HashRing
  /** Copies of every record (N) */
  replicas: number
  /** A record's owners, in preference order (every member for a global table) */
  owners: (table: string, token: string) => string[]
  isAlive: (peerId: string) => boolean
  /** Whether a peer may use the backup protocol (a current member); reports a refusal itself */
  mayServe: (peerId: string) => boolean
  /** Sees every version restored (the node's hybrid clock), so later writes sort after them */
  observe: (version: string) => void
  /**
   * Brings this node's copies of the ranges it owns up to date with their
   * co-owners (an anti-entropy round), before it reads them: a record still
   * on its way to this node (a hand-off after a join not finished yet) is then
   * in the backup too
   */
  catchUp?: () => Promise<unknown>
  log?: (msg: string, ...args: unknown[]) => void
}

export interface BackupServiceInit {
  /** Wait for one peer's page or restore batch, ms. @default 30000 */
  timeoutMs?: number
}

/** One stretch of record keys [from, to) and the owner it is read from */
export interface BackupPiece {
  from?: string
  to?: string
  reader: string
}

/** Records a page read on this node holds */
const LOCAL_PAGE = 1000
/** Records a page asked of a peer holds (its reply stays well under the frame limit) */
const REMOTE_PAGE = 250
/**
 * Bytes of records one page reply carries, at most (one larger record goes
 * alone), unless a shard's records go on past it: those stay in one reply up
 * to PAGE_REPLY_MAX_BYTES, as the page read them from one snapshot
 */
const PAGE_REPLY_BYTES = 2 * 1024 * 1024
const PAGE_REPLY_MAX_BYTES = 6 * 1024 * 1024
const MAX_KEY = 300

/**
 * Backup and restore across the network. A backup reads every record once:
 * each arc of the ring from one of its owners (this node when it owns it,
 * else the first live one), a page at a time, each page from one LevelDB
 * snapshot of that owner, so a record is captured whole as it was at one
 * moment. A restore sends each record (every version, then its state) to
 * each of its owners, which apply and merge it as a hand-off does: a record
 * lands on its N owners, and restoring it again changes nothing.
 */
export class BackupService {
  private readonly c: BackupServiceComponents
  private readonly timeoutMs: number

  constructor (components: BackupServiceComponents, init: BackupServiceInit = {}) {
    this.c = components
    this.timeoutMs = init.timeoutMs ?? 30_000
    components.transport.handle('backup', async (msg, from) => await this.onMessage(msg, from), { accept: peer => components.mayServe(peer) })
  }

  /**
   * Where each stretch of the key space is read: the ring's arcs, each from
   * this node when it owns the arc, else from its first live owner; arcs
   * next to each other read from the same node are joined.
   */
  plan (): BackupPiece[] {
    const arcs = this.c.ring.arcs(this.c.replicas)
    const first = arcs[0]
    if (first === undefined) return [{ reader: this.c.peerId }]
    const pick = (owners: string[], what: string): string => {
      if (owners.includes(this.c.peerId)) return this.c.peerId
      const live = owners.find(p => this.c.isAlive(p))
      if (live === undefined) throw new UnavailableError(`No owner of the token range ${what} is up (${owners.join(', ')}): a backup reads every range`)
      return live
    }
    const pieces: BackupPiece[] = []
    // Keys of token t start `t!`: every key of a token above `a` is at or past `a"`, every key of one up to `b` is below `b"`.
    const head = pick(first.owners, `up to ${first.upTo}`)
    pieces.push({ to: first.upTo + '"', reader: head })
    for (const arc of arcs.slice(1)) {
      const reader = pick(arc.owners, `${arc.after ?? ''}..${arc.upTo}`)
      const last = pieces[pieces.length - 1] as BackupPiece
      if (last.reader === reader) last.to = arc.upTo + '"'
      else pieces.push({ from: (arc.after as string) + '"', to: arc.upTo + '"', reader })
    }
    // The tokens after the last point belong to the first arc.
    const last = pieces[pieces.length - 1] as BackupPiece
    if (last.reader === head) delete last.to
    else pieces.push({ from: (arcs[arcs.length - 1] as { upTo: string }).upTo + '"', reader: head })
    return pieces
  }

  /** Every record of the network once, a page at a time, in key order */
  async * records (signal?: AbortSignal): AsyncGenerator<WholeRecord[]> {
    if (this.c.catchUp !== undefined) {
      await this.c.catchUp().catch((err: unknown) => { this.c.log?.('backup: the anti-entropy round before reading failed (%s); reading what this node holds', (err as Error).message) })
    }
    for (const piece of this.plan()) {
      let pending = this.page(piece, undefined)
      for (;;) {
        if (signal?.aborted === true) throw new UnavailableError('The backup was cancelled')
        const page = await pending
        // The next page is read while this one is written out.
        if (page.next !== undefined) {
          pending = this.page(piece, page.next)
          pending.catch(() => {})
        }
        if (page.records.length > 0) yield page.records
        if (page.next === undefined) break
      }
    }
  }

  private async page (piece: BackupPiece, after: string | undefined): Promise<{ records: WholeRecord[], next?: string }> {
    const page = piece.reader === this.c.peerId
      ? await this.c.store.backupPage({ ...range(piece), ...(after === undefined ? {} : { after }), limit: LOCAL_PAGE })
      : await this.remotePage(piece, after)
    // Nearly every record holds all its versions: a promise each only for a page with one that does not.
    if (!page.records.some(missingParents)) return page
    return { ...page, records: await Promise.all(page.records.map(async r => missingParents(r) ? await this.completed(piece.reader, r) : r)) }
  }

  /**
   * A record whose reader lacks some of its versions (a version's parent is
   * not among them: a write that reached it after the one that follows it,
   * or a version it knows only by id) is completed from its other live
   * owners, their versions and state merged in, until none is missing.
   */
  private async completed (reader: string, record: WholeRecord): Promise<WholeRecord> {
    const { table, token, id } = record.state
    const key = `${token}!${table}!${id}`
    let out = record
    for (const peer of this.c.owners(table, token).filter(p => p !== reader && (p === this.c.peerId || this.c.isAlive(p)))) {
      const one = { from: key, to: key + '\x00', reader: peer }
      let other: WholeRecord | undefined
      try {
        other = (peer === this.c.peerId ? await this.c.store.backupPage({ from: key, to: one.to, limit: 1 }) : await this.remotePage(one, undefined)).records[0]
      } catch (err) {
        this.c.log?.('backup: completing %s %s from %s failed: %s', table, id, peer, (err as Error).message)
        continue
      }
      if (other === undefined) continue
      out = mergeWhole(out, other)
      if (!missingParents(out)) break
    }
    return out
  }

  /** Records this node holds now: what a progress bar can expect of the whole network, given N copies */
  async estimate (): Promise<number> {
    const local = Object.values(await this.c.store.countRows()).reduce((a, b) => a + b, 0)
    const members = Math.max(this.c.ring.size, 1)
    return Math.round(local * members / Math.min(this.c.replicas, members))
  }

  /** Refuses a restore while a member is down: every record goes to all of its owners */
  checkOwnersUp (): void {
    const down = this.c.ring.list().map(m => m.peerId).filter(p => p !== this.c.peerId && !this.c.isAlive(p))
    if (down.length > 0) throw new UnavailableError(`A restore writes every record on all of its owners, and ${down.join(', ')} ${down.length === 1 ? 'is' : 'are'} not up: start ${down.length === 1 ? 'it' : 'them'}, or remove ${down.length === 1 ? 'it' : 'them'} from the network (ntsoekhe remove)`)
  }

  /**
   * Writes records on every one of their owners (apply every version, then
   * merge the state). Answers how many of them changed anything on some
   * owner: none when they were all there already.
   */
  async restore (records: WholeRecord[]): Promise<{ changed: number }> {
    const byOwner = new Map<string, number[]>()
    records.forEach((r, i) => {
      for (const owner of this.c.owners(r.state.table, r.state.token)) {
        let list = byOwner.get(owner)
        if (list === undefined) { list = []; byOwner.set(owner, list) }
        list.push(i)
      }
    })
    const changed = new Array<boolean>(records.length).fill(false)
    await Promise.all([...byOwner].map(async ([owner, indexes]) => {
      for (const part of chunkBy(indexes, MAX_STATES, [{ size: i => (records[i] as WholeRecord).versions.length, max: MAX_ENTRIES_PER_MESSAGE }])) {
        const batch = part.map(i => records[i] as WholeRecord)
        const results = owner === this.c.peerId ? await this.restoreHere(batch) : await this.restoreOn(owner, batch)
        part.forEach((i, j) => { if (results[j] === true) changed[i] = true })
      }
    }))
    return { changed: changed.filter(Boolean).length }
  }

  /**
   * Takes records into this node's store as a hand-off does (every version,
   * then the state, in one durable batch; a record held whole already is
   * recognised without opening it); per record, whether it changed anything
   */
  private async restoreHere (records: WholeRecord[]): Promise<boolean[]> {
    for (const r of records) for (const v of r.versions) this.c.observe(v.version)
    return (await this.c.store.receive(records)).map(o => o === 'merged')
  }

  private async restoreOn (peer: string, records: WholeRecord[]): Promise<boolean[]> {
    const reply = await this.c.transport.request(peer, 'backup', { type: 'restore', records: records.map(toBackupRecord) }, { timeout: this.timeoutMs })
    return records.map((r, i) => {
      if (!resultOk(reply, i)) throw new UnavailableError(`${peer} did not take ${r.state.table} ${r.state.id} of the restore`)
      return ((reply as { results: Array<{ changed?: unknown }> }).results[i] as { changed?: unknown }).changed === true
    })
  }

  private async remotePage (piece: BackupPiece, after: string | undefined): Promise<{ records: WholeRecord[], next?: string }> {
    const msg = { type: 'page', ...range(piece), ...(after === undefined ? {} : { after }), limit: REMOTE_PAGE }
    let reply: unknown
    try {
      reply = await this.c.transport.request(piece.reader, 'backup', msg, { timeout: this.timeoutMs })
    } catch (err) {
      throw new UnavailableError(`Reading records from ${piece.reader} failed: ${(err as Error).message}`, { cause: err })
    }
    return checkPageReply(reply, piece, after)
  }

  /** Serves the backup protocol: to members only */
  private async onMessage (raw: unknown, from: string): Promise<unknown> {
    if (!this.c.mayServe(from)) throw new ForbiddenError(`${from} is not a member of this network`)
    const msg = raw as Record<string, unknown> | null
    if (msg === null || typeof msg !== 'object') bad('message must be an object')
    switch (msg.type) {
      case 'page': {
        for (const k of ['from', 'to', 'after'] as const) {
          if (msg[k] !== undefined && (typeof msg[k] !== 'string' || msg[k].length > MAX_KEY)) bad(`malformed ${k}`)
        }
        if (!Number.isSafeInteger(msg.limit) || (msg.limit as number) < 1 || (msg.limit as number) > LOCAL_PAGE) bad('page limit out of range')
        const page = await this.c.store.backupPage({
          ...(msg.from === undefined ? {} : { from: msg.from as string }),
          ...(msg.to === undefined ? {} : { to: msg.to as string }),
          ...(msg.after === undefined ? {} : { after: msg.after as string }),
          limit: msg.limit as number
        })
        // Cut to the reply's byte budget: the asker resumes after the last record sent.
        const records = []
        let bytes = 0
        for (const r of page.records) {
          const line = toBackupRecord(r)
          // Bytes as the wire carries them (UTF-8), not characters: the frame limit is in bytes, and a script of
          // two or three bytes a character would take a reply of 6 Mi characters past it.
          const size = Buffer.byteLength(JSON.stringify(line), 'utf8')
          const last = records[records.length - 1] as { token: string, table: string, id: string } | undefined
          if (last !== undefined && bytes + size > (last.token === line.token ? PAGE_REPLY_MAX_BYTES : PAGE_REPLY_BYTES)) {
            return { records, next: `${last.token}!${last.table}!${last.id}` }
          }
          records.push(line)
          bytes += size
        }
        return { records, ...(page.next === undefined ? {} : { next: page.next }) }
      }
      case 'restore': {
        if (!Array.isArray(msg.records) || msg.records.length === 0 || msg.records.length > MAX_STATES) bad(`restore needs 1 to ${MAX_STATES} records`)
        const records = msg.records.map(r => parseBackupRecord(r))
        // One record goes alone whatever its size (the sender splits by versions); several stay under a message's share.
        if (records.length > 1 && records.reduce((n, r) => n + r.versions.length, 0) > MAX_ENTRIES_PER_MESSAGE * 5) bad('too many versions in one restore message')
        const changed = await this.restoreHere(records)
        return { results: changed.map(c => ({ ok: true, changed: c })) }
      }
      default:
        bad(`unknown message type ${JSON.stringify(msg.type)?.slice(0, 40)}`)
    }
  }
}

/** Whether some version of a record names a parent the record does not hold */
export function missingParents ({ versions }: WholeRecord): boolean {
  // Versions that name no parent (a record written once) lack none: no set to build.
  if (versions.every(v => v.parents.length === 0)) return false
  const held = new Set(versions.map(v => v.version))
  return versions.some(v => v.parents.some(p => !held.has(p)))
}

/** Two owners' copies of one record as one: every version either holds, and their states merged */
export function mergeWhole (a: WholeRecord, b: WholeRecord): WholeRecord {
  const versions = new Map(a.versions.map(v => [v.version, v]))
  for (const v of b.versions) if (!versions.has(v.version)) versions.set(v.version, v)
  const state = mergeStates([a.state, b.state]) as RecordState
  return { state, versions: [...versions.values()].sort((x, y) => compareVersions(x.version, y.version)) }
}

function range (piece: BackupPiece): { from?: string, to?: string } {
  return { ...(piece.from === undefined ? {} : { from: piece.from }), ...(piece.to === undefined ? {} : { to: piece.to }) }
}

/** A peer's page: records in the range asked for, after the cursor, in key order */
function checkPageReply (reply: unknown, piece: BackupPiece, after: string | undefined): { records: WholeRecord[], next?: string } {
  const p = reply as { records?: unknown, next?: unknown } | null
  if (p === null || typeof p !== 'object' || !Array.isArray(p.records) || p.records.length > 2 * LOCAL_PAGE) bad('malformed page reply')
  let previous = after
  const records = p.records.map(r => {
    const record = parseBackupRecord(r)
    const key = `${record.state.token}!${record.state.table}!${record.state.id}`
    if ((piece.from !== undefined && key < piece.from) || (piece.to !== undefined && key >= piece.to) || (previous !== undefined && key <= previous)) bad('a record outside the range asked for')
    previous = key
    return record
  })
  if (p.next === undefined) return { records }
  if (typeof p.next !== 'string' || p.next !== previous) bad('a page cursor that is not its last record')
  return { records, next: p.next }
}

function bad (message: string): never {
  throw new InvalidMessageError(`backup: ${message}`)
}
