/**
 * Running Ntsoekhe as a service: `npm start` hands signals to the daemon
 * (no shell left in between), `--version`, the systemd unit and the licence.
 */
import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { BIN, ROOT, cli, makeHome, statusAnswers, track } from '../helpers/daemon.js'
import { waitForValue } from '../helpers/wait.js'

const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string, license: string, scripts: Record<string, string> }

/** The processes whose parent is `pid`, with their command lines (Linux /proc) */
async function children (pid: number): Promise<Array<{ pid: number, cmd: string }>> {
  const out: Array<{ pid: number, cmd: string }> = []
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8')
      // The command name may hold spaces and parentheses: the fields after its last ')' are plain.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) out.push({ pid: Number(entry), cmd: (await readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0').join(' ') })
    } catch {
      // The process ended while it was being read.
    }
  }
  return out
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe('running as a service', () => {
  it('npm start runs the daemon itself under npm (exec, no shell between): SIGTERM to npm stops the daemon cleanly', async () => {
    expect(pkg.scripts.start).toMatch(/^exec node bin\/ntsoekhe daemon$/)
    const home = await makeHome()
    const { NTSOEKHE_HOME: _h, NTSOEKHE_TOKEN: _t, ...env } = process.env
    // --ignore-scripts skips prestart (the build): the tests run against the dist/ already built.
    const npm = track(spawn('npm', ['start', '--ignore-scripts', '--', '--home', home, '--listen', '/ip4/127.0.0.1/tcp/0', '--log-level', 'warn'], {
      cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, CI: 'true' }
    }))
    let output = ''
    npm.stdout?.setEncoding('utf8').on('data', (s: string) => { output += s })
    npm.stderr?.setEncoding('utf8').on('data', (s: string) => { output += s })
    const exited = new Promise<number | null>(resolve => npm.once('exit', code => { resolve(code) }))
    const socket = join(home, 'api.sock')
    let daemonPid: number | undefined
    try {
      await waitForValue(`the daemon started by npm start to answer on ${socket}`, async () => await statusAnswers(socket), 30_000)
      const kids = await children(npm.pid as number)
      expect(kids, output).toHaveLength(1)
      expect(kids[0]?.cmd).toMatch(/node .*bin\/ntsoekhe daemon --home/)
      daemonPid = kids[0]?.pid as number

      npm.kill('SIGTERM')
      await waitForValue('the daemon to exit after SIGTERM to npm', async () => !alive(daemonPid as number), 15_000)
      await waitForValue('npm to exit', async () => await Promise.race([exited.then(() => true), new Promise<false>(resolve => setTimeout(() => { resolve(false) }, 100))]), 15_000)
      // The daemon shut down as on its own SIGTERM: the socket is gone and nothing answers.
      expect(existsSync(socket), output).toBe(false)
      expect(await statusAnswers(socket)).toBe(false)
    } finally {
      if (daemonPid !== undefined && alive(daemonPid)) process.kill(daemonPid, 'SIGKILL')
      if (npm.exitCode === null) npm.kill('SIGKILL')
    }
  }, 60_000)

  it('ntsoekhe --version prints the version in package.json', async () => {
    for (const flag of ['--version', '-V']) {
      const r = await cli([flag])
      expect(r.code).toBe(0)
      expect(r.stdout).toBe(`${pkg.version}\n`)
    }
  })

  it('configs/ntsoekhe.service: a dedicated user, restart on failure, hardened, writable home only; systemd accepts it', async () => {
    const unit = await readFile(join(ROOT, 'configs', 'ntsoekhe.service'), 'utf8')
    const directives = new Map<string, string>()
    for (const line of unit.split('\n')) {
      const m = /^([A-Za-z]+)=(.*)$/.exec(line)
      if (m !== null) directives.set(m[1] as string, m[2] as string)
    }
    const home = /--home (\S+)/.exec(directives.get('ExecStart') ?? '')?.[1]
    expect(home).toBe('/var/lib/ntsoekhe')
    expect(directives.get('ExecStart')).toMatch(/^\/\S+\/ntsoekhe daemon --home /)
    expect(directives.get('User')).toBe('ntsoekhe')
    expect(directives.get('Restart')).toBe('on-failure')
    expect(directives.get('RestartPreventExitStatus')).toBe('2')
    expect(directives.get('ReadWritePaths')).toBe(home)
    expect(directives.get('StateDirectory')).toBe('ntsoekhe')
    for (const [key, value] of [['NoNewPrivileges', 'yes'], ['ProtectSystem', 'strict'], ['ProtectHome', 'yes'], ['PrivateTmp', 'yes'], ['PrivateDevices', 'yes'], ['KillSignal', 'SIGTERM']]) {
      expect(directives.get(key as string), key).toBe(value)
    }
    // systemd's own check, where systemd is installed, with ExecStart pointed at this checkout's binary.
    if (spawnSync('systemd-analyze', ['--version']).status === 0) {
      const dir = await mkdtemp(join(tmpdir(), 'ntk-unit-'))
      try {
        await writeFile(join(dir, 'ntsoekhe.service'), unit.replace(/^ExecStart=\S+/m, `ExecStart=${BIN}`))
        const verify = spawnSync('systemd-analyze', ['verify', './ntsoekhe.service'], { cwd: dir, encoding: 'utf8', timeout: 30_000 })
        expect(verify.status, verify.stderr).toBe(0)
        expect(verify.stderr).toBe('')
      } finally {
        await rm(dir, { recursive: true, force: true })
      }
    }
  })

  it('LICENSE is the MIT licence package.json names', async () => {
    expect(pkg.license).toBe('MIT')
    const license = await readFile(join(ROOT, 'LICENSE'), 'utf8')
    expect(license.split('\n')[0]).toBe('MIT License')
    expect(license).toContain('Permission is hereby granted, free of charge')
  })
})
