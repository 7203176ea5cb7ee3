import { randomBytes } from 'node:crypto'
import { open, readdir, readFile, stat } from 'node:fs/promises'
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

/** Letters that are never hex digits (versions, tokens and hashes are hex) */
const NOT_HEX = 'ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ'

/**
 * A value no other stored byte is likely to share 4 characters with, so
 * LevelDB's compression (snappy replaces a repeated substring by a
 * reference) cannot hide it, and a search of the files finds it exactly when
 * it is there: 31 letters drawn from 40 that hex never uses (40^4 four-letter
 * runs, so two values of a test share one about once in 10,000 tests).
 */
export function unique (tag: string): string {
  return `${tag.slice(0, 1)}${[...randomBytes(31)].map(b => NOT_HEX[b % NOT_HEX.length] as string).join('')}`
}

/** Writes zeros to `path` until the file system holding it is full (ENOSPC), smaller writes last */
export async function fill (path: string): Promise<void> {
  const fh = await open(path, 'w')
  const chunk = Buffer.alloc(1024 * 1024)
  try {
    for (let size = chunk.length; size >= 512;) {
      try { await fh.write(chunk.subarray(0, size)) } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
        size /= 2
      }
    }
  } finally {
    await fh.close()
  }
}
