/**
 * Bytes of inbound requests being handled, bounded per peer and in all: a
 * stream whose next frame does not fit waits (it is not read meanwhile, so
 * the sender meets flow control) until earlier requests finish. A frame
 * larger than a whole budget is let through only when nothing else of that
 * budget is held, so it never waits forever.
 */
export class ByteBudget {
  readonly perPeer: number
  readonly total: number
  private used = 0
  private readonly byPeer = new Map<string, number>()
  private readonly waiters: Array<{ peer: string, bytes: number, resolve: () => void }> = []

  constructor (init: { perPeer: number, total: number }) {
    this.perPeer = init.perPeer
    this.total = init.total
  }

  /** Bytes held now, in all and for one peer */
  held (peer?: string): number {
    return peer === undefined ? this.used : this.byPeer.get(peer) ?? 0
  }

  /** Resolves once `bytes` more may be held for `peer`; pair it with one `release` of the same size */
  async acquire (peer: string, bytes: number): Promise<void> {
    // A peer's frames are admitted in order; one peer waiting does not hold up another.
    if (this.fits(peer, bytes) && !this.waiters.some(w => w.peer === peer)) {
      this.take(peer, bytes)
      return
    }
    await new Promise<void>(resolve => { this.waiters.push({ peer, bytes, resolve }) })
  }

  release (peer: string, bytes: number): void {
    this.used -= bytes
    const left = (this.byPeer.get(peer) ?? 0) - bytes
    if (left > 0) this.byPeer.set(peer, left)
    else this.byPeer.delete(peer)
    // Wake, in order, every waiter that now fits; one that does not fit holds up its own peer's later ones, not other peers'.
    const blocked = new Set<string>()
    for (let i = 0; i < this.waiters.length;) {
      const w = this.waiters[i] as { peer: string, bytes: number, resolve: () => void }
      if (!blocked.has(w.peer) && this.fits(w.peer, w.bytes)) {
        this.waiters.splice(i, 1)
        this.take(w.peer, w.bytes)
        w.resolve()
      } else {
        blocked.add(w.peer)
        i++
      }
    }
  }

  private fits (peer: string, bytes: number): boolean {
    const mine = this.byPeer.get(peer) ?? 0
    const peerOk = mine === 0 || mine + bytes <= this.perPeer
    const totalOk = this.used === 0 || this.used + bytes <= this.total
    return peerOk && totalOk
  }

  private take (peer: string, bytes: number): void {
    this.used += bytes
    this.byPeer.set(peer, (this.byPeer.get(peer) ?? 0) + bytes)
  }
}
