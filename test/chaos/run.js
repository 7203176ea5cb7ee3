#!/usr/bin/env node
/**
 * `npm run chaos [-- --seed <n>] [--short] [--keep]`: the chaos suite (see
 * chaos.js). Prints its progress on stderr and, last, one line per workload:
 * `chaos <workload>: acked <n>, lost <n>, unknown <n>, converged in <s> s`.
 * Exits 1 on any loss, any problem or no convergence; 2 on a usage error.
 */
import { runChaos } from './chaos.js'

function usage (message) {
  process.stderr.write(`error: ${message}\nusage: npm run chaos -- [--seed <n>] [--short] [--keep]\n`)
  process.exit(2)
}

const argv = process.argv.slice(2)
const options = { profile: 'full' }
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  if (a === '--short') options.profile = 'short'
  else if (a === '--keep') options.keep = true
  else if (a === '--seed') {
    const v = argv[++i]
    if (v === undefined || !/^\d+$/.test(v) || Number(v) > 0xffffffff) usage(`--seed takes a whole number from 0 to ${0xffffffff}`)
    options.seed = Number(v)
  } else usage(`unknown argument ${JSON.stringify(a)}`)
}

// An interrupted run still kills its daemons and removes its namespaces and mounts: runChaos cleans up in
// a finally, which the first SIGINT lets run (the daemons die, the workload fails, the run unwinds).
let interrupted = false
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    if (interrupted) process.exit(130)
    interrupted = true
    process.stderr.write(`chaos: ${signal}: stopping and cleaning up (again to quit at once)\n`)
    abort.abort()
  })
}
const abort = new AbortController()
options.signal = abort.signal

const result = await runChaos({ ...options, log: line => { process.stdout.write(line + '\n') } })
process.exitCode = result.ok ? 0 : 1
