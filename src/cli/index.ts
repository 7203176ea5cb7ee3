import { createReadStream } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import { extname } from 'node:path'
import { Command, CommanderError, Option } from 'commander'
import { NoDaemonError, NtsoekheClient } from '../client/index.js'
import { NtsoekheError } from '../errors/index.js'
import { loadConfig, resolveHome, socketPath } from '../daemon/config.js'
import { readAdminToken } from '../security/tokens.js'
import { renderObject, renderTable } from './format.js'
import { UsageError } from './usage.js'
import { parseComparison } from '../schema/condition.js'
// daemon.js (libp2p, the store) and seed.js (faker) are loaded by the commands that need them:
// a client command then starts in a fraction of the time.
import type { DaemonFlags } from './daemon.js'
import type { ExportFlags } from './export.js'

export interface Io {
  stdout: { write: (s: string) => unknown }
  stderr: { write: (s: string) => unknown, isTTY?: boolean }
  stdin: NodeJS.ReadableStream
}

/** Exit codes: other tools and tests rely on them */
export const EXIT = { OK: 0, REFUSED: 1, USAGE: 2, NO_DAEMON: 3 } as const

interface GlobalOpts { home?: string, json?: boolean, token?: string, consistency?: 'one' | 'quorum' | 'all', breakGlass?: string, idempotencyKey?: string }

/** Runs the CLI with its stdio, returning the exit code (never calls process.exit) */
export async function run (argv: string[], io: Io): Promise<number> {
  let code: number = EXIT.OK
  const program = buildProgram(io, c => { code = c })
  try {
    await program.parseAsync(argv, { from: 'user' })
    return code
  } catch (err) {
    return report(err, io)
  }
}

function report (err: unknown, io: Io): number {
  if (err instanceof CommanderError) {
    return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE
  }
  if (err instanceof UsageError) {
    io.stderr.write(`error: ${err.message}\n`)
    return EXIT.USAGE
  }
  if (err instanceof NoDaemonError) {
    io.stderr.write(`error: ${err.message}\n`)
    return EXIT.NO_DAEMON
  }
  if (err instanceof NtsoekheError) {
    io.stderr.write(`error: ${err.message}${err.column === undefined ? '' : ` (column ${err.column})`} [${err.code}]\n`)
    return EXIT.REFUSED
  }
  io.stderr.write(`error: ${(err as Error)?.message ?? String(err)}\n`)
  return EXIT.REFUSED
}

function buildProgram (io: Io, setCode: (c: number) => void): Command {
  const program = new Command('ntsoekhe')
    .description('A peer-to-peer database for health records')
    .exitOverride()
    .configureOutput({ writeOut: s => io.stdout.write(s), writeErr: s => io.stderr.write(s) })
    .showHelpAfterError()

  const client = async (opts: GlobalOpts): Promise<NtsoekheClient> => {
    const home = resolveHome(opts.home)
    const { config } = await loadConfigIfPresent(home)
    const token = opts.token ?? nonEmpty(process.env.NTSOEKHE_TOKEN) ?? await readAdminToken(home)
    return new NtsoekheClient({ socket: socketPath(home, config), ...(token === undefined ? {} : { token }) })
  }
  const out = (opts: GlobalOpts, json: unknown, text: () => string): void => {
    io.stdout.write(opts.json === true ? JSON.stringify(json) + '\n' : text())
  }
  const common = (cmd: Command): Command => cmd
    .option('--home <dir>', 'node home (default $NTSOEKHE_HOME or ~/.ntsoekhe)')
    .option('--json', 'print JSON')
    .option('--token <token>', 'bearer token (default $NTSOEKHE_TOKEN, then <home>/admin.token)')
    .exitOverride()
    .configureOutput({ writeOut: s => io.stdout.write(s), writeErr: s => io.stderr.write(s) })
  const withConsistency = (cmd: Command): Command => cmd
    .addOption(new Option('--consistency <level>', 'replicas that must answer').choices(['one', 'quorum', 'all']))
  const withKey = (cmd: Command): Command => cmd
    .option('--idempotency-key <key>', 'send the write with this key: sent again with the same key, it answers the first result instead of writing twice (default: a new key, kept across resends)')
  const withBreakGlass = (cmd: Command): Command => cmd
    .option('--break-glass <reason>', 'read outside your role in an emergency, stating why (doctors and nurses; audited)')

  common(program.command('init').description('create the home, identity key, config and store without starting'))
    .action(async (opts: GlobalOpts) => {
      const { initHome } = await import('./daemon.js')
      const info = await initHome(resolveHome(opts.home))
      out(opts, info, () => `${info.created ? 'initialised' : 'already initialised'} ${info.home}\npeer id ${info.peerId}\nadmin token in ${info.adminToken}\n`)
    })

  common(program.command('daemon').description('start a node on its home and serve the socket API'))
    .option('--listen <multiaddr>', 'address to listen on (repeatable)', collect, [])
    .option('--bootstrap <multiaddr>', 'peer to join through, with /p2p/<id> (repeatable)', collect, [])
    .option('--replicas <n>', 'copies of every record (N)', int)
    .option('--write-quorum <n>', 'replicas that must have a write on disk (W)', int)
    .option('--read-quorum <n>', 'replicas asked on a read (R)', int)
    .option('--log-level <level>', 'trace, debug, info, warn, error or silent')
    .option('--join <invite>', 'join the network of the member that printed this invite (ntsoekhe invite): stores its network key in the home')
    .option('--swarm-key <file>', 'network key file to use (network.pnetKeyFile); with --bootstrap, the manual way to join')
    .option('--open-network', 'run without a network key: any machine that reaches the port can join (network.open)')
    .addOption(new Option('--security-off', 'no authentication, access rules, encryption at rest or audit trail: for benchmarks, accepted only with --test').hideHelp())
    .addOption(new Option('--test', 'this daemon is a test or benchmark subject').hideHelp())
    .action(async (opts: GlobalOpts & DaemonFlags) => {
      const { runDaemon } = await import('./daemon.js')
      setCode(await runDaemon(resolveHome(opts.home), opts, io))
    })

  common(program.command('id').description("this node's peer id and addresses"))
    .action(async (opts: GlobalOpts) => {
      const s = await (await client(opts)).status()
      const info = { peerId: s.peerId, addresses: s.addresses ?? [] }
      out(opts, info, () => `${info.peerId}\n${(info.addresses as string[]).map(a => `  ${a}`).join('\n')}${info.addresses.length > 0 ? '\n' : ''}`)
    })

  common(program.command('invite').description('print one line that lets a new machine join: `ntsoekhe daemon --join <invite>` (it carries the network key: treat it as a secret)'))
    .action(async (opts: GlobalOpts) => {
      const r = await (await client(opts)).invite()
      out(opts, r, () => `${r.invite}\n`)
    })

  common(program.command('status').description('node, storage and network health'))
    .action(async (opts: GlobalOpts) => {
      const s = await (await client(opts)).status()
      out(opts, s, () => {
        const { members, ...rest } = s
        return renderObject(rest) + (Array.isArray(members) ? `members:\n${renderTable(members.map(m => ({ peerId: m.peerId, state: m.state })))}` : '')
      })
    })

  common(program.command('tables').description('the schema: tables, columns, keys'))
    .action(async (opts: GlobalOpts) => {
      const t = await (await client(opts)).tables()
      out(opts, t, () => t.tables.map(tb => `${String(tb.name)} (key ${tb.primaryKey.join(':')}, shard ${String(tb.shardKey)})\n` +
        renderTable(tb.columns.map((c: any) => ({ column: c.name, type: c.type + (c.length !== undefined ? `(${String(c.length)})` : c.precision !== undefined ? `(${String(c.precision)},${String(c.scale)})` : ''), null: c.notNull === true ? 'NOT NULL' : '' })))).join('\n'))
    })

  withKey(withConsistency(common(program.command('insert').description('insert a row (JSON argument, or - for stdin)'))))
    .argument('<table>').argument('<json>')
    .action(async (table: string, json: string, opts: GlobalOpts) => {
      const row = await readJsonArg(json, io)
      const r = await (await client(opts)).insert(table, row, { ...consistency(opts), ...idempotencyKey(opts) })
      out(opts, { id: r.id, version: r.version, row: r.row }, () => `inserted ${table} ${r.id} (version ${r.version})\n`)
    })

  withBreakGlass(withConsistency(common(program.command('get').description('read a row by its id (`3:7` for a composite key)'))))
    .argument('<table>').argument('<id>')
    .option('--local', "read only this node's shard")
    .action(async (table: string, id: string, opts: GlobalOpts & { local?: boolean }) => {
      const r = await (await client(opts)).get(table, id, { ...consistency(opts), ...breakGlass(opts), ...(opts.local === true ? { local: true } : {}) })
      out(opts, { row: r.row, version: r.version, conflicts: r.conflicts }, () =>
        renderObject(r.row) + `version: ${r.version}\n` + (r.conflicts.length > 0 ? `CONFLICT with ${r.conflicts.map(c => c.version).join(', ')}\n` : ''))
    })

  withKey(withConsistency(common(program.command('update').description('change some columns of a row (JSON argument, or - for stdin)'))))
    .argument('<table>').argument('<id>').argument('<json>')
    .option('--if-match <version>', 'only if the row is still at this version (repeat to resolve a conflict)', collect, [])
    .action(async (table: string, id: string, json: string, opts: GlobalOpts & { ifMatch: string[] }) => {
      const changes = await readJsonArg(json, io)
      const r = await (await client(opts)).update(table, id, changes, { ...consistency(opts), ...idempotencyKey(opts), ifMatch: opts.ifMatch })
      out(opts, { id: r.id, version: r.version, row: r.row }, () => `updated ${table} ${r.id} (version ${r.version})\n`)
    })

  withKey(withConsistency(common(program.command('delete').description('delete a row (a tombstone: its history is kept)'))))
    .argument('<table>').argument('<id>')
    .option('--cascade', 'also delete the rows that reference it')
    .option('--if-match <version>', 'only if the row is still at this version', collect, [])
    .action(async (table: string, id: string, opts: GlobalOpts & { cascade?: boolean, ifMatch: string[] }) => {
      const r = await (await client(opts)).delete(table, id, { ...consistency(opts), ...idempotencyKey(opts), ifMatch: opts.ifMatch, ...(opts.cascade === true ? { cascade: true } : {}) })
      out(opts, r, () => `deleted ${table} ${r.id} (version ${r.version}${r.cascaded > 0 ? `, ${r.cascaded} referencing rows too` : ''})\n`)
    })

  common(program.command('purge').description('erase a row for good: every version on every node, history, hints and indexes included (admin)'))
    .argument('<table>').argument('<id>')
    .action(async (table: string, id: string, opts: GlobalOpts) => {
      const r = await (await client(opts)).purge(table, id)
      out(opts, r, () => `purged ${r.table} ${r.id} (erased on ${r.replicas} nodes now; nodes that are down erase it when they return)
`)
    })

  withBreakGlass(withConsistency(common(program.command('query').description('list rows in primary-key order (or --order-by), with filters'))))
    .argument('<table>')
    .option('--where <col op value>', 'filter: col=value, or a comparison with <>, <, <=, >, >= (repeatable, all must hold)', collect, [])
    .option('--order-by <col[:desc]>', 'sort by this column, ascending or :desc (default: primary key)')
    .option('--limit <n>', 'rows per page (default 100, at most 1000)', int)
    .option('--cursor <cursor>', 'continue after a previous page')
    .action(async (table: string, opts: GlobalOpts & { where: string[], orderBy?: string, limit?: number, cursor?: string }) => {
      const where: Record<string, string> = {}
      const filters: string[] = []
      for (const w of opts.where) {
        let parsed
        try {
          parsed = parseComparison(w)
        } catch (err) {
          throw new UsageError(`--where takes col=value, or col<op>value with op <>, <, <=, > or >=; got ${JSON.stringify(w)}`, { cause: err })
        }
        if (parsed.op === '=' && where[parsed.column] === undefined) where[parsed.column] = parsed.value
        else filters.push(w)
      }
      if (opts.orderBy !== undefined && !/^[a-z_]+(:(asc|desc))?$/i.test(opts.orderBy)) throw new UsageError(`--order-by takes <col> or <col>:desc, got ${JSON.stringify(opts.orderBy)}`)
      const r = await (await client(opts)).query(table, where, {
        ...consistency(opts),
        ...breakGlass(opts),
        ...(filters.length === 0 ? {} : { filters }),
        ...(opts.orderBy === undefined ? {} : { orderBy: opts.orderBy }),
        ...(opts.limit === undefined ? {} : { limit: opts.limit }),
        ...(opts.cursor === undefined ? {} : { cursor: opts.cursor })
      })
      out(opts, { rows: r.rows, next: r.next }, () => renderTable(r.rows) + (r.next === null ? '' : `more: --cursor ${r.next}\n`))
    })

  withBreakGlass(withConsistency(common(program.command('history').description('every version a row has had, oldest first'))))
    .argument('<table>').argument('<id>')
    .action(async (table: string, id: string, opts: GlobalOpts) => {
      const r = await (await client(opts)).history(table, id, { ...consistency(opts), ...breakGlass(opts) })
      out(opts, r, () => renderTable(r.versions.map(v => ({ version: v.version, parents: v.parents.join(','), deleted: v.deleted ? 'yes' : '', row: v.row }))))
    })

  common(program.command('import').description('bulk-load NDJSON or CSV rows into a table'))
    .argument('<table>').argument('<file>')
    .addOption(new Option('--format <format>', 'input format (default from the file extension)').choices(['ndjson', 'csv']))
    .action(async (table: string, file: string, opts: GlobalOpts & { format?: 'ndjson' | 'csv' }) => {
      const format = opts.format ?? (extname(file).toLowerCase() === '.csv' ? 'csv' : 'ndjson')
      const size = (await stat(file).catch(() => { throw new UsageError(`cannot read ${file}`) })).size
      const progress = await byteProgress(io, size)
      // The client first: a 'data' listener starts the stream flowing, and awaiting after it would lose the file.
      const api = await client(opts)
      const input = createReadStream(file)
      input.on('data', (c: string | Buffer) => { progress.add(c.length) })
      try {
        const r = await api.import(table, input, format)
        progress.stop()
        out(opts, r, () => `imported ${r.accepted} rows into ${table}; rejected ${r.rejected.length + r.rejectedNotShown}\n` +
          r.rejected.map(x => `  line ${x.line}: ${x.error.message}\n`).join('') +
          (r.rejectedNotShown > 0 ? `  … and ${r.rejectedNotShown} more\n` : ''))
        if (r.rejected.length + r.rejectedNotShown > 0 && r.accepted === 0) {
          io.stderr.write(`error: every row of ${file} was rejected${r.rejected[0] === undefined ? '' : ` (line ${r.rejected[0].line}: ${r.rejected[0].error.message})`}\n`)
          setCode(EXIT.REFUSED)
        }
      } finally {
        progress.stop()
      }
    })

  withConsistency(common(program.command('export').description('write rows as NDJSON, one {"table","row"} object a line (plain: admins; --anonymize: any role, what it may read)')))
    .option('--table <table>', 'export this table (repeatable; default every table)', collect, [])
    .option('--anonymize', 'drop direct identifiers, pseudonymise ids, cut dates of birth to the year')
    .option('--out <file>', 'write to this new file (mode 0600; never over an existing one) instead of stdout')
    .action(async (opts: GlobalOpts & ExportFlags) => {
      const { runExport } = await import('./export.js')
      await runExport(await client(opts), opts, io)
    })

  common(program.command('seed').description('load demo data made with Faker, through the API'))
    .option('--scale <n>', 'units of 20 doctors, patients, medications, appointments, history rows, bills, pairs and lab results', int, 1)
    .action(async (opts: GlobalOpts & { scale: number }) => {
      const { seed } = await import('./seed.js')
      const counts = await seed(await client(opts), opts.scale, io)
      out(opts, counts, () => renderObject(counts))
    })

  program.command('swarm-key').description('write a new private-network key: only nodes given the same file can join (network.pnetKeyFile)')
    .argument('<file>')
    .exitOverride()
    .action(async (file: string) => {
      const { generatePnetKey } = await import('../p2p/node.js')
      const { writeFile } = await import('node:fs/promises')
      try {
        await writeFile(file, generatePnetKey(), { mode: 0o600, flag: 'wx' })
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new UsageError(`${file} exists; a key is never overwritten`)
        throw err
      }
      io.stdout.write(`wrote ${file}; copy it to every node's home and set network.pnetKeyFile\n`)
    })

  common(program.command('peers').description('members of the network, their state and addresses'))
    .action(async (opts: GlobalOpts) => {
      const r = await (await client(opts)).peers()
      out(opts, r, () => renderTable((r.members as any[]).map(m => ({ peerId: m.peerId, state: m.state, lastSeen: m.lastSeen === undefined ? '' : new Date(m.lastSeen).toISOString(), addresses: (m.addresses ?? []).join(' ') }))))
    })

  common(program.command('remove').argument('<peerId>').description('declare a down member gone for good: its ring share and records pass to the others'))
    .action(async (peerId: string, opts: GlobalOpts) => {
      const r = await (await client(opts)).removeMember(peerId)
      out(opts, r, () => `${String(r.peerId)} removed; its records are being copied to their new owners (see status: replication.rebalance)\n`)
    })

  common(program.command('leave').description("hand this node's records to the other members, leave the network and stop the daemon"))
    .action(async (opts: GlobalOpts) => {
      io.stderr.write('handing off every record this node holds (this can take a while)...\n')
      const r = await (await client(opts)).leave()
      out(opts, r, () => `${String(r.peerId)} left the network: ${String(r.handedOff)} records handed off; the daemon is stopping\n`)
    })

  withBreakGlass(withConsistency(common(program.command('sql').description('run one SQL statement of the subset (see README: Queries and SQL); $1, $2... take --param values in order'))))
    .argument('<statement>')
    .option('--param <value>', 'a value for $1, $2, ... in order (repeatable; typed by the column it meets)', collect, [])
    .option('--cursor <cursor>', 'continue after a previous page')
    .action(async (statement: string, opts: GlobalOpts & { param: string[], cursor?: string }) => {
      // Sent as text: the daemon types each by the column it is compared with or written to.
      const params = opts.param
      const r = await (await client(opts)).sql(statement, params, { ...consistency(opts), ...breakGlass(opts), ...(opts.cursor === undefined ? {} : { cursor: opts.cursor }) })
      out(opts, r, () => renderTable(r.rows.map(row => Object.fromEntries(r.columns.map((c, i) => [c, row[i]])))) + (r.next === null ? '' : `more: --cursor ${r.next}\n`))
    })

  common(program.command('reindex').argument('<table>').description("rebuild a table's index entries (equality and ordered) in this node's store, with a progress bar (admin)"))
    .action(async (table: string, opts: GlobalOpts) => {
      const api = await client(opts)
      let bar: { update: (n: number, total: number) => void, stop: () => void } = { update: () => {}, stop: () => {} }
      if (io.stderr.isTTY === true && opts.json !== true) {
        const { SingleBar, Presets } = await import('cli-progress')
        const b = new SingleBar({ format: `reindexing ${table} [{bar}] {value}/{total} rows`, stream: io.stderr as NodeJS.WritableStream }, Presets.shades_classic)
        let started = false
        bar = {
          update: (n, total) => { if (!started) { b.start(total, 0); started = true } b.setTotal(total); b.update(n) },
          stop: () => { if (started) b.stop() }
        }
      }
      try {
        const r = await api.reindex(table, (done, total) => { bar.update(done, total) })
        bar.stop()
        out(opts, r, () => `${table}: ${r.rows} rows reindexed, ${r.added} entries added, ${r.removed} stale entries removed\n`)
      } catch (err) {
        bar.stop()
        throw err
      }
    })

  common(program.command('repair').description("run one anti-entropy round now: compare this node's token ranges with their co-owners and send the records that differ"))
    .action(async (opts: GlobalOpts) => {
      const api = await client(opts)
      const progress = await repairProgress(io, api)
      try {
        const r = await api.repair()
        progress.stop()
        const result = { ranges: r.ranges, recordsCompared: r.recordsCompared, recordsSent: r.recordsSent, seconds: r.seconds }
        out(opts, result, () => `compared ${result.ranges} ranges and ${result.recordsCompared} records in them; sent ${result.recordsSent} records (${result.seconds} s)\n`)
      } finally {
        progress.stop()
      }
    })

  common(program.command('audit').description('who read or changed what, where and when; --verify checks every chain'))
    .option('--patient <id>', 'entries about this patient')
    .option('--user <name>', 'entries of this user')
    .option('--since <time>', 'entries at or after this ISO 8601 time')
    .option('--verify', "walk every node's hash chain and name the first broken link")
    .action(async (opts: GlobalOpts & { patient?: string, user?: string, since?: string, verify?: boolean }) => {
      const api = await client(opts)
      if (opts.verify === true) {
        const r = await api.verifyAudit()
        io.stdout.write(opts.json === true
          ? JSON.stringify({ ok: r.ok, checked: r.checked, broken: r.broken }) + '\n'
          : r.ok ? `audit trail intact: ${r.checked} entries of ${r.nodes} nodes checked\n` : '')
        if (!r.ok) {
          const b = r.broken
          io.stderr.write(`error: audit trail broken at node ${b?.node ?? '?'} seq ${b?.seq ?? '?'}: ${b?.message ?? 'unknown'} (${b?.problem ?? '?'})\n`)
          setCode(EXIT.REFUSED)
        }
        return
      }
      const r = await api.audit({
        ...(opts.patient === undefined ? {} : { patient: opts.patient }),
        ...(opts.user === undefined ? {} : { user: opts.user }),
        ...(opts.since === undefined ? {} : { since: opts.since })
      })
      out(opts, { entries: r.entries }, () => renderTable(r.entries.map(e => ({
        time: e.time, node: String(e.node).slice(-8), seq: e.seq, user: e.user ?? '', role: e.role ?? '', action: e.action, table: e.table ?? '', key: e.key ?? '', patient: e.patient_id ?? '', outcome: `${String(e.outcome)} ${String(e.status)}`, reason: e.reason ?? ''
      }))))
      if (r.truncated) io.stderr.write(`warning: only the first ${r.entries.length} matching entries are shown: narrow with --patient, --user or --since\n`)
    })

  common(program.command('ring').description("each member's share of the token space and local row counts"))
    .action(async (opts: GlobalOpts) => {
      const r = await (await client(opts)).ring()
      out(opts, r, () => renderTable((r.members as any[]).map(m => ({ peerId: m.peerId, state: m.state, share: `${(m.share * 100).toFixed(1)}%` }))) +
        `local rows:\n${renderObject(r.localRows ?? {}, '  ')}`)
    })

  const user = program.command('user').description('users and their tokens (admin)').exitOverride()
    .configureOutput({ writeOut: s => io.stdout.write(s), writeErr: s => io.stderr.write(s) })
  common(user.command('add').description("make a user; prints its token, shown only this once"))
    .argument('<name>')
    .requiredOption('--role <role>', 'admin, doctor, nurse, billing or auditor')
    .action(async (name: string, opts: GlobalOpts & { role: string }) => {
      const r = await (await client(opts)).addUser(name, opts.role)
      out(opts, { user: r.user, role: r.role, token: r.token }, () => `created user ${r.user} (role ${r.role}); its token, shown only this once:\n${r.token}\n`)
    })
  common(user.command('list').description('users, their roles, and whether their token was revoked'))
    .action(async (opts: GlobalOpts) => {
      const r = await (await client(opts)).users()
      out(opts, r, () => renderTable(r.users.map(u => ({ user: u.user, role: u.role, revoked: u.revokedAt ?? '' }))))
    })
  common(user.command('revoke').description("revoke a user's token, on every node within seconds"))
    .argument('<name>')
    .action(async (name: string, opts: GlobalOpts) => {
      const r = await (await client(opts)).revokeUser(name)
      out(opts, r, () => `revoked the token of ${r.user}\n`)
    })

  common(program.command('roles').description('each role\'s rights, by table and column'))
    .action(async (opts: GlobalOpts) => {
      const r = await (await client(opts)).roles()
      out(opts, r, () => r.roles.map(role => `${role.role}${role.rights.length > 0 ? ` (rights: ${role.rights.join(', ')})` : ''}${role.breakGlass ? ' (may break the glass)' : ''}\n` +
        Object.entries(role.tables).map(([t, c]) => `  ${t}: read ${c.read.length === 0 ? '-' : c.read.join(',')}; write ${c.write.length === 0 ? '-' : c.write.join(',')}\n`).join('')).join(''))
    })

  return program
}

function breakGlass (opts: GlobalOpts): { breakGlass?: string } {
  if (opts.breakGlass === undefined) return {}
  if (opts.breakGlass.trim() === '') throw new UsageError('--break-glass needs a reason')
  return { breakGlass: opts.breakGlass }
}

function nonEmpty (s: string | undefined): string | undefined {
  return s === undefined || s.trim() === '' ? undefined : s.trim()
}

function idempotencyKey (opts: GlobalOpts): { idempotencyKey?: string } {
  if (opts.idempotencyKey === undefined) return {}
  if (opts.idempotencyKey.trim() === '') throw new UsageError('--idempotency-key needs a key')
  return { idempotencyKey: opts.idempotencyKey }
}

function consistency (opts: GlobalOpts): { consistency?: 'one' | 'quorum' | 'all' } {
  return opts.consistency === undefined ? {} : { consistency: opts.consistency }
}

function collect (value: string, previous: string[]): string[] {
  return [...previous, value]
}

function int (value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new UsageError(`expected a positive integer, got ${JSON.stringify(value)}`)
  return Number(value)
}

async function readJsonArg (arg: string, io: Io): Promise<unknown> {
  let text = arg
  if (arg === '-') {
    const chunks: Buffer[] = []
    for await (const c of io.stdin) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c))
    text = Buffer.concat(chunks).toString('utf8')
  }
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new UsageError(`the row must be JSON: ${(err as Error).message}`)
  }
}

/** The home's config if the home exists; a client must not create a home */
async function loadConfigIfPresent (home: string): Promise<{ config?: Awaited<ReturnType<typeof loadConfig>>['config'] }> {
  try {
    await readFile(`${home}/config.json`)
  } catch {
    return {}
  }
  return await loadConfig(home)
}

/** A bar on stderr (a terminal only) following the round's progress, as `status` reports it, while `repair` waits */
async function repairProgress (io: Io, api: NtsoekheClient): Promise<{ stop: () => void }> {
  if (io.stderr.isTTY !== true) return { stop: () => {} }
  const { SingleBar, Presets } = await import('cli-progress')
  const bar = new SingleBar({ format: 'repairing [{bar}] {percentage}% | {value}/{total} ranges', stream: io.stderr as NodeJS.WritableStream }, Presets.shades_classic)
  let started = false
  let stopped = false
  const poll = setInterval(() => {
    void api.status().then(s => {
      const p = s.replication?.antiEntropy?.progress as { done?: unknown, total?: unknown } | undefined
      if (stopped || typeof p?.done !== 'number' || typeof p.total !== 'number') return
      if (!started) { started = true; bar.start(p.total, p.done) } else bar.update(p.done)
    }, () => {})
  }, 250)
  return {
    stop: () => {
      if (stopped) return
      stopped = true
      clearInterval(poll)
      if (started) bar.stop()
    }
  }
}

async function byteProgress (io: Io, total: number): Promise<{ add: (n: number) => void, stop: () => void }> {
  if (io.stderr.isTTY !== true) return { add: () => {}, stop: () => {} }
  const { SingleBar, Presets } = await import('cli-progress')
  const bar = new SingleBar({ format: 'importing [{bar}] {percentage}% | {value}/{total} bytes', stream: io.stderr as NodeJS.WritableStream }, Presets.shades_classic)
  bar.start(total, 0)
  let done = 0
  let stopped = false
  return {
    add: n => { done += n; bar.update(Math.min(done, total)) },
    stop: () => { if (!stopped) { stopped = true; bar.stop() } }
  }
}
