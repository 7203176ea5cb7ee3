import { describe, expect, it } from 'vitest'
import type { FailEffect, LogEffect } from '../../src/cluster/core/effects.js'
import { drive } from '../../src/cluster/drive.js'

type Effect = { type: 'io', ok: boolean } | { type: 'answer', value: number } | { type: 'note', n: number }

describe('drive: a core machine run by its driver', () => {
  it('feeds each I/O outcome back to the machine and resolves with its answer; the machine goes on after it', async () => {
    const seen: string[] = []
    let noted = 0
    const result = await drive<Effect, number>(() => [{ type: 'io', ok: true }, { type: 'io', ok: false }], (e, d) => {
      if (e.type === 'io') {
        d.after(e.ok ? Promise.resolve('done') : Promise.reject(new Error('unreachable')), v => { seen.push(`ok ${v}`); return seen.length === 1 ? [{ type: 'answer', value: 7 }] : [] }, err => { seen.push(`bad ${(err as Error).message}`); return [{ type: 'note', n: 1 }] })
      } else if (e.type === 'answer') d.resolve(e.value)
      else noted += e.n
    })
    expect(result).toBe(7)
    // The failed I/O settles after the answer: it is still an input, and its effects are still performed.
    await new Promise(resolve => setImmediate(resolve))
    expect(seen).toEqual(['ok done', 'bad unreachable'])
    expect(noted).toBe(1)
  })

  it('settles the run with the error of a machine that throws on an input, and performs nothing of it after', async () => {
    let performed = 0
    const run = drive<Effect, number>(() => [{ type: 'io', ok: true }, { type: 'io', ok: true }], (e, d) => {
      performed++
      if (e.type === 'io') d.after(Promise.resolve(1), () => { throw new Error('a bug in the machine') }, () => [])
    })
    await expect(run).rejects.toThrow('a bug in the machine')
    await new Promise(resolve => setImmediate(resolve))
    // The two I/O effects were performed; the second input, after the first threw, was not fed.
    expect(performed).toBe(2)
  })

  it('settles the run with the error of a machine that throws at its start or in a timer\'s input', async () => {
    await expect(drive<Effect, number>(() => { throw new Error('at start') }, () => {})).rejects.toThrow('at start')
    const run = drive<Effect, number>(() => [{ type: 'note', n: 1 }], (_e, d) => {
      setTimeout(() => { d.run(() => { throw new Error('in a timer') }) }, 1)
    })
    await expect(run).rejects.toThrow('in a timer')
  })

  it('writes a machine\'s log lines to the log it is given and settles the run with a fail, performing neither', async () => {
    const lines: unknown[][] = []
    const performed: string[] = []
    const run = drive<Effect | LogEffect | FailEffect, number>(
      () => [{ type: 'log', msg: 'owner %s failed', args: ['a'] }, { type: 'note', n: 1 }, { type: 'fail', error: new Error('refused') }],
      e => { performed.push(e.type) },
      (msg, ...args) => { lines.push([msg, ...args]) })
    await expect(run).rejects.toThrow('refused')
    expect(lines).toEqual([['owner %s failed', 'a']])
    expect(performed).toEqual(['note'])
  })
})
