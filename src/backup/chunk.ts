import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto'
import { promisify } from 'node:util'
import { gunzip, gzip } from 'node:zlib'
import { concat, equals, fromString, toString } from 'uint8arrays'
import { IntegrityError } from '../errors/index.js'

/**
 * A backup chunk on disk: NDJSON records, gzip-compressed, and with a key
 * sealed with AES-256-GCM (magic, 12-byte IV, ciphertext, 16-byte tag), its
 * file name as additional data so chunks cannot be swapped or renamed
 * unnoticed. The key comes from the user's key file by HKDF-SHA256 with the
 * backup's own salt: one key file serves many backups, each with its own key.
 */
export const CHUNK_MAGIC = fromString('NTSKBK01', 'utf8')
const IV_BYTES = 12
const TAG_BYTES = 16
/** Shortest key file accepted, bytes: 256 bits of secret at the least */
export const MIN_KEY_FILE_BYTES = 32
const KDF_INFO = 'ntsoekhe backup v1'
const KEY_CHECK_INFO = 'ntsoekhe backup key check'
/** gzip level: the fastest levels compress JSON records nearly as well as the default, at a fraction of the time */
const GZIP_LEVEL = 3

const gzipAsync = promisify(gzip)
const gunzipAsync = promisify(gunzip)

/** A backup that cannot be used as it is: `chunk` names the file at fault (manifest.json included) */
export class BackupDamagedError extends IntegrityError {
  override name = 'BackupDamagedError'
  readonly chunk: string
  /** What is wrong with it, without the file's name */
  readonly problem: string
  constructor (chunk: string, problem: string, options: { cause?: unknown } = {}) {
    super(`backup damaged: ${chunk}: ${problem}`, options)
    this.chunk = chunk
    this.problem = problem
  }
}

/** The backup is encrypted and the key given is not its key (or no key was given) */
export class BackupKeyError extends IntegrityError {
  override name = 'BackupKeyError'
  /** `missing`: an encrypted backup and no key; `unexpected`: a key for a backup in the clear; `wrong`: not its key */
  readonly reason: 'missing' | 'unexpected' | 'wrong'
  constructor (reason: 'missing' | 'unexpected' | 'wrong', message: string) {
    super(message)
    this.reason = reason
  }
}

/** The file name of chunk `n` (from 1) */
export function chunkName (n: number, encrypted: boolean): string {
  return `chunk-${String(n).padStart(6, '0')}.ndjson.gz${encrypted ? '.enc' : ''}`
}

/** A backup's key, derived from a key file's bytes and the backup's salt */
export function deriveKey (keyFile: Uint8Array, salt: Uint8Array): Uint8Array {
  if (keyFile.length < MIN_KEY_FILE_BYTES) throw new BackupKeyError('wrong', `a backup key file holds at least ${MIN_KEY_FILE_BYTES} bytes (make one with: head -c 32 /dev/urandom > backup.key)`)
  return new Uint8Array(hkdfSync('sha256', keyFile, salt, KDF_INFO, 32))
}

/** A value that tells the right key from a wrong one without decrypting anything */
export function keyCheck (key: Uint8Array): string {
  return createHmac('sha256', key).update(KEY_CHECK_INFO).digest('hex').slice(0, 32)
}

/** A keyed MAC over text (the manifest of an encrypted backup) */
export function mac (key: Uint8Array, text: string): string {
  return createHmac('sha256', key).update(text).digest('hex')
}

/** Whether `expected` (hex, as checkManifest admits it) is the MAC of text, compared in constant time */
export function macMatches (key: Uint8Array, text: string, expected: string): boolean {
  const a = fromString(mac(key, text), 'base16')
  let b: Uint8Array
  try {
    b = fromString(expected, 'base16')
  } catch {
    return false
  }
  return a.length === b.length && timingSafeEqual(a, b)
}

export function newSalt (): Uint8Array {
  return randomBytes(16)
}

export function sha256 (bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

/** A chunk's file bytes from its NDJSON text */
export async function sealChunk (text: string, name: string, key?: Uint8Array): Promise<Uint8Array> {
  const packed = await gzipAsync(fromString(text, 'utf8'), { level: GZIP_LEVEL })
  if (key === undefined) return packed
  const iv = randomBytes(IV_BYTES)
  const cipher = createCipheriv('aes-256-gcm', key, iv)
  cipher.setAAD(fromString(name, 'utf8'))
  return concat([CHUNK_MAGIC, iv, cipher.update(packed), cipher.final(), cipher.getAuthTag()])
}

/** A chunk's NDJSON text from its file bytes: a chunk that does not decrypt or decompress is a BackupDamagedError */
export async function openChunk (bytes: Uint8Array, name: string, key?: Uint8Array): Promise<string> {
  let packed = bytes
  if (key !== undefined) {
    if (bytes.length < CHUNK_MAGIC.length + IV_BYTES + TAG_BYTES || !equals(bytes.subarray(0, CHUNK_MAGIC.length), CHUNK_MAGIC)) {
      throw new BackupDamagedError(name, 'not an encrypted chunk (truncated, or not written by ntsoekhe backup --key)')
    }
    const iv = bytes.subarray(CHUNK_MAGIC.length, CHUNK_MAGIC.length + IV_BYTES)
    const tag = bytes.subarray(bytes.length - TAG_BYTES)
    const decipher = createDecipheriv('aes-256-gcm', key, iv)
    decipher.setAAD(fromString(name, 'utf8'))
    decipher.setAuthTag(tag)
    try {
      packed = concat([decipher.update(bytes.subarray(CHUNK_MAGIC.length + IV_BYTES, bytes.length - TAG_BYTES)), decipher.final()])
    } catch (err) {
      throw new BackupDamagedError(name, 'does not authenticate (damaged, truncated or renamed)', { cause: err })
    }
  }
  try {
    return toString(await gunzipAsync(packed), 'utf8')
  } catch (err) {
    throw new BackupDamagedError(name, `does not decompress (${(err as Error).message})`, { cause: err })
  }
}
