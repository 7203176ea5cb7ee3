import { describe, expect, it } from 'vitest'
import { NtsoekheClient } from '../../src/client/index.js'
import { adminToken, daemonExit, makeHome, startDaemon } from '../helpers/daemon.js'
import { e2ePatient } from '../helpers/wait.js'

/** The chaos suite's clock skew: `daemon --clock-offset-ms <ms> --test`, refused without --test */
describe('daemon --clock-offset-ms', () => {
  it('is refused without --test, and a malformed value is a usage error', async () => {
    const refused = await daemonExit(await makeHome(), { args: ['--clock-offset-ms', '5000'] })
    expect(refused.code).toBe(1)
    expect(refused.stderr).toMatch(/--clock-offset-ms is only for the chaos suite: it is accepted together with --test/)
    for (const bad of ['soon', '1.5', '86400001']) {
      const r = await daemonExit(await makeHome(), { args: ['--clock-offset-ms', bad, '--test'] })
      expect(r.code, bad).toBe(2)
      expect(r.stderr).toMatch(/expected a whole number of ms within a day either way/)
    }
  }, 60_000)

  it("with --test, runs the node's versions that far ahead of the machine's clock", async () => {
    const daemon = await startDaemon({ args: ['--clock-offset-ms', '7000', '--test'] })
    try {
      const client = new NtsoekheClient({ socket: daemon.socket, token: await adminToken(daemon.home) })
      const before = Date.now()
      const { version } = await client.insert('patient_records', e2ePatient(1))
      const wall = Number(version.slice(0, 15))
      expect(wall - before).toBeGreaterThanOrEqual(6000)
      expect(wall - Date.now()).toBeLessThanOrEqual(7000)
      client.close()
    } finally {
      await daemon.stop()
    }
  }, 60_000)
})
