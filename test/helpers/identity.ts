import { generateKeyPairSync } from 'node:crypto'
import { privateKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { Signer } from '../../src/cluster/member-claims.js'

export interface TestIdentity {
  peerId: string
  sign: Signer
}

/** A fresh Ed25519 identity, made synchronously: a real peer id whose records verify, for in-process members */
export function testIdentity (): TestIdentity {
  const jwk = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' })
  const raw = Buffer.concat([Buffer.from(jwk.d as string, 'base64url'), Buffer.from(jwk.x as string, 'base64url')])
  const key = privateKeyFromRaw(raw)
  return { peerId: peerIdFromPrivateKey(key).toString(), sign: data => key.sign(data) as Uint8Array }
}
