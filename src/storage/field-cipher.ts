import { createCipheriv, createDecipheriv, createHmac, createSecretKey, hkdfSync, randomBytes, type KeyObject } from 'node:crypto'
import { DataKeyError, IntegrityError } from '../errors/index.js'
import type { Value } from '../schema/index.js'
import { encodeIndexValue } from './keys.js'

/** The key under which a stored row keeps its sealed columns; never a column name (those are [a-z_]) */
export const SEALED_KEY = '$gcm'

const FORMAT = 1
const NONCE_BYTES = 12
const TAG_BYTES = 16
/** Marks an index entry that holds a keyed hash, never a value */
const HASHED = 'h'

/**
 * Field encryption under one data key. The encryption key, the index key and
 * a key check are derived once (HKDF-SHA-256) and reused for every value.
 * The sensitive columns of one row version are sealed together (one nonce,
 * one tag: the cost of a row is one cipher call, not one per column), with
 * the table, row id and version bound as associated data, so sealed data
 * moved to another row or version fails authentication instead of reading
 * as that row's.
 */
export class FieldCipher {
  private readonly encKey: KeyObject
  private readonly indexKey: KeyObject
  /** Identifies the data key without revealing it: kept in the store to refuse a store opened with another key */
  readonly check: string
  /**
   * Nonces count up from a random 96-bit start: unique within this process,
   * and two processes' ranges overlap only with negligible probability
   * (far lower than drawing each nonce at random).
   */
  private readonly nonce: Buffer = randomBytes(NONCE_BYTES)

  constructor (dataKey: Uint8Array) {
    if (!(dataKey instanceof Uint8Array) || dataKey.length !== 32) throw new DataKeyError(`A data key is 32 bytes (got ${dataKey?.length ?? 'none'})`)
    const derive = (info: string): Buffer => Buffer.from(hkdfSync('sha256', dataKey, Buffer.alloc(0), `ntsoekhe ${info}`, 32))
    this.encKey = createSecretKey(derive('field encryption v1'))
    this.indexKey = createSecretKey(derive('index hmac v1'))
    this.check = derive('key check v1').subarray(0, 16).toString('hex')
  }

  /** `base64(format byte | nonce | ciphertext | tag)` of the columns' JSON */
  seal (table: string, id: string, version: string, columns: Record<string, Value>): string {
    const nonce = this.nextNonce()
    const cipher = createCipheriv('aes-256-gcm', this.encKey, nonce)
    cipher.setAAD(aad(table, id, version))
    const body = cipher.update(JSON.stringify(columns), 'utf8')
    const last = cipher.final()
    return Buffer.concat([HEADER, nonce, body, last, cipher.getAuthTag()]).toString('base64')
  }

  /** The sealed columns, or an IntegrityError when they do not authenticate for this table, row and version */
  open (table: string, id: string, version: string, sealed: string): Record<string, Value> {
    const bytes = Buffer.from(sealed, 'base64')
    const fail = (cause?: unknown): never => {
      throw new IntegrityError(`${table} ${id} version ${version}: the stored sensitive columns fail authentication (damaged, moved, or written under another data key)`, cause === undefined ? {} : { cause })
    }
    if (bytes.length < 1 + NONCE_BYTES + TAG_BYTES || bytes[0] !== FORMAT) fail()
    let text: string
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.encKey, bytes.subarray(1, 1 + NONCE_BYTES))
      decipher.setAAD(aad(table, id, version))
      decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES))
      // Bytes out, decoded once after final() authenticates them: a string output goes through a StringDecoder per call.
      const body = decipher.update(bytes.subarray(1 + NONCE_BYTES, bytes.length - TAG_BYTES))
      decipher.final()
      text = body.toString('utf8')
    } catch (err) {
      return fail(err)
    }
    return JSON.parse(text) as Record<string, Value>
  }

  /** What an index entry holds for a sensitive value: an HMAC, equal for equal values, meaningless without the key */
  indexValue (table: string, column: string, value: Value): string {
    return HASHED + createHmac('sha256', this.indexKey).update(`${table}\u0000${column}\u0000${encodeIndexValue(value)}`).digest('base64url')
  }

  private nextNonce (): Buffer {
    const n = this.nonce
    for (let i = NONCE_BYTES - 1; i >= 0; i--) {
      n[i] = ((n[i] as number) + 1) & 0xff
      if (n[i] !== 0) break
    }
    return Buffer.from(n)
  }
}

const HEADER = Buffer.from([FORMAT])

function aad (table: string, id: string, version: string): Buffer {
  return Buffer.from(`${FORMAT}\u0000${table}\u0000${id}\u0000${version}`, 'utf8')
}

/** Whether an encoded index value is a keyed hash (see FieldCipher.indexValue) */
export function isHashedIndexValue (encoded: string): boolean {
  return encoded.startsWith(HASHED)
}
