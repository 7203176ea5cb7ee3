import '../util/polyfill.js'
import { DEFAULT_STEPS, MAX_NODES, MIN_NODES, replayCommand, runSimulation } from './simulation.js'

const USAGE = `usage: npm run sim -- --seed <n> [--steps <n>] [--nodes <${MIN_NODES}-${MAX_NODES}>] [--verbose] [--messages]`

function usage (problem: string): never {
  process.stderr.write(`sim: ${problem}\n${USAGE}\n`)
  process.exit(2)
}

function integer (flag: string, value: string | undefined, min: number, max: number): number {
  if (value === undefined || !/^\d+$/.test(value)) usage(`${flag} needs a whole number`)
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < min || n > max) usage(`${flag} must be from ${min} to ${max}`)
  return n
}

/** `npm run sim`: one seeded simulation; exit 1 with the replay command on a broken invariant */
async function main (argv: string[]): Promise<number> {
  let seed: number | undefined
  let steps = DEFAULT_STEPS
  let nodes = MIN_NODES
  let verbose = false
  let messages = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined]
    const value = (): string | undefined => inline ?? argv[++i]
    switch (flag) {
      case '--seed': seed = integer('--seed', value(), 0, 2 ** 32 - 1); break
      case '--steps': steps = integer('--steps', value(), 0, 1_000_000); break
      case '--nodes': nodes = integer('--nodes', value(), MIN_NODES, MAX_NODES); break
      case '--verbose': verbose = true; break
      case '--messages': verbose = true; messages = true; break
      case '--help': case '-h': process.stdout.write(`${USAGE}\n`); return 0
      default: usage(`unknown argument ${arg}`)
    }
  }
  if (seed === undefined) usage('--seed is required')
  const started = Date.now()
  const result = await runSimulation({ seed, steps, nodes, messages, ...(verbose ? { log: (line: string) => { process.stdout.write(`${line}\n`) } } : {}) })
  const s = result.stats
  const summary = `acked ${s.acked}, unknown ${s.unknown}, refused ${s.refused}; ${s.crashes} crashes (${s.lostUnsynced} unsynced writes lost), ${s.restarts} restarts, ${s.joins} joins, ${s.removals} removals, ${s.partitions} partitions, ${s.skews} clock skews; ${s.messages} messages, ${s.events} events, ${s.seconds} s of fake time in ${((Date.now() - started) / 1000).toFixed(1)} s`
  if (result.failure !== undefined) {
    const f = result.failure
    process.stdout.write(`sim: seed ${seed} FAILED at step ${f.step}${f.phase === 'heal' ? ' (the final heal)' : ''} of ${steps} with ${nodes} nodes: ${f.message}\n`)
    process.stdout.write(`sim: ${summary}\n`)
    process.stdout.write(`sim: replay with: ${replayCommand(seed, steps, nodes)} --verbose\n`)
    return 1
  }
  process.stdout.write(`sim: seed ${seed} ok: ${steps} steps, ${nodes} nodes, converged ${s.convergedInSeconds} s after the heal; ${summary}; trace ${result.traceHash.slice(0, 16)}\n`)
  return 0
}

main(process.argv.slice(2)).then(code => { process.exitCode = code }, err => {
  process.stderr.write(`sim: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
