/**
 * Running Ntsoekhe as a service: `npm start` hands signals to the daemon
 * (no shell left in between), `--version`, the systemd unit and the licence.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { BIN, ROOT, cli, daemonExit, makeHome, startDaemon, statusAnswers, track } from '../helpers/daemon.js'
import { waitForValue } from '../helpers/wait.js'
import { runDaemon } from '../../src/cli/daemon.js'

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

/** `npm start` on a fresh home, in a process group of its own (as a terminal runs it), once its daemon answers */
interface NpmStart {
  npm: ChildProcess
  /** The daemon: npm's only child, the start script's shell having exec'd it */
  daemonPid: number
  socket: string
  output: () => string
  /** npm's exit */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  /** SIGKILLs whatever of the two is still running */
  kill: () => void
}

async function npmStart (): Promise<NpmStart> {
  expect(pkg.scripts.start).toMatch(/^exec node bin\/ntsoekhe daemon$/)
  const home = await makeHome()
  const { NTSOEKHE_HOME: _h, NTSOEKHE_TOKEN: _t, ...env } = process.env
  // --ignore-scripts skips prestart (the build): the tests run against the dist/ already built.
  // detached: npm leads a process group of its own, as the foreground job of a terminal does.
  const npm = track(spawn('npm', ['start', '--ignore-scripts', '--', '--home', home, '--listen', '/ip4/127.0.0.1/tcp/0', '--log-level', 'info'], {
    cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, CI: 'true' }, detached: true
  }))
  let output = ''
  npm.stdout?.setEncoding('utf8').on('data', (s: string) => { output += s })
  npm.stderr?.setEncoding('utf8').on('data', (s: string) => { output += s })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => npm.once('exit', (code, signal) => { resolve({ code, signal }) }))
  const socket = join(home, 'api.sock')
  let daemonPid: number | undefined
  const kill = (): void => {
    if (daemonPid !== undefined && alive(daemonPid)) process.kill(daemonPid, 'SIGKILL')
    if (npm.exitCode === null && npm.signalCode === null) npm.kill('SIGKILL')
  }
  try {
    await waitForValue(`the daemon started by npm start to answer on ${socket}`, async () => await statusAnswers(socket), 30_000)
    const kids = await children(npm.pid as number)
    expect(kids, output).toHaveLength(1)
    expect(kids[0]?.cmd).toMatch(/node .*bin\/ntsoekhe daemon --home/)
    daemonPid = kids[0]?.pid as number
  } catch (err) {
    kill()
    throw err
  }
  return { npm, daemonPid, socket, output: () => output, exited, kill }
}

/** Waits until the daemon and npm have both exited; returns npm's exit */
async function bothExit (started: NpmStart, after: string): Promise<{ code: number | null, signal: NodeJS.Signals | null }> {
  await waitForValue(`the daemon to exit after ${after}`, async () => !alive(started.daemonPid), 20_000)
  return await waitForValue(`npm to exit after ${after}`, async () => await Promise.race([started.exited, new Promise<false>(resolve => setTimeout(() => { resolve(false) }, 100))]), 20_000)
}

/** The daemon closed everything as on its own SIGTERM: its store closed, its socket gone, nothing answers */
async function expectCleanStop (started: NpmStart, exit: { code: number | null, signal: NodeJS.Signals | null }): Promise<void> {
  const output = started.output()
  expect(output).toMatch(/"msg":"node stopped"/)
  expect(exit, output).toEqual({ code: 0, signal: null })
  expect(existsSync(started.socket), output).toBe(false)
  expect(await statusAnswers(started.socket)).toBe(false)
}

describe('running as a service', () => {
  it('npm start runs the daemon itself under npm (exec, no shell between): SIGTERM to npm stops the daemon cleanly', async () => {
    const started = await npmStart()
    try {
      started.npm.kill('SIGTERM')
      await expectCleanStop(started, await bothExit(started, 'SIGTERM to npm'))
    } finally {
      started.kill()
    }
  }, 60_000)

  it('Ctrl-C on npm start (SIGINT to its process group: the daemon gets it twice, from the terminal and from npm) stops the daemon cleanly', async () => {
    const started = await npmStart()
    try {
      process.kill(-(started.npm.pid as number), 'SIGINT')
      await expectCleanStop(started, await bothExit(started, 'SIGINT to the process group'))
    } finally {
      started.kill()
    }
  }, 60_000)

  it('a second signal while the daemon stops is ignored: it still closes its store and removes its socket, and exits 0', async () => {
    const daemon = await startDaemon({ args: ['--log-level', 'info'] })
    daemon.proc.kill('SIGINT')
    // The first signal's handler has run: the second one arrives while the node stops.
    await waitForValue('the daemon to log that it is shutting down', async () => daemon.stdout().includes('"msg":"shutting down"'), 15_000)
    daemon.proc.kill('SIGTERM')
    expect(await daemon.stop(), daemon.stdout()).toEqual({ code: 0, signal: null })
    expect(daemon.stdout()).toMatch(/"msg":"node stopped"/)
    expect(existsSync(daemon.socket)).toBe(false)
  }, 60_000)

  it('a port already in use, for each listener: one line naming the port and the flag and config key that change it, exit 1, no stack trace', async () => {
    const holder = createServer()
    await new Promise<void>(resolve => holder.listen(0, '127.0.0.1', resolve))
    const port = (holder.address() as AddressInfo).port
    try {
      const cases: Array<[string[], RegExp]> = [
        [['--listen', `/ip4/127.0.0.1/tcp/${port}`], /--listen \S+ or network\.listen/],
        [['--metrics-listen', `127.0.0.1:${port}`], /--metrics-listen <host:port> or monitoring\.metricsListen/],
        [['--console', `127.0.0.1:${port}`], /--console <host:port> or monitoring\.console/]
      ]
      for (const [args, remedy] of cases) {
        const home = await makeHome()
        const r = await daemonExit(home, { args })
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(1)
        expect(r.stderr).toMatch(new RegExp(`^error: port ${port}\\b.*already in use`))
        expect(r.stderr).toMatch(remedy)
        expect(r.stderr.trimEnd().split('\n'), r.stderr).toHaveLength(1)
        expect(r.stderr).not.toMatch(/^\s+at /m)
        // Refused before the socket serves: nothing is left behind that a next start would trip over.
        expect(existsSync(join(home, 'api.sock'))).toBe(false)
      }
    } finally {
      await new Promise(resolve => holder.close(resolve))
    }
  }, 120_000)

  it('the daemon handles SIGINT and SIGTERM before it says it is ready (the --json ready line, or the banner)', async () => {
    // A script that signals the moment the ready line appears is woken by it at once: had the handlers come after
    // it, the signal could meet the default action (death with the store open). Checked when each line is written.
    for (const json of [true, false]) {
      const before = { SIGINT: new Set(process.listeners('SIGINT')), SIGTERM: new Set(process.listeners('SIGTERM')) }
      const added = (signal: 'SIGINT' | 'SIGTERM'): Array<(signal: NodeJS.Signals) => void> => process.listeners(signal).filter(l => !before[signal].has(l))
      let handledAtReady: boolean | undefined
      let said = ''
      const write = (s: string): boolean => {
        said += s
        if (/^\{"ready":true/.test(s) || s.startsWith('ntsoekhe daemon ready')) handledAtReady = added('SIGINT').length === 1 && added('SIGTERM').length === 1
        return true
      }
      const home = await makeHome()
      const running = runDaemon(home, { listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], logLevel: 'silent', json }, { stdout: { write }, stderr: { write }, stdin: process.stdin })
      try {
        await waitForValue(`the daemon (json: ${String(json)}) to say it is ready`, async () => handledAtReady !== undefined || await Promise.race([running.then(code => { throw new Error(`exited ${code}: ${said}`) }), Promise.resolve(false)]), 30_000)
        expect(handledAtReady, said).toBe(true)
      } finally {
        // Its own handler stops it, as the signal would (once it serves: before, the handler would re-raise the
        // signal in this process); then the test process gets its handlers back.
        if (handledAtReady !== undefined) {
          for (const handler of added('SIGTERM')) handler('SIGTERM')
          expect(await running).toBe(0)
        }
        for (const signal of ['SIGINT', 'SIGTERM'] as const) for (const handler of added(signal)) process.off(signal, handler)
      }
      expect(existsSync(join(home, 'api.sock'))).toBe(false)
    }
  }, 90_000)

  it('ntsoekhe --version prints the version in package.json', async () => {
    for (const flag of ['--version', '-V']) {
      const r = await cli([flag])
      expect(r.code).toBe(0)
      expect(r.stdout).toBe(`${pkg.version}\n`)
    }
    // As a command too, and as JSON.
    const command = await cli(['version'])
    expect(command).toMatchObject({ code: 0, stdout: `${pkg.version}\n` })
    expect(JSON.parse((await cli(['version', '--json'])).stdout)).toEqual({ version: pkg.version })
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

  it('README\'s service section installs what the unit names: its user, its home (made before a first start by hand), its ExecStart', async () => {
    const unit = await readFile(join(ROOT, 'configs', 'ntsoekhe.service'), 'utf8')
    const directive = (key: string): string => new RegExp(`^${key}=(.*)$`, 'm').exec(unit)?.[1] ?? ''
    const [user, group] = [directive('User'), directive('Group')]
    const binary = directive('ExecStart').split(' ')[0] as string
    const home = /--home (\S+)/.exec(directive('ExecStart'))?.[1] as string
    expect(`/var/lib/${directive('StateDirectory')}`).toBe(home)
    const readme = await readFile(join(ROOT, 'README.md'), 'utf8')
    const section = readme.slice(readme.indexOf('\n## Running as a service\n'), readme.indexOf('\n## ', readme.indexOf('\n## Running as a service\n') + 1))
    expect(section.length).toBeGreaterThan(100)
    expect(section).toContain(`useradd --system --home-dir ${home} --shell /usr/sbin/nologin ${user}`)
    expect(section).toContain('cp configs/ntsoekhe.service /etc/systemd/system/')
    expect(section).toContain(binary)
    // The user cannot make its home under /var/lib: it exists before the first start by hand that joins a network.
    const makeHomeAt = section.indexOf(`install -d -m 0700 -o ${user} -g ${group} ${home}`)
    expect(makeHomeAt).toBeGreaterThan(-1)
    const joinAt = section.search(new RegExp(`sudo -u ${user} ntsoekhe daemon --home\\s+${home} --join`))
    expect(joinAt).toBeGreaterThan(-1)
    expect(makeHomeAt).toBeLessThan(joinAt)
  })

  it('README and docs/ link only to files of the repository, README to docs/design.md; no address outside this machine', async () => {
    const docs = ['README.md', ...(await readdir(join(ROOT, 'docs'))).filter(f => f.endsWith('.md')).map(f => `docs/${f}`)]
    expect(docs).toContain('docs/design.md')
    for (const doc of docs) {
      const text = await readFile(join(ROOT, doc), 'utf8')
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const path = (target as string).replace(/#.*$/, '')
        expect(path, `${doc} links to ${target as string}`).not.toMatch(/^[a-z][a-z0-9+.-]*:/i)
        if (path === '') continue
        const resolved = join(ROOT, doc.includes('/') ? 'docs' : '', path)
        expect(resolved.startsWith(ROOT + '/'), `${doc} links outside the repository: ${target as string}`).toBe(true)
        expect(existsSync(resolved), `${doc} links to ${target as string}, which does not exist`).toBe(true)
      }
      // Addresses in examples name this machine (a socket, a loopback port), never a site.
      for (const [url] of text.matchAll(/\bhttps?:\/\/[^\s)`'"<>]+/g)) {
        expect(url, `${doc} names ${url}`).toMatch(/^https?:\/\/(localhost|127\.0\.0\.1|\[::1\])([:/]|$)/)
      }
    }
    expect(await readFile(join(ROOT, 'README.md'), 'utf8')).toContain('](docs/design.md)')
  })

  it('LICENSE is the MIT licence package.json names', async () => {
    expect(pkg.license).toBe('MIT')
    const license = await readFile(join(ROOT, 'LICENSE'), 'utf8')
    expect(license.split('\n')[0]).toBe('MIT License')
    expect(license).toContain('Permission is hereby granted, free of charge')
  })
})
