import { randomBytes } from 'node:crypto'
import { link, open, unlink } from 'node:fs/promises'
import { dirname } from 'node:path'

/**
 * Writes a secret (a key) to `path` with mode 0600, only if no file is there:
 * through a temp file that is synced, then linked into place (link, unlike
 * rename, fails on an existing file instead of replacing it, so a key written
 * meanwhile by another process is kept), then the directory is synced.
 * Answers false, writing nothing, when a file was already at `path`.
 */
export async function createSecretFile (path: string, bytes: Uint8Array): Promise<boolean> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
  const fh = await open(tmp, 'wx', 0o600)
  try {
    await fh.writeFile(bytes)
    await fh.sync()
  } finally {
    await fh.close()
  }
  try {
    await link(tmp, path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw err
  } finally {
    await unlink(tmp).catch(() => {})
  }
  const dir = await open(dirname(path), 'r')
  try {
    await dir.sync()
  } finally {
    await dir.close()
  }
  return true
}
