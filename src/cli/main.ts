import '../util/polyfill.js'
import { run } from './index.js'

// A reader that stops early (`ntsoekhe audit | head`) closes the pipe: the
// output is simply no longer wanted, so the CLI ends quietly instead of dying
// on an unhandled EPIPE with a stack trace. A command that watches stdout
// itself (export, which must fail when cut off) handles it instead.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') throw err
  if (process.stdout.listenerCount('error') > 1) return
  process.exit(process.exitCode ?? 0)
})

const code = await run(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin })
process.exitCode = code
