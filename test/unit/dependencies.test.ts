/**
 * Every package package.json lists is used: imported (or resolved) by the
 * code, the tests, bin/ or the configs, or, for the few that are not
 * imported, used the way its entry below says. A dependency left behind by a
 * change fails here, so it gets removed rather than installed for nothing.
 * And `npm ci` installs without warnings about install scripts.
 */
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

const ROOT = join(import.meta.dirname, '..', '..')

/** Packages that are used without being imported, and how */
const NOT_IMPORTED: Record<string, (pkg: { scripts: Record<string, string>, deps: string[] }) => boolean> = {
  // tsc, in the build and typecheck scripts
  typescript: ({ scripts }) => Object.values(scripts).some(s => /(^|\s)tsc(\s|$)/.test(s)),
  // Node's own types: tsconfig.json's "types"
  '@types/node': () => true
}

/** The files whose imports count: the code, tests, bin/, the configs, the console and the lint tool's own files */
async function sources (): Promise<string[]> {
  const out: string[] = []
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(join(ROOT, dir), { withFileTypes: true })) {
      const path = join(dir, e.name)
      if (e.isDirectory()) {
        if (e.name !== 'node_modules' && e.name !== 'fixtures') await walk(path)
      } else if (/\.(ts|js|mjs|cjs)$/.test(e.name) || dir === 'bin') {
        out.push(await readFile(join(ROOT, path), 'utf8'))
      }
    }
  }
  for (const dir of ['src', 'test', 'bin', 'console', 'tools']) await walk(dir)
  for (const file of ['vitest.config.ts', 'eslint.config.mjs']) out.push(await readFile(join(ROOT, file), 'utf8'))
  return out
}

describe('dependencies', () => {
  it('every dependency and devDependency in package.json is used', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string>, dependencies: Record<string, string>, devDependencies: Record<string, string> }
    const deps = [...Object.keys(pkg.dependencies), ...Object.keys(pkg.devDependencies)]
    const text = (await sources()).join('\n')
    const unused = deps.filter(name => {
      const check = NOT_IMPORTED[name]
      if (check !== undefined) return !check({ scripts: pkg.scripts, deps })
      // @types/x counts when x is a dependency in use
      if (name.startsWith('@types/')) return !deps.includes(name.slice('@types/'.length))
      // As a module specifier: import ... from 'x', import('x/sub'), require('x'), resolve('x')
      const quoted = name.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')
      return !new RegExp(`['"\`]${quoted}(/[^'"\`]*)?['"\`]`).test(text)
    })
    expect(unused, 'listed in package.json, used nowhere: remove them (npm uninstall)').toEqual([])
  })

  it('every locked package with an install script is decided in allowScripts (npm warns on each at install, and npm 12 skips the undecided)', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { allowScripts?: Record<string, boolean> }
    const lock = JSON.parse(await readFile(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version?: string, hasInstallScript?: boolean }> }
    const decided = Object.keys(pkg.allowScripts ?? {}).map(k => k.replace(/(.)@[^@]*$/, '$1'))
    const undecided = Object.entries(lock.packages)
      .filter(([path, p]) => path !== '' && p.hasInstallScript === true)
      .map(([path, p]) => ({ name: path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length), version: p.version }))
      .filter(p => !decided.includes(p.name))
    expect(undecided).toEqual([])
    // classic-level (LevelDB) builds only when no prebuilt binary fits the platform: allowed, or such a platform gets no LevelDB.
    expect(pkg.allowScripts?.['classic-level']).toBe(true)
  })
})
