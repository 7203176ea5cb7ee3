/**
 * The options every command takes (`--home`, `--token`, `--json`) may come before the command,
 * as with git and docker: `ntsoekhe --home x status` is `ntsoekhe status --home x`.
 */
import { describe, expect, it } from 'vitest'
import { hoistGlobals, run } from '../../src/cli/index.js'
import { tempDir } from '../helpers/temp.js'

/** Runs the CLI in process, collecting what it prints */
async function cli (args: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []
  const err: string[] = []
  const code = await run(args, { stdout: { write: (x: string) => out.push(x) }, stderr: { write: (x: string) => err.push(x) }, stdin: process.stdin })
  return { code, out: out.join(''), err: err.join('') }
}

describe('CLI: options before the command', () => {
  it('moves --home, --token and --json from before the command to its end, before a --', () => {
    expect(hoistGlobals(['--home', '/h', 'status'])).toEqual(['status', '--home', '/h'])
    expect(hoistGlobals(['--home=/h', '--json', 'user', 'add', 'bob', '--role', 'doctor'])).toEqual(['user', 'add', 'bob', '--role', 'doctor', '--home=/h', '--json'])
    expect(hoistGlobals(['--token', 't', 'sql', '--', 'SELECT 1'])).toEqual(['sql', '--token', 't', '--', 'SELECT 1'])
    // Nothing before the command: unchanged; an option after the command stays where it is.
    expect(hoistGlobals(['status', '--home', '/h'])).toEqual(['status', '--home', '/h'])
    // Another flag first stops the move (commander reports it as it did).
    expect(hoistGlobals(['--bogus', '--home', '/h', 'status'])).toEqual(['--bogus', '--home', '/h', 'status'])
    expect(hoistGlobals(['--home'])).toEqual(['--home'])
  })

  it('ntsoekhe --home <dir> status: no daemon there, and the hint names that home (exit 3)', async () => {
    const t = await tempDir()
    try {
      const before = await cli(['--home', t.path, 'status'])
      expect(before.code).toBe(3)
      expect(before.err).toContain(`--home ${t.path}`)
      const after = await cli(['status', '--home', t.path])
      expect(before).toEqual(after)
    } finally {
      await t.remove()
    }
  })

  it('ntsoekhe --json version prints JSON, and version takes a --home it does not need', async () => {
    const r = await cli(['--json', 'version'])
    expect(r.code).toBe(0)
    expect(JSON.parse(r.out)).toEqual({ version: expect.stringMatching(/^\d+\.\d+\.\d+/) })
    const aliased = await cli(['--home', '/nonexistent', 'version'])
    expect(aliased.code, aliased.err).toBe(0)
    expect(aliased.out).toBe(`${(JSON.parse(r.out) as { version: string }).version}\n`)
  })
})
