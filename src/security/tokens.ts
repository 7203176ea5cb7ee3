import { createHash, randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { toString } from 'uint8arrays'

/** Bytes of randomness in a token (256 bits) */
export const TOKEN_BYTES = 32
/** The file in a home that holds the first admin's token (mode 0600) */
export const ADMIN_TOKEN_FILE = 'admin.token'

/** A new bearer token: 256 random bits, base64url (43 characters) */
export function newToken (): string {
  return toString(randomBytes(TOKEN_BYTES), 'base64url')
}

/** What the `users` table keeps of a token: its SHA-256, hex */
export function hashToken (token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex')
}

export function adminTokenPath (home: string): string {
  return join(home, ADMIN_TOKEN_FILE)
}

/** The token in `<home>/admin.token`, or undefined when there is none */
export async function readAdminToken (home: string): Promise<string | undefined> {
  try {
    const token = (await readFile(adminTokenPath(home), 'utf8')).trim()
    return token === '' ? undefined : token
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/** Writes `<home>/admin.token` (0600); an existing file is never overwritten */
export async function writeAdminToken (home: string, token: string): Promise<void> {
  await writeFile(adminTokenPath(home), token + '\n', { mode: 0o600, flag: 'wx' })
}
