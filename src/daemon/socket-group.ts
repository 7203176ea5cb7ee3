import { readFile } from 'node:fs/promises'
import { ValidationError } from '../errors/index.js'

/** The numeric id of a group given by name (from /etc/group) or by number */
export async function groupId (group: string, groupFile = '/etc/group'): Promise<number> {
  if (/^\d+$/.test(group)) return Number(group)
  let text: string
  try {
    text = await readFile(groupFile, 'utf8')
  } catch (err) {
    throw new ValidationError(`api.group: cannot read ${groupFile} to find group ${group}; give its numeric id instead`, { cause: err })
  }
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':')
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid)
  }
  throw new ValidationError(`api.group: no group ${group} in ${groupFile}`)
}
