import { randomBytes } from 'node:crypto'
import { readdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'

/** Every byte of every file under `root`, LevelDB logs and tables included */
export async function allBytes (root: string): Promise<Buffer> {
  const parts: Buffer[] = []
  for (const name of await readdir(root, { recursive: true })) {
    const path = join(root, name)
    if ((await stat(path)).isFile()) parts.push(await readFile(path))
  }
  return Buffer.concat(parts)
}

/**
 * A value no other stored byte shares 4 characters with, so LevelDB's
 * compression (snappy replaces a repeated substring by a reference) cannot
 * hide it, and a search of the files finds it exactly when it is there:
 * letters g-z only, where versions, tokens and hashes are hex.
 */
export function unique (tag: string): string {
  return `${tag.slice(0, 1)}${[...randomBytes(16)].map(b => String.fromCharCode(103 + (b % 20))).join('')}`
}
