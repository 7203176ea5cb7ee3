import { randomBytes } from 'node:crypto'
import { open, readFile, rename, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { toString } from 'uint8arrays'
import type { PrivateKey } from '@libp2p/interface'
import { NtsoekheError } from '../errors/index.js'

export const IDENTITY_FILE = 'identity.key'

/**
 * The node's persistent Ed25519 key, `<home>/identity.key` (protobuf-marshalled).
 * Created on first use (mode 0600, written to a temp file, synced, then renamed
 * into place) and never silently replaced: a corrupt file is an error naming it.
 */
export async function loadOrCreateIdentity (home: string): Promise<PrivateKey> {
  const path = join(home, IDENTITY_FILE)
  let bytes: Buffer | undefined
  try {
    bytes = await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (bytes !== undefined) {
    try {
      return privateKeyFromProtobuf(bytes)
    } catch (err) {
      throw new NtsoekheError('INVALID', `${path} is not a valid identity key; restore it from a backup or move it away to make a new identity`, { cause: err })
    }
  }
  const key = await generateKeyPair('Ed25519')
  const tmp = `${path}.${process.pid}.${toString(randomBytes(4), 'base16')}.tmp`
  const fh = await open(tmp, 'wx', 0o600)
  try {
    await fh.writeFile(privateKeyToProtobuf(key))
    await fh.sync()
  } catch (err) {
    await fh.close().catch(() => {})
    await unlink(tmp).catch(() => {})
    throw err
  }
  await fh.close()
  try {
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => {})
    throw err
  }
  return key
}

/** The string form (base58btc) of the peer id of a private key */
export function peerIdFromKey (key: PrivateKey): string {
  return peerIdFromPrivateKey(key).toString()
}
