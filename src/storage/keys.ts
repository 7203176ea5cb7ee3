import type { Value } from '../schema/index.js'

/** Separator inside LevelDB keys; table names, ids and tokens never contain it */
export const SEP = '!'

/** Key of a record: ring token first, so a token range is one contiguous scan */
export function recordKey (token: string, table: string, id: string): string {
  return token + SEP + table + SEP + id
}

/** An index value that cannot contain the separator, with its type kept apart (7 vs "7") */
export function encodeIndexValue (value: Value): string {
  if (value === null) return 'z'
  if (typeof value === 'number') return 'n' + String(value)
  return 's' + encodeURIComponent(value).replace(/!/g, '%21')
}
