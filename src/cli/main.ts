import '../util/polyfill.js'
import { run } from './index.js'

const code = await run(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin })
process.exitCode = code
