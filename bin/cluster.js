#!/usr/bin/env node
// `npm run cluster -- 3`: a local network of N daemons on 127.0.0.1 in temp
// homes, seeded with demo data. Ctrl-C stops every node and removes the homes.
import '../dist/util/polyfill.js'
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { NtsoekheClient } from '../dist/client/index.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const bin = join(root, 'bin', 'ntsoekhe')
const size = Number(process.argv[2] ?? 3)
const scale = Number(process.env.SEED_SCALE ?? 1)
if (!Number.isSafeInteger(size) || size < 1 || size > 50) {
  console.error('usage: npm run cluster -- <nodes 1-50>')
  process.exit(2)
}

const nodes = []
let stopping = false
/** The first admin's token (node 1's admin.token): good on every member */
let token

async function waitFor (what, fn, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      const v = await fn()
      if (v) return v
    } catch {}
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

async function startNode (i, invite) {
  const home = await mkdtemp(join(tmpdir(), `ntk-c${i}-`))
  const args = [bin, 'daemon', '--home', home, '--listen', '/ip4/127.0.0.1/tcp/0', '--log-level', 'warn']
  if (invite !== undefined) args.push('--join', invite)
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'pipe'] })
  let stderr = ''
  proc.stderr.on('data', c => { stderr += c })
  const node = { home, proc }
  nodes.push(node)
  proc.on('exit', code => { if (!stopping) console.error(`node ${i + 1} exited (${code}): ${stderr}`) })
  // The first node creates the network and its admin; the others join it and take the same token.
  token ??= await waitFor(`node 1 to write ${join(home, 'admin.token')}`, async () => (await readFile(join(home, 'admin.token'), 'utf8')).trim())
  node.client = new NtsoekheClient({ socket: join(home, 'api.sock'), token })
  node.status = await waitFor(`node ${i + 1} to answer on ${join(home, 'api.sock')}`, async () => await node.client.status())
  return node
}

async function stop () {
  if (stopping) return
  stopping = true
  console.log('\nstopping…')
  await Promise.all(nodes.map(async n => {
    if (n.proc.exitCode !== null) return
    const exited = new Promise(resolve => n.proc.once('exit', resolve))
    n.proc.kill('SIGTERM')
    const timer = setTimeout(() => n.proc.kill('SIGKILL'), 10_000)
    await exited
    clearTimeout(timer)
  }))
  await Promise.all(nodes.map(async n => await rm(n.home, { recursive: true, force: true })))
  process.exit(0)
}

process.on('SIGINT', () => { void stop() })
process.on('SIGTERM', () => { void stop() })

try {
  const first = await startNode(0)
  const { invite } = await first.client.invite()
  for (let i = 1; i < size; i++) await startNode(i, invite)
  await waitFor(`every node to see ${size} alive members`, async () => {
    const all = await Promise.all(nodes.map(async n => await n.client.status()))
    return all.every(s => s.members.filter(m => m.state === 'alive').length === size)
  })
  const { seed } = await import('../dist/cli/seed.js')
  const counts = await seed(first.client, scale, { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin })
  console.log(`\n${size} nodes up, seeded ${Object.values(counts).reduce((a, b) => a + b, 0)} rows through node 1.\n`)
  nodes.forEach((n, i) => {
    console.log(`node ${i + 1}  ${n.status.peerId}\n  socket ${n.client.socket}`)
  })
  // Only node 1's home holds admin.token (it created the network); its token works on every node.
  console.log(`\nQuery any node with node 1's admin token, e.g.:\n  export NTSOEKHE_TOKEN=$(cat ${join(nodes[0].home, 'admin.token')})\n  ${bin} query patient_records --limit 5 --home ${nodes[nodes.length - 1].home}` +
    `\n  ${bin} peers --home ${nodes[0].home}\n  curl --unix-socket ${nodes[0].client.socket} -H "Authorization: Bearer $(cat ${join(nodes[0].home, 'admin.token')})" http://localhost/v1/status\n\nCtrl-C stops the network.`)
} catch (err) {
  console.error(`cluster failed: ${err.message}`)
  await stop()
}
