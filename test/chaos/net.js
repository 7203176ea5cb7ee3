/**
 * Where the chaos suite's daemons live on the network.
 *
 * With root and `ip netns`, each daemon runs in a network namespace of its own
 * (`ip netns exec`), with one veth link to a bridge in a hub namespace, on
 * 10.A.B.<i>: a partition is a set of blackhole routes inside the namespaces
 * (this machine has no nftables or iptables), removed to heal. Every name
 * carries the run id, so runs in parallel never share a namespace or a link.
 * Without root the daemons listen on 127.0.0.1 and partitions are not
 * available (`canPartition` is false).
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

const exec = promisify(execFile)

/** Runs `ip <args>`, failing with what ip said */
async function ip (args) {
  try {
    await exec('ip', args, { timeout: 10_000 })
  } catch (err) {
    throw new Error(`ip ${args.join(' ')} failed: ${String(err.stderr ?? err.message).trim()}`, { cause: err })
  }
}

/** Can this process make network namespaces (root, and `ip netns` works)? */
export async function canUseNetns () {
  if (process.getuid?.() !== 0) return false
  try {
    await exec('ip', ['netns', 'list'], { timeout: 5000 })
    return true
  } catch {
    return false
  }
}

/** Daemons on 127.0.0.1 in this namespace: no partitions */
export class LoopbackNet {
  canPartition = false

  async setup () {}
  async addNode (_i) {}
  /** The command prefix a daemon of node i is spawned with */
  prefix (_i) { return [] }
  listen (_i) { return '/ip4/127.0.0.1/tcp/0' }
  async partition () { throw new Error('partitions need root and ip netns') }
  async heal () {}
  async teardown () {}
}

/** One namespace per daemon, joined by veth links to a bridge in a hub namespace */
export class NetnsNet {
  canPartition = true

  /** @param {string} runId a few hex digits unique to this run */
  constructor (runId) {
    this.runId = runId
    this.hub = `ntkc-${runId}-hub`
    // 10.A.B.0/24 from the run id: any subnet would do inside private namespaces, a distinct one helps reading logs.
    const n = parseInt(runId.slice(0, 4), 16)
    this.subnet = `10.${(n >> 8) & 0xff}.${n & 0xff}`
    /** @type {Set<number>} */
    this.nodes = new Set()
    /** Blackhole routes in place, as [node, address] */
    this.cuts = []
  }

  ns (i) { return `ntkc-${this.runId}-n${i}` }
  address (i) { return `${this.subnet}.${i + 1}` }
  prefix (i) { return ['ip', 'netns', 'exec', this.ns(i)] }
  listen (i) { return `/ip4/${this.address(i)}/tcp/4100` }

  async setup () {
    await ip(['netns', 'add', this.hub])
    await ip(['-n', this.hub, 'link', 'add', 'br0', 'type', 'bridge'])
    await ip(['-n', this.hub, 'link', 'set', 'br0', 'up'])
  }

  async addNode (i) {
    const ns = this.ns(i)
    await ip(['netns', 'add', ns])
    this.nodes.add(i)
    // Interface names are at most 15 bytes: k<run id><i>a / k<run id><i>b.
    const inner = `k${this.runId}${i}a`
    const outer = `k${this.runId}${i}b`
    await ip(['link', 'add', inner, 'netns', ns, 'type', 'veth', 'peer', 'name', outer, 'netns', this.hub])
    await ip(['-n', this.hub, 'link', 'set', outer, 'master', 'br0'])
    await ip(['-n', this.hub, 'link', 'set', outer, 'up'])
    await ip(['-n', ns, 'addr', 'add', `${this.address(i)}/24`, 'dev', inner])
    await ip(['-n', ns, 'link', 'set', inner, 'up'])
    await ip(['-n', ns, 'link', 'set', 'lo', 'up'])
  }

  /** Cuts every link between the two sides, both ways */
  async partition (sideA, sideB) {
    for (const a of sideA) {
      for (const b of sideB) {
        for (const [from, to] of [[a, b], [b, a]]) {
          await ip(['-n', this.ns(from), 'route', 'add', 'blackhole', `${this.address(to)}/32`])
          this.cuts.push([from, to])
        }
      }
    }
  }

  async heal () {
    const cuts = this.cuts
    this.cuts = []
    for (const [from, to] of cuts) {
      await ip(['-n', this.ns(from), 'route', 'del', 'blackhole', `${this.address(to)}/32`]).catch(() => {})
    }
  }

  /** Deletes every namespace of the run (their veth links go with them) */
  async teardown () {
    for (const i of this.nodes) await ip(['netns', 'del', this.ns(i)]).catch(() => {})
    this.nodes.clear()
    await ip(['netns', 'del', this.hub]).catch(() => {})
  }
}
