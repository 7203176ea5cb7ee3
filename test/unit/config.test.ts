import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { applyFlags, portInUse } from '../../src/cli/daemon.js'
import { run } from '../../src/cli/index.js'
import { defaultConfig, loadConfig, mergeConfig } from '../../src/daemon/config.js'
import { tempDir } from '../helpers/temp.js'

describe('config', () => {
  it('every example in configs/ is a valid config', async () => {
    const dir = join(import.meta.dirname, '..', '..', 'configs')
    const files = (await readdir(dir)).filter(f => f.endsWith('.json'))
    expect(files.length).toBeGreaterThan(0)
    for (const f of files) {
      const parsed: unknown = JSON.parse(await readFile(join(dir, f), 'utf8'))
      expect(() => mergeConfig(defaultConfig(), parsed, f)).not.toThrow()
    }
    // default.json writes out every default, and turns the console on (off by default) on loopback, as every example does.
    const withConsole = defaultConfig()
    withConsole.monitoring.console = '127.0.0.1:4180'
    expect(JSON.parse(await readFile(join(dir, 'default.json'), 'utf8'))).toEqual(withConsole)
    for (const f of files) expect((JSON.parse(await readFile(join(dir, f), 'utf8')) as { monitoring?: { console?: unknown } }).monitoring?.console).toBe('127.0.0.1:4180')
  })

  it('first use writes every default; a damaged or mistyped file is a clear error', async () => {
    const t = await tempDir()
    try {
      const first = await loadConfig(t.path)
      expect(first.created).toBe(true)
      expect(JSON.parse(await readFile(join(t.path, 'config.json'), 'utf8'))).toEqual(defaultConfig())
      expect((await loadConfig(t.path)).created).toBe(false)
    } finally { await t.remove() }
    expect(() => mergeConfig(defaultConfig(), { replication: { replicas: 'three' } })).toThrow(/replication.replicas/)
    expect(() => mergeConfig(defaultConfig(), { nope: {} })).toThrow(/unknown section/)
    expect(() => mergeConfig(defaultConfig(), { replication: { writeQuorum: 4 } })).toThrow(/quorums/)
    expect(() => mergeConfig(defaultConfig(), { membership: { suspectAfterMs: 10 } })).toThrow(/membership/)
    expect(() => mergeConfig(defaultConfig(), { storage: { writeBufferMb: 0 } })).toThrow(/storage.writeBufferMb/)
    expect(() => mergeConfig(defaultConfig(), { storage: { writeBufferMb: 2.5 } })).toThrow(/storage.writeBufferMb/)
    expect(() => mergeConfig(defaultConfig(), { log: { level: 'bogus' } })).toThrow(/log.level must be one of trace, debug/)
    // A config written before a key existed gets the key's default.
    expect(mergeConfig(defaultConfig(), { storage: { sync: false } }).storage).toEqual({ sync: false, writeBufferMb: 16 })
  })

  it('daemon flags override for the run; --replicas alone caps the quorums', () => {
    const c = applyFlags(defaultConfig(), { listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: ['/ip4/127.0.0.1/tcp/1/p2p/x'], replicas: 1 })
    expect(c.network.listen).toEqual(['/ip4/127.0.0.1/tcp/0'])
    expect(c.network.bootstrap).toEqual(['/ip4/127.0.0.1/tcp/1/p2p/x'])
    expect(c.replication).toMatchObject({ replicas: 1, writeQuorum: 1, readQuorum: 1 })
    expect(() => applyFlags(defaultConfig(), { listen: [], bootstrap: [], writeQuorum: 5 })).toThrow()
  })

  it('the console and metrics addresses: off by default, host:port, the console on loopback unless consoleRemote', () => {
    expect(defaultConfig().monitoring).toEqual({ console: null, consoleRemote: false, metricsListen: null })
    const c = applyFlags(defaultConfig(), { listen: [], bootstrap: [], console: '127.0.0.1:4180', metricsListen: '0.0.0.0:9464' })
    expect(c.monitoring).toEqual({ console: '127.0.0.1:4180', consoleRemote: false, metricsListen: '0.0.0.0:9464' })
    expect(applyFlags(defaultConfig(), { listen: [], bootstrap: [], console: '[::1]:4180' }).monitoring.console).toBe('[::1]:4180')
    expect(() => applyFlags(defaultConfig(), { listen: [], bootstrap: [], console: '0.0.0.0:4180' })).toThrow(/plain HTTP.*consoleRemote/)
    expect(applyFlags(defaultConfig(), { listen: [], bootstrap: [], console: '0.0.0.0:4180', consoleRemote: true }).monitoring.consoleRemote).toBe(true)
    for (const bad of ['4180', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:70000', 'http://127.0.0.1:4180', '[nothex]:1']) {
      expect(() => mergeConfig(defaultConfig(), { monitoring: { console: bad } }), bad).toThrow(/monitoring.console.*host:port/)
      expect(() => mergeConfig(defaultConfig(), { monitoring: { metricsListen: bad } }), bad).toThrow(/monitoring.metricsListen.*host:port/)
    }
    expect(() => mergeConfig(defaultConfig(), { monitoring: { console: 4180 } })).toThrow(/monitoring.console has the wrong type/)
  })

  it('a listen port in use: the multiaddr as configured and its port, from libp2p\'s message (IPv6 and DNS too)', () => {
    // libp2p's message as it is: one line per address that failed, then the inner error's stack.
    const libp2p = (address: string, node: string): Error => new Error('Some configured addresses failed to be listened on, you may need to remove one or more listen addresses from your configuration or set `transportManager.faultTolerance` to NO_FATAL:\n\n' +
      `  ${address}: Error: listen EADDRINUSE: address already in use ${node}\n      at Server.setupListenHandle [as _listen2] (node:net:1908:16)\n`)
    expect(portInUse(libp2p('/ip4/0.0.0.0/tcp/4100', '0.0.0.0:4100'))).toEqual({ address: '/ip4/0.0.0.0/tcp/4100', port: 4100 })
    expect(portInUse(libp2p('/ip6/::1/tcp/47105', '::1:47105'))).toEqual({ address: '/ip6/::1/tcp/47105', port: 47105 })
    expect(portInUse(libp2p('/dns4/localhost/tcp/47106', '127.0.0.1:47106'))).toEqual({ address: '/dns4/localhost/tcp/47106', port: 47106 })
    // Node's message alone names the address and port at its end.
    expect(portInUse(new Error('listen EADDRINUSE: address already in use ::1:4100'))).toEqual({ address: '::1', port: 4100 })
    expect(portInUse(new Error('listen EACCES: permission denied 0.0.0.0:80'))).toBeUndefined()
  })

  it('a malformed --console or --metrics-listen is a usage error (exit 2) naming the flag', async () => {
    const err: string[] = []
    const io = { stdout: { write: (x: string) => err.push(x) }, stderr: { write: (x: string) => err.push(x) }, stdin: process.stdin }
    expect(await run(['daemon', '--console', 'localhost'], io)).toBe(2)
    expect(err.join('')).toMatch(/--console takes host:port/)
    err.length = 0
    expect(await run(['daemon', '--metrics-listen', '1.2.3.4:99999'], io)).toBe(2)
    expect(err.join('')).toMatch(/--metrics-listen takes host:port/)
  })
})

describe('swarm-key', () => {
  it('writes a private-network key once and never overwrites it', async () => {
    const t = await tempDir()
    const out: string[] = []
    const io = { stdout: { write: (x: string) => out.push(x) }, stderr: { write: (x: string) => out.push(x) }, stdin: process.stdin }
    try {
      const file = join(t.path, 'swarm.key')
      expect(await run(['swarm-key', file], io)).toBe(0)
      const key = await readFile(file, 'utf8')
      expect(key).toMatch(/^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}$/)
      expect(await run(['swarm-key', file], io)).toBe(2)
      expect(await readFile(file, 'utf8')).toBe(key)
    } finally { await t.remove() }
  })
})
