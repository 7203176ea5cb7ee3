import { formatVersion, parseVersion } from './version.js'

/**
 * The compact stored form of a record's `seen` and `superseded` lists
 * (storage format 5). A record lists up to KNOWN_WINDOW versions besides its
 * heads, and as JSON arrays each costs its full 33-odd characters twice over
 * (a version the record replaced is both seen and superseded): several times
 * the row itself. Here each version is listed once, in order, as the
 * base-36 difference of its wall clock from the one before, with its
 * counter, writer and flags only when they are not the usual ones:
 *
 *     <tag>,<tag>…;<entry> <entry>…
 *     entry = <wall delta>[.<counter>][~<tag index>][*<flags>]
 *
 * Tags are the writers' node tags, most frequent first (index 0 is left
 * out); flags are 1 seen, 2 superseded, 3 both (left out). Versions that are
 * not hybrid-clock versions (none the network accepts) are kept verbatim in
 * `raw`, as `[version, flags]`. Decoding gives both lists in version order,
 * which is all that their users rely on: they are sets.
 */
export interface StoredVersionLists {
  v: string
  raw?: Array<[string, 1 | 2 | 3]>
}

const SEEN = 1
const SUPERSEDED = 2
const BOTH = 3

/** The stored form of a record's lists */
export function encodeVersionLists (seen: readonly string[], superseded: readonly string[]): StoredVersionLists {
  // A record's first version, seen and replaced by nothing (most records an insert or a hand-off writes): its one entry directly.
  if (seen.length === 1 && superseded.length === 0) {
    const only = seen[0] as string
    const h = parseVersion(only)
    if (h !== undefined && formatVersion(h) === only) return { v: `${h.node};${h.wall.toString(36)}${h.counter === 0 ? '' : '.' + h.counter.toString(36)}*${SEEN}` }
  }
  const flags = new Map<string, number>()
  for (const v of seen) flags.set(v, (flags.get(v) ?? 0) | SEEN)
  for (const v of superseded) flags.set(v, (flags.get(v) ?? 0) | SUPERSEDED)
  const versions = [...flags.keys()].sort()
  const parsed: Array<{ wall: number, counter: number, node: string, flags: number }> = []
  const raw: Array<[string, 1 | 2 | 3]> = []
  const tagCount = new Map<string, number>()
  for (const v of versions) {
    const h = parseVersion(v)
    const f = flags.get(v) as 1 | 2 | 3
    // Only what decodes back to the very same string is encoded; anything else is kept as it is.
    if (h === undefined || formatVersion(h) !== v) { raw.push([v, f]); continue }
    parsed.push({ ...h, flags: f })
    tagCount.set(h.node, (tagCount.get(h.node) ?? 0) + 1)
  }
  const tags = [...tagCount].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([t]) => t)
  const index = new Map(tags.map((t, i) => [t, i]))
  let wall = 0
  const entries = parsed.map(p => {
    let e = (p.wall - wall).toString(36)
    wall = p.wall
    if (p.counter !== 0) e += '.' + p.counter.toString(36)
    const i = index.get(p.node) as number
    if (i !== 0) e += '~' + i.toString(36)
    if (p.flags !== BOTH) e += '*' + String(p.flags)
    return e
  })
  const out: StoredVersionLists = { v: tags.join(',') + ';' + entries.join(' ') }
  if (raw.length > 0) out.raw = raw
  return out
}

/** A record's lists from their stored form; throws on a malformed one */
export function decodeVersionLists (stored: StoredVersionLists): { seen: string[], superseded: string[] } {
  const text = stored.v
  if (typeof text !== 'string' || !text.includes(';')) throw new Error('malformed version lists')
  const semi = text.indexOf(';')
  const tags = semi === 0 ? [] : text.slice(0, semi).split(',')
  const body = text.slice(semi + 1)
  const seen: string[] = []
  const superseded: string[] = []
  let wall = 0
  if (body !== '') {
    for (const e of body.split(' ')) {
      const m = ENTRY_RE.exec(e)
      if (m === null) throw new Error(`malformed version list entry ${e.slice(0, 40)}`)
      wall += parseInt(m[1] as string, 36)
      const counter = m[2] === undefined ? 0 : parseInt(m[2], 36)
      const node = tags[m[3] === undefined ? 0 : parseInt(m[3], 36)]
      if (node === undefined) throw new Error(`version list entry ${e} names no writer`)
      const flags = m[4] === undefined ? BOTH : Number(m[4])
      const v = formatVersion({ wall, counter, node })
      if ((flags & SEEN) !== 0) seen.push(v)
      if ((flags & SUPERSEDED) !== 0) superseded.push(v)
    }
  }
  for (const [v, flags] of stored.raw ?? []) {
    if ((flags & SEEN) !== 0) seen.push(v)
    if ((flags & SUPERSEDED) !== 0) superseded.push(v)
  }
  return { seen, superseded }
}

const ENTRY_RE = /^([0-9a-z]+)(?:\.([0-9a-z]+))?(?:~([0-9a-z]+))?(?:\*([123]))?$/
