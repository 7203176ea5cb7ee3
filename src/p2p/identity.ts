import { readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { NtsoekheError } from '../errors/index.js'

export const IDENTITY_FILE = 'identity.key'

/** The node's persistent Ed25519 key: created on first use, never silently replaced */
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
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600 })
  await rename(tmp, path)
  return key
}

export function peerIdFromKey (key: PrivateKey): string {
  return peerIdFromPrivateKey(key).toString()
}
