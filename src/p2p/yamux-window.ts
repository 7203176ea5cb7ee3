import { StreamState, YamuxStream } from '@libp2p/yamux/stream'

/**
 * Window updates as other yamux implementations send them, for
 * @libp2p/yamux 8.
 *
 * The stock stream answers every data frame it receives with a window-update
 * frame: its check skips the update only while the window is entirely unused,
 * which is never true after data arrived. So each RPC frame made the receiver
 * send a yamux frame back, a Noise frame to seal and, most often, a socket
 * write of its own, and the sender had to read, open and parse it. Hashicorp's
 * yamux (the reference) and go-yamux send an update only once less than half
 * of the receive window is left; this does the same. A sender is never held
 * up: it always has at least half a window (128 KiB or more) to send into, and
 * the frame that takes the receiver below half triggers the update. Measured
 * on three daemons replicating single-row writes: about 7% more writes/s for
 * the same CPU.
 *
 * Only an established stream's updates are held back: those that carry
 * SYN/ACK, and any while the stream is paused, go through the original method
 * unchanged (which also keeps its window auto-tuning). On resume the stream is
 * established again, so the half-window rule applies: the sender has window
 * left whenever no update is sent.
 *
 * Installed once, for the whole process (there is one @libp2p/yamux in the tree).
 */
export function installYamuxWindowUpdateFix (): void {
  const proto = YamuxStream.prototype as unknown as Patchable
  if (proto[FIXED] === true) return
  const original = proto.sendWindowUpdate
  proto[ORIGINAL] = original
  proto.sendWindowUpdate = function (this: WindowState) {
    if (!needsWindowUpdate(this)) return
    original.call(this)
  }
  proto[FIXED] = true
}

/**
 * Whether the stock method must run: the stream is not yet established (the
 * update would carry SYN or ACK), it is paused, or less than half of its
 * receive window is left
 */
export function needsWindowUpdate (s: WindowState): boolean {
  if (s.state !== StreamState.Established) return true
  return s.recvWindowCapacity * 2 <= s.recvWindow
}

const FIXED = Symbol.for('ntsoekhe.yamuxWindowUpdateFix')
const ORIGINAL = Symbol.for('ntsoekhe.yamuxWindowUpdateFix.original')

/**
 * What this patch wraps, checked by test/unit/patches.test.ts: the exact
 * version package.json pins, and the SHA-256 of the wrapped method's source
 * (its skip test, the fields it reads: state, recvWindow, recvWindowCapacity).
 * A new version means reading its sendWindowUpdate() again before moving the pin.
 */
export const YAMUX_WINDOW_PATCH = {
  package: '@libp2p/yamux',
  version: '8.0.3',
  replaces: 'YamuxStream.prototype.sendWindowUpdate',
  sourceSha256: 'ad75cb27323f9a2993b7121491c07b3327138d15332b478f4f6cd8f3ffb13c46'
} as const

/** The stock sendWindowUpdate(), whether or not the fix is installed */
export function stockSendWindowUpdate (): (this: WindowState) => void {
  const proto = YamuxStream.prototype as unknown as Patchable
  return proto[ORIGINAL] ?? proto.sendWindowUpdate
}

/** The fields of YamuxStream the check reads */
export interface WindowState {
  state: StreamState
  recvWindow: number
  recvWindowCapacity: number
}

interface Patchable {
  sendWindowUpdate: (this: WindowState) => void
  [FIXED]?: true
  [ORIGINAL]?: (this: WindowState) => void
}
