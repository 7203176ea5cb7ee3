import { readFileSync } from 'node:fs'

/**
 * The package's version, read from its package.json (one directory above
 * `src/` and `dist/` alike), so `ntsoekhe --version` and `status` never
 * disagree with what was installed.
 */
export const VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version
