// `npm run lint`: ESLint over the repository, with the packages of tools/lint
// (installed here from its own lockfile the first time, and again whenever
// that lockfile changes). Arguments are passed on to eslint (`-- --fix`).
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..', '..')
const marker = join(here, 'node_modules', '.installed-lock-sha256')
const lockHash = createHash('sha256').update(readFileSync(join(here, 'package-lock.json'))).digest('hex')

if (!existsSync(marker) || readFileSync(marker, 'utf8') !== lockHash) {
  const npm = spawnSync('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: here, stdio: ['ignore', 'inherit', 'inherit'] })
  if (npm.status !== 0) {
    console.error('lint: installing tools/lint failed (npm ci in tools/lint)')
    process.exit(npm.status ?? 1)
  }
  writeFileSync(marker, lockHash)
}

const eslint = spawnSync(process.execPath, [join(here, 'node_modules', 'eslint', 'bin', 'eslint.js'), ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' })
process.exit(eslint.status ?? 1)
