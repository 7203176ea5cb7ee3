import { describe, expect, it } from 'vitest'
import { resolvePeerId } from '../../src/cli/index.js'
import { renderObject, renderTable, reportValue } from '../../src/cli/format.js'

const A = '12D3KooWAbcdefghijkLMNopqrstuvwxyz1234567890ABCDEFGH'
const B = '12D3KooWAbzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz'
const C = '12D3KooWQqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq'
const peers = async (): Promise<Record<string, unknown>> => ({ members: [A, B, C].map(peerId => ({ peerId, state: 'alive' })) })

describe('CLI: peer ids', () => {
  it('a unique prefix names its member, as git names a commit; an ambiguous one names the candidates', async () => {
    expect(await resolvePeerId({ peers }, A)).toBe(A)
    expect(await resolvePeerId({ peers }, '12D3KooWAbc')).toBe(A)
    expect(await resolvePeerId({ peers }, '12D3KooWQ')).toBe(C)
    // No member has it: passed on, for the daemon to say there is no such member.
    expect(await resolvePeerId({ peers }, '12D3KooWnope')).toBe('12D3KooWnope')
    const ambiguous = await resolvePeerId({ peers }, '12D3KooWA').then(() => undefined, (e: unknown) => e as Error)
    expect(ambiguous?.name).toBe('UsageError')
    expect(ambiguous?.message).toContain(A)
    expect(ambiguous?.message).toContain(B)
    expect(ambiguous?.message).not.toContain(C)
    expect((await resolvePeerId({ peers }, '').then(() => undefined, (e: unknown) => e as Error))?.name).toBe('UsageError')
  })

  it('tables print peer ids and addresses whole; other long cells are cut', () => {
    const text = renderTable([{ peerId: A, addresses: `/ip4/10.0.0.1/tcp/4100/p2p/${A}`, note: 'x'.repeat(60) }])
    expect(text).toContain(A)
    expect(text).toContain(`/ip4/10.0.0.1/tcp/4100/p2p/${A}`)
    expect(text).toContain('x'.repeat(39) + '…')
    expect(text).not.toContain('x'.repeat(41))
  })

  it('history prints versions and parents whole: they are pasted into --if-match', () => {
    const v1 = '001796163237219.000000.MoP4RbhKZ8'
    const v2 = '001796163237373.000000.GCNjG8oPdh'
    const text = renderTable([{ version: '001796163237571.000000.MoP4RbhKZ8', parents: `${v1},${v2}`, deleted: '', row: { note: 'x'.repeat(60) } }])
    expect(text).toContain(`${v1},${v2}`)
    expect(text).toMatch(/…$/m)
  })

  it('objects print a list of values one a line, not as a JSON array', () => {
    expect(renderObject({ peerId: A, addresses: ['/ip4/10.0.0.1/tcp/4100', '/ip4/127.0.0.1/tcp/4100'], storage: { rows: 3 } })).toBe(
      `peerId: ${A}\naddresses:\n  /ip4/10.0.0.1/tcp/4100\n  /ip4/127.0.0.1/tcp/4100\nstorage:\n  rows: 3\n`)
  })

  it('in a report (status), a time (a key ending in At, epoch ms) prints as ISO UTC, and nothing as none rather than a blank', () => {
    expect(renderObject({ antiEntropy: { lastRoundAt: null, startedAt: 1_796_000_000_000, seconds: 0 }, unanswered: [] }, '', reportValue)).toBe(
      'antiEntropy:\n  lastRoundAt: none\n  startedAt: 2026-11-30T00:53:20.000Z\n  seconds: 0\nunanswered: none\n')
    // A row keeps a null column blank.
    expect(renderObject({ patient_name: 'Ann', notes: null })).toBe('patient_name: Ann\nnotes: \n')
  })
})
