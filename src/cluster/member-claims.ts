import { peerIdFromString } from '@libp2p/peer-id'
import { equals, fromString, toString } from 'uint8arrays'
import type { MemberRecord } from './core/members.js'

/**
 * Signed membership claims. A member's record (its incarnation, heartbeat,
 * addresses, and whether it left) is a statement signed with the member's
 * own identity key, so any member may pass it on but none may change it.
 * The one claim about another member is a removal (`ntsoekhe remove`): a
 * `left` record signed by the member where it was run, which names itself
 * in `removedBy`.
 */

/** Signs bytes with this node's identity key */
export type Signer = (data: Uint8Array) => Uint8Array

/** How far ahead of the receiver's clock an incarnation may be: start times, with room for clock skew */
export const MAX_INCARNATION_AHEAD_MS = 24 * 60 * 60 * 1000
/** Largest heartbeat counter accepted: far beyond any real run, far below 2^53, so a removal's bump and a rebuttal always fit */
export const MAX_HEARTBEAT = 2 ** 40
/** What a removal adds to the removed member's heartbeat, so the mark outranks anything it sent before going down */
export const REMOVAL_BUMP = 1_000_000

/** The bytes a record's signature covers: every field but the signature, in a fixed order */
export function claimBytes (r: MemberRecord): Uint8Array {
  return fromString(JSON.stringify(['ntsoekhe/member/1', r.peerId, r.incarnation, r.heartbeat, r.left === true, r.addresses, r.removedBy ?? null, r.zone ?? null]), 'utf8')
}

/** The record with a signature by `sign` (the member's own key, or for a removal the remover's) */
export function signClaim (r: MemberRecord, sign: Signer): MemberRecord {
  const { sig: _, ...rest } = r
  return { ...rest, sig: toString(sign(claimBytes(rest)), 'base64pad') }
}

/** The peer whose key must have signed the record: the member itself, or the member that removed it */
export function claimSigner (r: MemberRecord): string {
  return r.removedBy ?? r.peerId
}

/**
 * Whether the record carries a valid signature by its signer (see
 * claimSigner). A removal must be a `left` record by another member. Peer
 * ids that embed no public key (only Ed25519 and secp256k1 ids do) never verify.
 */
export function verifyClaim (r: MemberRecord): boolean {
  if (r.sig === undefined) return false
  if (r.removedBy !== undefined && (r.left !== true || r.removedBy === r.peerId)) return false
  try {
    const bytes = claimBytes(r)
    // The same record arrives from several members in a round: checked once. Keyed by signer and
    // signature, and kept only with the exact bytes it covers, so a changed record is checked anew.
    const seen = `${claimSigner(r)}/${r.sig}`
    const checked = verified.get(seen)
    if (checked !== undefined && equals(checked, bytes)) return true
    const key = peerIdFromString(claimSigner(r)).publicKey
    if (key === undefined) return false
    const ok = key.verify(bytes, fromString(r.sig, 'base64pad')) === true
    if (ok) {
      if (verified.size >= VERIFIED_MAX) verified.clear()
      // A copy: claimBytes' array may be a view of Node's shared 8 KiB pool, which the cache would keep alive.
      verified.set(seen, bytes.slice())
    }
    return ok
  } catch {
    return false
  }
}

/** Claims whose signatures checked out lately: signer and signature, to the signed bytes */
const verified = new Map<string, Uint8Array>()
const VERIFIED_MAX = 4096

/** Whether the counters are in range: a claim out of range could never be outranked by a rebuttal */
export function countersInRange (r: MemberRecord, now: number): boolean {
  return r.incarnation > 0 && r.incarnation <= now + MAX_INCARNATION_AHEAD_MS && r.heartbeat >= 0 && r.heartbeat <= MAX_HEARTBEAT
}
