/**
 * README names Node 20: no installed package may ask for a newer Node
 * (npm ci would print EBADENGINE), neither the project's nor ESLint's (the
 * packages `npm run lint` installs in tools/lint), and the two pinned down by
 * package.json's `overrides` (p-retry under libp2p, light-my-request and its
 * cookie under fastify) must still do what those packages call them for.
 */
import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { pathToFileURL } from 'node:url'
import Fastify from 'fastify'
import { describe, expect, it } from 'vitest'

const ROOT = join(import.meta.dirname, '..', '..')
type Lock = { packages: Record<string, { version?: string, engines?: { node?: string }, dev?: boolean, devOptional?: boolean, optional?: boolean, inBundle?: boolean }> }
const readLock = async (path: string): Promise<Lock> => JSON.parse(await readFile(join(ROOT, path), 'utf8')) as Lock
const lock = await readLock('package-lock.json')

/** The lowest Node version package.json promises (engines: `>=20.19.0`) */
const MINIMUM = [20, 19, 0]

/**
 * Whether an engines range admits `version`, for the forms packages write:
 * `*`, `>=20`, `^20.19.0`, `>=18 <23`, alternatives joined by `||`.
 */
function admits (range: string, version: number[]): boolean {
  const cmp = (a: number[], b: number[]): number => (a[0]! - b[0]!) || ((a[1] ?? 0) - (b[1] ?? 0)) || ((a[2] ?? 0) - (b[2] ?? 0))
  const parse = (v: string): number[] => v.replace(/^v/, '').split('.').map(x => Number(x.replace(/x|\*/, '0')))
  return range.split('||').some(alt => alt.trim().replace(/(>=|<=|>|<|\^|~|=)\s+/g, '$1').split(/\s+/).filter(c => c !== '').every(c => {
    if (c === '*' || c === 'x') return true
    const m = /^(>=|<=|>|<|\^|~|=)?(.+)$/.exec(c)
    const [op, v] = [m?.[1] ?? '=', parse(m?.[2] ?? '0')]
    const d = cmp(version, v)
    switch (op) {
      case '>=': return d >= 0
      case '>': return d > 0
      case '<=': return d <= 0
      case '<': return d < 0
      case '^': return d >= 0 && version[0] === v[0]
      case '~': return d >= 0 && version[0] === v[0] && version[1] === v[1]
      default: return version[0] === v[0] && (c.split('.').length < 2 || version[1] === v[1])
    }
  }))
}

/** Imports `name` as `from` (a package directory) resolves it */
async function importFrom (from: string, name: string): Promise<any> {
  const require = createRequire(join(ROOT, 'node_modules', from, 'package.json'))
  return await import(pathToFileURL(require.resolve(name)).href)
}

describe('Node 20.19', () => {
  it('every installed package runs on the Node package.json names, by its engines field', async () => {
    const own = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } }
    expect(own.engines.node).toBe(`>=${MINIMUM.join('.')}`)
    expect(admits('>=22', MINIMUM)).toBe(false)
    expect(admits('^20.19.0 || >=22.12.0', MINIMUM)).toBe(true)
    const newer = (l: Lock): string[] => Object.entries(l.packages)
      .filter(([path, p]) => path !== '' && p.engines?.node !== undefined && !admits(p.engines.node, MINIMUM))
      .map(([path, p]) => `${path}@${String(p.version)} (${String(p.engines?.node)})`)
    expect(newer(lock)).toEqual([])
    expect(newer(await readLock('tools/lint/package-lock.json')), 'tools/lint (npm run lint)').toEqual([])
  })

  it('the packed package carries the locked tree: every runtime package is bundled', () => {
    // npm applies package.json's overrides only to this project's own install, and ignores a local
    // tarball's npm-shrinkwrap.json: `npm install -g ./ntsoekhe-*.tgz` (README, Running as a
    // service) would resolve p-retry 8 and cookie 2 afresh and print EBADENGINE. With
    // bundleDependencies the tarball holds node_modules as locked here, overrides applied.
    const runtime = Object.entries(lock.packages).filter(([path, p]) => path !== '' && p.dev !== true && p.devOptional !== true)
    expect(runtime.length).toBeGreaterThan(0)
    expect(runtime.filter(([, p]) => p.inBundle !== true).map(([path]) => path)).toEqual([])
    expect(lock.packages['node_modules/p-retry']?.inBundle).toBe(true)
  })

  it('README names the Node version package.json promises', async () => {
    const readme = await readFile(join(ROOT, 'README.md'), 'utf8')
    const quickStart = readme.slice(readme.indexOf('## Quick start'))
    expect(quickStart).toMatch(new RegExp(`^Node\\.js ${MINIMUM[0]}\\.${MINIMUM[1]} or newer`, 'm'))
    // No other Node version stated as the one to run on.
    expect([...readme.matchAll(/Node(?:\.js)? (\d+(?:\.\d+)*) or newer/g)].map(m => m[1])).toEqual([`${MINIMUM[0]}.${MINIMUM[1]}`])
  })

  it('p-retry, as libp2p reconnects with it: attempts numbered, retried on failure, stopped by the signal', async () => {
    const require = createRequire(join(ROOT, 'node_modules', 'libp2p', 'package.json'))
    const pkg = JSON.parse(await readFile(join(dirname(require.resolve('p-retry')), 'package.json'), 'utf8')) as { version: string }
    expect(pkg.version).toBe('7.1.1')
    const { default: pRetry } = await importFrom('libp2p', 'p-retry')
    const attempts: number[] = []
    const result = await pRetry(async (attempt: number) => {
      attempts.push(attempt)
      if (attempt < 3) throw new Error(`attempt ${attempt} failed`)
      return 'connected'
    }, { retries: 5, factor: 1, minTimeout: 1, signal: new AbortController().signal })
    expect(result).toBe('connected')
    expect(attempts).toEqual([1, 2, 3])
    const stop = new AbortController()
    stop.abort(new Error('stopped'))
    await expect(pRetry(async () => { throw new Error('never') }, { retries: 5, minTimeout: 1, signal: stop.signal })).rejects.toThrow()
  })

  it('fastify inject (light-my-request with cookie 1) sends cookies', async () => {
    const app = Fastify()
    app.get('/', async req => ({ cookie: req.headers.cookie }))
    const res = await app.inject({ method: 'GET', url: '/', cookies: { session: 'a b' } })
    expect(res.json()).toEqual({ cookie: 'session=a%20b' })
    await app.close()
  })
})
