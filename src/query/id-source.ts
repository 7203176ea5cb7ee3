import { createHash } from 'node:crypto'
import { UnavailableError, hasCode } from '../errors/index.js'
import type { Coordinator } from '../cluster/coordinator.js'
import { UNIQUE_TABLE, internalShard } from '../cluster/messages.js'
import { ID_TAGS, IdGenerator, idMs } from './ids.js'

/** Where a node keeps its id tag and id reservation: the store's node state in a daemon */
export interface IdMeta {
  get: (key: string) => Promise<unknown>
  put: (key: string, value: unknown) => Promise<void>
}

export interface IdSourceComponents {
  coordinator: Coordinator
  peerId: string
  /** @default kept in memory (tests): a restart then claims again */
  meta?: IdMeta
  now?: () => number
}

/** The node-state key of the claimed tag */
const TAG_KEY = 'idTag'
/** The node-state key of the last millisecond (since ID_EPOCH_MS) ids may use before a new reservation */
const RESERVED_KEY = 'idReservedMs'
/** How far ahead one reservation reaches: one durable write per this much id time */
const RESERVE_AHEAD_MS = 10_000
/** Tags tried in one claim whose owners were not all reachable, before the claim gives up for now */
const UNREACHABLE_TRIES = 8

/**
 * Row ids for one node (see ids.ts for why they are unique): claims the node's
 * tag through the ring on first use, and hands an id out only once a durable
 * reservation covers its millisecond.
 */
export class IdSource {
  private readonly c: IdSourceComponents
  private readonly meta: IdMeta
  private starting?: Promise<IdGenerator>
  private reservedMs = -1
  private reserving?: Promise<void>

  constructor (components: IdSourceComponents) {
    this.c = components
    this.meta = components.meta ?? memoryMeta()
  }

  /** The next id; the first call claims the tag (a write at `all`), so it may fail with 503 and succeed later */
  async next (): Promise<number> {
    const generator = await this.generator()
    const id = generator.next()
    const ms = idMs(id)
    while (ms > this.reservedMs) await this.reserve(ms)
    return id
  }

  /** The claimed tag, claiming it now if need be */
  async tag (): Promise<number> {
    await this.generator()
    return await this.meta.get(TAG_KEY) as number
  }

  private async generator (): Promise<IdGenerator> {
    this.starting ??= this.start()
    try {
      return await this.starting
    } catch (err) {
      // Not claimed (no owner set reachable): the next id asks again.
      this.starting = undefined
      throw err
    }
  }

  private async start (): Promise<IdGenerator> {
    const saved = await this.meta.get(TAG_KEY)
    const tag = typeof saved === 'number' ? saved : await this.claim()
    const reserved = await this.meta.get(RESERVED_KEY)
    this.reservedMs = typeof reserved === 'number' ? reserved : -1
    return new IdGenerator(tag, this.c.now, this.reservedMs)
  }

  /**
   * Claims a free tag: from one the peer id picks, the next whose claim
   * record does not exist yet. Each tag's record is read at `all` first, so a
   * tag whose owners are not all reachable is passed over without writing (no
   * tag is spent on a claim that cannot complete). A claim of ours left by an
   * earlier try (a crash, or a write that reached only some owners) is taken
   * up again, but only while no other claimant's version stands beside it.
   */
  private async claim (): Promise<number> {
    const owner = claimOwner(this.c.peerId)
    const first = parseInt(sha256(`tag\u0000${this.c.peerId}`).slice(0, 8), 16) % ID_TAGS
    let unreachable = 0
    const cannot = (err: unknown): UnavailableError => new UnavailableError(`this node cannot make row ids yet: claiming its id tag needs every owner of the tag's record to answer (${(err as Error).message})`)
    for (let i = 0; i < ID_TAGS; i++) {
      const tag = (first + i) % ID_TAGS
      const { id, shard } = tagRecord(tag)
      let holders: Set<unknown>
      try {
        const state = await this.c.coordinator.read(UNIQUE_TABLE, id, shard, { consistency: 'all' })
        holders = new Set((state?.heads ?? []).filter(h => h.row != null).map(h => h.row?.owner))
      } catch (err) {
        if (isUnreachable(err) && ++unreachable < UNREACHABLE_TRIES) continue
        throw cannot(err)
      }
      if (holders.size > 1 || (holders.size === 1 && !holders.has(owner))) continue
      if (holders.size === 0) {
        try {
          await this.c.coordinator.write([{ op: 'insert', table: UNIQUE_TABLE, id, shard, row: { owner } }], { consistency: 'all' })
        } catch (err) {
          // Taken between the read and the write: try the next one.
          if (hasCode(err, 'CONFLICT')) continue
          throw cannot(err)
        }
      }
      await this.meta.put(TAG_KEY, tag)
      return tag
    }
    throw new UnavailableError(`every one of the network's ${ID_TAGS} id tags is taken: no new machine can make row ids`)
  }

  /** Makes ids up to `ms` (and RESERVE_AHEAD_MS beyond) safe to hand out: durable before any is used */
  private async reserve (ms: number): Promise<void> {
    if (this.reserving === undefined) {
      const until = ms + RESERVE_AHEAD_MS
      this.reserving = this.meta.put(RESERVED_KEY, until)
        .then(() => { this.reservedMs = Math.max(this.reservedMs, until) })
        .finally(() => { this.reserving = undefined })
    }
    await this.reserving
  }
}

/** The claim record of a tag, in the unique-value claims table */
export function tagRecord (tag: number): { id: string, shard: string } {
  const id = `_ids.tag.${tag.toString(16).padStart(32, '0')}`
  return { id, shard: internalShard(UNIQUE_TABLE, id) as string }
}

/**
 * The owner a tag claim names: 48 bits of the peer id's hash, as a decimal
 * string (a claim's owner field holds a row id). Two peers share it with a
 * chance of about n^2 / 2^49 for n peers: negligible, and it only matters if
 * both lose a claim's outcome and retry the same tag.
 */
function claimOwner (peerId: string): string {
  return String(parseInt(sha256(`owner\u0000${peerId}`).slice(0, 12), 16))
}

function isUnreachable (err: unknown): boolean {
  return hasCode(err, 'UNAVAILABLE') || hasCode(err, 'TIMEOUT')
}

function sha256 (s: string): string {
  return createHash('sha256').update(s).digest('hex')
}

function memoryMeta (): IdMeta {
  const m = new Map<string, unknown>()
  return { get: async k => m.get(k), put: async (k, v) => { m.set(k, v) } }
}
