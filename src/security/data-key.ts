import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { DataKeyError } from '../errors/index.js'
import { createSecretFile } from '../util/secret-file.js'

export const DATA_KEY_FILE = 'data.key'
/** AES-256: the data key is 32 random bytes */
export const DATA_KEY_BYTES = 32

/**
 * The node's data key, `<home>/data.key`: 32 random bytes under which this
 * node's store encrypts sensitive columns. Created on first start (mode 0600,
 * written to a temp file, synced, then linked into place, so a key another
 * process created meanwhile is kept) and never replaced: a file of the wrong
 * size is an error naming it. Losing it loses this node's copy of the data.
 */
export async function loadOrCreateDataKey (home: string): Promise<Uint8Array> {
  return await loadOrCreateKeyFile(join(home, DATA_KEY_FILE))
}

/** loadOrCreateDataKey for a key file at any path */
export async function loadOrCreateKeyFile (path: string): Promise<Uint8Array> {
  const existing = await readKey(path)
  if (existing !== undefined) return existing
  await createSecretFile(path, randomBytes(DATA_KEY_BYTES))
  const key = await readKey(path)
  if (key === undefined) throw new DataKeyError(`${path} vanished while it was being created`)
  return key
}

async function readKey (path: string): Promise<Uint8Array | undefined> {
  let bytes: Buffer
  try {
    bytes = await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new DataKeyError(`Cannot read the data key ${path}: ${(err as Error).message}`, { cause: err })
  }
  if (bytes.length !== DATA_KEY_BYTES) {
    throw new DataKeyError(`${path} is not a data key (${bytes.length} bytes, expected ${DATA_KEY_BYTES}); restore it from a backup. Without it this node cannot read its store`)
  }
  return new Uint8Array(bytes)
}

/** Makes a new directory entry durable */
