import { Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { createLogger } from '../../src/daemon/logger.js'

describe('daemon logger', () => {
  it('every line names its component once: its own, its child logger\'s, or the daemon\'s', async () => {
    const lines: string[] = []
    const sink = new Writable({ write (chunk: Buffer, _enc, done) { lines.push(...chunk.toString('utf8').split('\n').filter(l => l !== '')); done() } })
    const log = createLogger('info', sink)
    log.info('node ready')
    log.warn({ component: 'store' }, 'migrating')
    log.child({ component: 'api' }).error('request failed')
    log.debug('not at info')
    await new Promise(resolve => setImmediate(resolve))
    expect(lines).toHaveLength(3)
    for (const line of lines) expect(line.match(/"component"/g), line).toHaveLength(1)
    expect(lines.map(l => (JSON.parse(l) as { component: string }).component)).toEqual(['daemon', 'store', 'api'])
  })
})
