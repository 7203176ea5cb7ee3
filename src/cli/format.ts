/** Columns printed whole however long: a peer id, an address or a version is pasted into other commands (`remove`, `--if-match`) */
const WHOLE_COLUMNS = new Set(['peerId', 'node', 'addresses', 'version', 'parents'])
/** Widest a cell of any other column is printed; longer ones end in `…` */
const MAX_CELL = 40

/** Renders rows as an aligned text table, as a person reads it in a terminal */
export function renderTable (rows: Array<Record<string, unknown>>, columns?: string[]): string {
  if (rows.length === 0) return '(no rows)\n'
  const cols = columns ?? [...new Set(rows.flatMap(r => Object.keys(r)))]
  const cells = rows.map(r => cols.map(c => cell(r[c])))
  const widths = cols.map((c, i) => Math.min(WHOLE_COLUMNS.has(c) ? Infinity : MAX_CELL, Math.max(c.length, ...cells.map(row => (row[i] ?? '').length))))
  const line = (values: string[]): string => values.map((v, i) => clip(v, widths[i] ?? 0).padEnd(widths[i] ?? 0)).join('  ').trimEnd()
  const out = [line(cols), line(widths.map(w => '-'.repeat(w))), ...cells.map(line)]
  return out.join('\n') + '\n'
}

/** Renders one object as `key: value` lines; a list of plain values is one value a line below its key */
export function renderObject (obj: Record<string, unknown>, indent = '', value: (key: string, v: unknown) => string = (_, v) => cell(v)): string {
  let out = ''
  for (const [k, v] of Object.entries(obj)) {
    if (Array.isArray(v) && v.length > 0 && v.every(x => x === null || typeof x !== 'object')) {
      out += `${indent}${k}:\n${v.map(x => `${indent}  ${cell(x)}\n`).join('')}`
    } else if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      out += `${indent}${k}:\n${renderObject(v as Record<string, unknown>, indent + '  ', value)}`
    } else {
      out += `${indent}${k}: ${value(k, v)}\n`
    }
  }
  return out
}

/**
 * A value of a `key: value` line of a report (status): a time (`...At`, epoch ms) as ISO UTC,
 * nothing as `none`. Not for rows, where `none` could be a column's text.
 */
export function reportValue (key: string, v: unknown): string {
  if (v === null || v === undefined || (Array.isArray(v) && v.length === 0)) return 'none'
  if (/At$/.test(key) && typeof v === 'number' && Number.isFinite(v) && v > 1e11) return new Date(v).toISOString()
  return cell(v)
}

function cell (v: unknown): string {
  if (v === null || v === undefined) return ''
  if (typeof v === 'object') return JSON.stringify(v)
  return String(v)
}

function clip (s: string, width: number): string {
  return s.length <= width ? s : s.slice(0, Math.max(0, width - 1)) + '…'
}
