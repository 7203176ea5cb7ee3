/**
 * Spawn helpers for end-to-end tests against the real binary (`bin/ntsoekhe`,
 * which runs `dist/`: build first).
 *
 * Every process spawned here and every temp home made here is tracked; the
 * file-level `afterAll` below kills what is still running (SIGKILL) and removes
 * the homes, so a failing test never leaves a daemon or a directory behind.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll } from 'vitest'

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const BIN = join(ROOT, 'bin', 'ntsoekhe')

/** Flags every test daemon gets, so tests never collide on ports nor flood the output */
export const TEST_DAEMON_FLAGS = ['--listen', '/ip4/127.0.0.1/tcp/0', '--log-level', 'warn']

/** How long a daemon may take to answer `GET /v1/status`. @default 20000 */
const START_TIMEOUT = 20_000
/** How long a CLI command may run. @default 30000 */
const CLI_TIMEOUT = 30_000
/** How long a stopped daemon may take to exit. @default 10000 */
const STOP_TIMEOUT = 10_000

const processes = new Set<ChildProcess>()
const homes = new Set<string>()

export interface Exit { code: number | null, signal: NodeJS.Signals | null }

export interface TestDaemon {
  home: string
  socket: string
  proc: ChildProcess
  /** What the daemon wrote to stderr so far */
  stderr: () => string
  /** What the daemon wrote to stdout so far: its JSON log lines */
  stdout: () => string
  /** Sends `signal` (default SIGTERM) and waits, with a deadline, for the process to exit */
  stop: (signal?: NodeJS.Signals) => Promise<Exit>
  /** SIGKILL, as a crash or power cut would: the store is not closed and the socket file stays */
  kill9: () => Promise<Exit>
}

export interface CliResult { code: number | null, stdout: string, stderr: string }

/** A fresh, short home path (a Unix socket path must fit in 108 bytes), removed after the file's tests */
export async function makeHome (): Promise<string> {
  const home = await mkdtemp(join(tmpdir(), 'ntk-'))
  homes.add(home)
  return home
}

/**
 * Spawns `ntsoekhe daemon` on `home` (a fresh temp home when not given) and
 * waits until `GET /v1/status` answers on `<home>/api.sock`.
 */
export async function startDaemon (options: { home?: string, args?: string[], timeoutMs?: number, socket?: string } = {}): Promise<TestDaemon> {
  assertBuilt()
  const home = options.home ?? await makeHome()
  const socket = options.socket ?? join(home, 'api.sock')
  if (await statusAnswers(socket)) {
    throw new Error(`startDaemon: a daemon already answers on ${socket}; stop it first`)
  }
  const proc = track(spawn(process.execPath, [BIN, 'daemon', '--home', home, ...TEST_DAEMON_FLAGS, ...(options.args ?? [])], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: testEnv()
  }))
  let stderr = ''
  let stdout = ''
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  proc.stdout?.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  const exited = exitOf(proc)

  const timeout = options.timeoutMs ?? START_TIMEOUT
  const deadline = Date.now() + timeout
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      const { code, signal } = await exited
      throw new Error(`startDaemon: the daemon on ${home} exited (code ${String(code)}, signal ${String(signal)}) before GET /v1/status answered on ${socket}\nstderr:\n${stderr}\nstdout:\n${stdout}`)
    }
    if (await statusAnswers(socket)) break
    if (Date.now() > deadline) {
      proc.kill('SIGKILL')
      await exited
      throw new Error(`startDaemon: GET /v1/status did not answer on ${socket} within ${timeout} ms\nstderr:\n${stderr}\nstdout:\n${stdout}`)
    }
    await sleep(25)
  }

  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<Exit> => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal)
    return await withDeadline(exited, STOP_TIMEOUT, `the daemon on ${home} to exit after ${signal}`, () => stderr)
  }
  return { home, socket, proc, stderr: () => stderr, stdout: () => stdout, stop, kill9: async () => await stop('SIGKILL') }
}

/**
 * Spawns `ntsoekhe daemon` on `home` expecting it to exit on its own (a daemon
 * that must refuse to start), and returns how it exited and what it said.
 */
export async function daemonExit (home: string, options: { args?: string[], timeoutMs?: number } = {}): Promise<Exit & { stdout: string, stderr: string }> {
  assertBuilt()
  const proc = track(spawn(process.execPath, [BIN, 'daemon', '--home', home, ...TEST_DAEMON_FLAGS, ...(options.args ?? [])], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: testEnv()
  }))
  let stdout = ''
  let stderr = ''
  proc.stdout?.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  const timeout = options.timeoutMs ?? START_TIMEOUT
  const exit = await withDeadline(exitOf(proc), timeout, `the daemon on ${home} to exit by itself`, () => `stdout:\n${stdout}\nstderr:\n${stderr}`, () => proc.kill('SIGKILL'))
  return { ...exit, stdout, stderr }
}

/**
 * Runs `ntsoekhe <args>` (with `--home <home>` appended when given) and
 * returns its exit code and output. `input` is written to its stdin; without
 * it, stdin is closed at once.
 */
export async function cli (args: string[], options: { home?: string, input?: string, timeoutMs?: number, token?: string, closeStdout?: boolean } = {}): Promise<CliResult> {
  assertBuilt()
  const argv = [BIN, ...args, ...(options.home === undefined ? [] : ['--home', options.home])]
  // Without a token the CLI falls back to the home's admin.token (a home that created its network has one).
  const env = options.token === undefined ? testEnv() : { ...testEnv(), NTSOEKHE_TOKEN: options.token }
  const proc = track(spawn(process.execPath, argv, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env }))
  let stdout = ''
  let stderr = ''
  // closeStdout: the reader is gone before the command writes (`ntsoekhe ... | head` once head has its lines).
  if (options.closeStdout === true) proc.stdout?.destroy()
  else proc.stdout?.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  proc.stderr?.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  // A command that does not read stdin may exit before the write lands.
  proc.stdin?.on('error', () => {})
  proc.stdin?.end(options.input ?? '')
  const timeout = options.timeoutMs ?? CLI_TIMEOUT
  const what = `\`ntsoekhe ${args.join(' ')}\` to exit`
  const { code } = await withDeadline(exitOf(proc), timeout, what, () => `stdout:\n${stdout}\nstderr:\n${stderr}`, () => proc.kill('SIGKILL'))
  return { code, stdout, stderr }
}

/** Parses a command's `--json` output, saying what it got when that is not JSON */
export function json<T = any> (result: CliResult): T {
  try {
    return JSON.parse(result.stdout) as T
  } catch {
    throw new Error(`expected JSON on stdout (exit ${String(result.code)}), got:\n${result.stdout}\nstderr:\n${result.stderr}`)
  }
}

/** Registers a process with the safety net; the net SIGKILLs it if a test leaves it running */
export function track<P extends ChildProcess> (proc: P): P {
  processes.add(proc)
  proc.once('exit', () => processes.delete(proc))
  return proc
}

/**
 * Does `GET /v1/status` answer on this socket? Without a token the daemon
 * answers 401, which says as well that it is up.
 */
export async function statusAnswers (socket: string): Promise<boolean> {
  return await new Promise(resolve => {
    const req = request({ socketPath: socket, path: '/v1/status', method: 'GET', timeout: 2000 }, res => {
      res.resume()
      res.on('end', () => { resolve(res.statusCode === 200 || res.statusCode === 401) })
      res.on('error', () => { resolve(false) })
    })
    req.on('timeout', () => { req.destroy() })
    req.on('error', () => { resolve(false) })
    req.end()
  })
}

/** The first admin's token of a home that created its network (`<home>/admin.token`), for NtsoekheClient */
export async function adminToken (home: string): Promise<string> {
  return (await readFile(join(home, 'admin.token'), 'utf8')).trim()
}

export async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

/** SIGKILLs every tracked process still running and removes every temp home */
export async function cleanup (): Promise<void> {
  const running = [...processes]
  for (const p of running) p.kill('SIGKILL')
  await Promise.all(running.map(async p => await withDeadline(exitOf(p), STOP_TIMEOUT, `process ${String(p.pid)} to die after SIGKILL`, () => '').catch(() => {})))
  const dirs = [...homes]
  homes.clear()
  await Promise.all(dirs.map(async d => { await rm(d, { recursive: true, force: true }) }))
}

afterAll(cleanup)
// Last resort when the test worker itself goes away without running hooks.
process.once('exit', () => { for (const p of processes) p.kill('SIGKILL') })

function assertBuilt (): void {
  if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) {
    throw new Error(`${join(ROOT, 'dist')} has no build; run \`npm run build\` before the end-to-end tests`)
  }
}

function testEnv (): NodeJS.ProcessEnv {
  // A test must never reach a real home through $NTSOEKHE_HOME, nor draw a progress bar.
  const { NTSOEKHE_HOME: _home, NTSOEKHE_TOKEN: _token, ...env } = process.env
  return { ...env, CI: 'true' }
}

function exitOf (proc: ChildProcess): Promise<Exit> {
  if (proc.exitCode !== null || proc.signalCode !== null) {
    return Promise.resolve({ code: proc.exitCode, signal: proc.signalCode })
  }
  return new Promise(resolve => {
    proc.once('exit', (code, signal) => { resolve({ code, signal }) })
  })
}

async function withDeadline<T> (promise: Promise<T>, ms: number, what: string, context: () => string, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timedOut = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      onTimeout?.()
      const ctx = context()
      reject(new Error(`timed out after ${ms} ms waiting for ${what}${ctx === '' ? '' : `\n${ctx}`}`))
    }, ms)
  })
  try {
    return await Promise.race([promise, timedOut])
  } finally {
    clearTimeout(timer)
  }
}
