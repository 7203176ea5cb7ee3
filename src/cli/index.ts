import { constants, createReadStream } from 'node:fs'
import { access, readFile, stat } from 'node:fs/promises'
import { extname } from 'node:path'
import type { Readable } from 'node:stream'
import { Command, CommanderError, Option, type HelpContext } from 'commander'
import { concat, fromString, toString } from 'uint8arrays'
import { NoDaemonError, NtsoekheClient } from '../client/index.js'
import { NtsoekheError } from '../errors/index.js'
import { LOG_LEVELS, loadConfig, resolveHome, socketPath } from '../daemon/config.js'
import { MAX_LIMIT } from '../query/limits.js'
import { readAdminToken } from '../security/tokens.js'
import { DEFAULT_ROLES } from '../security/rights.js'
import { parseHostPort } from '../observability/address.js'
import { renderObject, renderTable, reportValue } from './format.js'
import { UsageError } from './usage.js'
import { VERSION } from '../version.js'
import { parseComparison } from '../schema/condition.js'
import { parseMoment } from '../schema/validate.js'
// daemon.js (libp2p, the store) and seed.js (faker) are loaded by the commands that need them:
// a client command then starts in a fraction of the time.
import type { DaemonFlags } from './daemon.js'
import type { ExportFlags } from './export.js'
import type { BackupFlags, RestoreFlags } from './backup.js'

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
  const asked: Asked = {}
  const program = buildProgram(io, c => { code = c }, asked)
  try {
    await program.parseAsync(hoistGlobals(argv), { from: 'user' })
    return code
  } catch (err) {
    return report(err, io, asked)
  }
}

/** The options every command takes, with whether each takes a value */
const GLOBALS = new Map([['--home', true], ['--token', true], ['--json', false]])

/**
 * `ntsoekhe --home x status` as `ntsoekhe status --home x`: the options every command takes
 * may come before the command too, as with git and docker. Those given before the first word
 * that is not one of them move to the end (before a `--`), where the command reads them.
 */
export function hoistGlobals (argv: string[]): string[] {
  const moved: string[] = []
  let i = 0
  while (i < argv.length) {
    const [flag, inline] = argv[i]!.split(/=(.*)/s) as [string, string | undefined]
    const takesValue = GLOBALS.get(flag)
    if (takesValue === undefined) break
    if (!takesValue || inline !== undefined) {
      moved.push(argv[i]!)
      i += 1
    } else if (i + 1 < argv.length) {
      moved.push(argv[i]!, argv[i + 1]!)
      i += 2
    } else break // `--home` with nothing after it: commander says what is missing
  }
  if (moved.length === 0) return argv
  const rest = argv.slice(i)
  const end = rest.indexOf('--')
  return end === -1 ? [...rest, ...moved] : [...rest.slice(0, end), ...moved, ...rest.slice(end)]
}

/** What the command was asked for, as far as an error report needs it */
interface Asked {
  /** `--home` as given (undefined: the default home) */
  home?: string
}

/** Codes of a refusal that is the caller's mistake in naming things (exit 2, as a usage error) */
const USAGE_CODES = new Set(['UNKNOWN_TABLE'])

function report (err: unknown, io: Io, asked: Asked): number {
  if (err instanceof CommanderError) {
    return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE
  }
  if (err instanceof UsageError) {
    io.stderr.write(`error: ${oneLine(err.message)}\n`)
    return EXIT.USAGE
  }
  if (err instanceof NoDaemonError) {
    const start = asked.home === undefined ? 'ntsoekhe daemon' : `ntsoekhe daemon --home ${shellWord(asked.home)}`
    io.stderr.write(`error: no daemon is listening on ${err.socket}; start one with \`${start}\`\n`)
    return EXIT.NO_DAEMON
  }
  if (err instanceof NtsoekheError) {
    // Most messages already start with the column ("gender: ..."): name it only when they do not.
    const column = err.column === undefined || new RegExp(`\\b${err.column}\\b`).test(err.message) ? '' : ` (column ${err.column})`
    io.stderr.write(`error: ${oneLine(err.message)}${column} [${err.code}]\n`)
    return USAGE_CODES.has(err.code) ? EXIT.USAGE : EXIT.REFUSED
  }
  io.stderr.write(`error: ${(err as Error)?.message ?? String(err)}\n`)
  return EXIT.REFUSED
}

function buildProgram (io: Io, setCode: (c: number) => void, asked: Asked): Command {
  // A usage error is one line on stderr (commander's own message); `--help` shows the usage.
  const program = new Command('ntsoekhe')
    .description('A peer-to-peer database for health records')
    .version(VERSION, '-V, --version', 'print the version (package.json) and exit')
    .exitOverride()
    .configureOutput({ writeOut: s => io.stdout.write(s), writeErr: s => io.stderr.write(s) })
  needsCommand(program, '`ntsoekhe --help` lists the commands')

  const client = async (opts: GlobalOpts): Promise<NtsoekheClient> => {
    if (opts.home !== undefined) asked.home = opts.home
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

  // `ntsoekhe version`, as `--version`, for those who type it as a command (npm, docker and go take both).
  // It takes the common options too, unused, so an alias that gives --home works with it.
  common(program.command('version').description('print the version (package.json)'))
    .action((opts: GlobalOpts) => { out(opts, { version: VERSION }, () => `${VERSION}\n`) })

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
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS))
    .option('--join <invite>', 'join the network of the member that printed this invite (ntsoekhe invite): stores its network key in the home')
    .option('--swarm-key <file>', 'network key file to use (network.pnetKeyFile); with --bootstrap, the manual way to join')
    .option('--open-network', 'run without a network key: any machine that reaches the port can join (network.open)')
    .option('--console <host:port>', 'serve the read-only web console on this address, e.g. 127.0.0.1:4180 (monitoring.console; loopback only unless --console-remote)', hostPort('--console'))
    .option('--console-remote', 'allow --console on a non-loopback address: plain HTTP, tokens and rows cross the network in clear (monitoring.consoleRemote)')
    .option('--metrics-listen <host:port>', 'also serve GET /metrics (Prometheus, no token) on this address (monitoring.metricsListen)', hostPort('--metrics-listen'))
    .addOption(new Option('--security-off', 'no authentication, access rules, encryption at rest or audit trail: for benchmarks, accepted only with --test').hideHelp())
    .addOption(new Option('--test', 'this daemon is a test or benchmark subject').hideHelp())
    .addOption(new Option('--clock-offset-ms <ms>', "run this node's clock this many ms ahead of the machine's (negative: behind): for the chaos suite, accepted only with --test").argParser(signedInt).hideHelp())
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
        return renderObject(rest, '', reportValue) + (Array.isArray(members) ? `members:\n${renderTable(members.map(m => ({ peerId: m.peerId, state: m.state })))}` : '')
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
      const row = rowObject(await readJsonArg(json, io))
      const r = await (await client(opts)).insert(table, row, { ...consistency(opts), ...idempotencyKey(opts) })
      out(opts, { id: jsonId(r.id), version: r.version, row: r.row }, () => `inserted ${table} ${r.id} (version ${r.version})\n`)
    })

  withKey(withConsistency(common(program.command('batch').description('several writes sharing one shard key (one patient), all or nothing: {"operations":[...]} or the array alone (JSON argument, or - for stdin)'))))
    .argument('<json>')
    .action(async (json: string, opts: GlobalOpts) => {
      const operations = batchOperations(await readJsonArg(json, io, 'the batch'))
      const r = await (await client(opts)).batch(operations, { ...consistency(opts), ...idempotencyKey(opts) })
      out(opts, { results: r.results.map(x => ({ ...x, id: jsonId(x.id) })) }, () => r.results.map(x => `${String((x as { table?: unknown }).table ?? '')} ${x.id} (version ${x.version})\n`).join(''))
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
      const changes = rowObject(await readJsonArg(json, io))
      const r = await (await client(opts)).update(table, id, changes, { ...consistency(opts), ...idempotencyKey(opts), ifMatch: opts.ifMatch })
      out(opts, { id: jsonId(r.id), version: r.version, row: r.row }, () => `updated ${table} ${r.id} (version ${r.version})\n`)
    })

  withKey(withConsistency(common(program.command('delete').description('delete a row (a tombstone: its history is kept)'))))
    .argument('<table>').argument('<id>')
    .option('--cascade', 'also delete the rows that reference it')
    .option('--if-match <version>', 'only if the row is still at this version', collect, [])
    .action(async (table: string, id: string, opts: GlobalOpts & { cascade?: boolean, ifMatch: string[] }) => {
      const r = await (await client(opts)).delete(table, id, { ...consistency(opts), ...idempotencyKey(opts), ifMatch: opts.ifMatch, ...(opts.cascade === true ? { cascade: true } : {}) })
      out(opts, { ...r, id: jsonId(r.id) }, () => `deleted ${table} ${r.id} (version ${r.version}${r.cascaded > 0 ? `, ${r.cascaded} referencing rows too` : ''})\n`)
    })

  common(program.command('purge').description('erase a row for good: every version on every node, history, hints and indexes included (admin)'))
    .argument('<table>').argument('<id>')
    .action(async (table: string, id: string, opts: GlobalOpts) => {
      const r = await (await client(opts)).purge(table, id)
      out(opts, { ...r, id: jsonId(r.id) }, () => `purged ${r.table} ${r.id} (erased on ${r.replicas} nodes now; nodes that are down erase it when they return)
`)
    })

  withBreakGlass(withConsistency(common(program.command('query').description('list rows in primary-key order (or --order-by), with filters'))))
    .argument('<table>')
    .option('--where <col op value>', 'filter: col=value, or a comparison with <>, <, <=, >, >= (repeatable, all must hold)', collect, [])
    .option('--order-by <col[:desc]>', 'sort by this column, ascending or :desc (default: primary key)')
    .option('--limit <n>', 'rows per page (default 100, at most 1000)', limit)
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
      const named = [...opts.where.map(w => parseComparison(w).column), ...(opts.orderBy === undefined ? [] : [opts.orderBy.split(':')[0] as string])]
      const r = await (await client(opts)).query(table, where, {
        ...consistency(opts),
        ...breakGlass(opts),
        ...(filters.length === 0 ? {} : { filters }),
        ...(opts.orderBy === undefined ? {} : { orderBy: opts.orderBy }),
        ...(opts.limit === undefined ? {} : { limit: opts.limit }),
        ...(opts.cursor === undefined ? {} : { cursor: opts.cursor })
      }).catch((err: unknown) => { throw badFlagValue(err, named, opts.cursor !== undefined) })
      out(opts, { rows: r.rows, next: r.next }, () => renderTable(r.rows) + (r.next === null ? '' : `more: --cursor ${r.next}\n`))
    })

  withBreakGlass(withConsistency(common(program.command('history').description('every version a row has had, oldest first'))))
    .argument('<table>').argument('<id>')
    .action(async (table: string, id: string, opts: GlobalOpts) => {
      const r = await (await client(opts)).history(table, id, { ...consistency(opts), ...breakGlass(opts) })
      out(opts, r, () => renderTable(r.versions.map(v => ({ version: v.version, parents: v.parents.join(','), deleted: v.deleted ? 'yes' : '', row: v.row }))))
    })

  common(program.command('import').description('bulk-load NDJSON or CSV rows into a table (- reads stdin); the same file imported again writes nothing new'))
    .argument('<table>').argument('<file>', 'a file, or - for stdin')
    .addOption(new Option('--format <format>', 'input format (default from the file extension; ndjson for stdin)').choices(['ndjson', 'csv']))
    .option('--idempotency-key <key>', 'scope of the lines\' keys: the same lines imported with another key are written anew (default: one scope for every import)')
    .action(async (table: string, file: string, opts: GlobalOpts & { format?: 'ndjson' | 'csv' }) => {
      const stdin = file === '-'
      const format = opts.format ?? (!stdin && extname(file).toLowerCase() === '.csv' ? 'csv' : 'ndjson')
      const size = stdin ? 0 : await readableSize(file)
      const progress = await byteProgress(io, size)
      // The client first: a 'data' listener starts the stream flowing, and awaiting after it would lose the file.
      const api = await client(opts)
      const input = stdin ? io.stdin as Readable : createReadStream(file)
      input.on('data', (c: string | Buffer) => { progress.add(c.length) })
      try {
        const r = await api.import(table, input, format, idempotencyKey(opts))
        progress.stop()
        const rejected = r.rejected.length + r.rejectedNotShown
        out(opts, r, () => `imported ${r.accepted} rows into ${table}; rejected ${rejected}\n` +
          r.rejected.map(x => `  line ${x.line}: ${x.error.message}\n`).join('') +
          (r.rejectedNotShown > 0 ? `  … and ${r.rejectedNotShown} more\n` : ''))
        if (rejected > 0) {
          // The good lines are in; the run still failed for the lines that are not (exit 1).
          io.stderr.write(`error: ${rejected} line${rejected === 1 ? '' : 's'} of ${stdin ? 'stdin' : file} rejected${r.rejected[0] === undefined ? '' : ` (first: line ${r.rejected[0].line}: ${r.rejected[0].error.message})`}; ${r.accepted} imported\n`)
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

  // Backup and restore (src/cli/backup.ts, README "Backup and restore").
  common(program.command('backup').description('write a backup of the whole network: every record once with its history, as compressed chunks and manifest.json (admin); --verify checks one'))
    .argument('<dir>', 'a new or empty directory (with --verify: the backup to check)')
    .option('--key <file>', 'encrypt the chunks (AES-256-GCM) with a key derived from this file (at least 32 bytes); restore needs the same file')
    .option('--verify', 'check the backup in <dir> (manifest, every chunk and record) without restoring it')
    .action(async (dir: string, opts: GlobalOpts & BackupFlags) => {
      const { brokenReport, runBackup, runVerify } = await import('./backup.js')
      if (opts.verify === true) {
        const r = await runVerify(dir, opts, io).catch((err: unknown) => {
          // As audit --verify does: a script reading --json learns what is broken, and the exit code says it (1).
          const broken = opts.json === true ? brokenReport(dir, err) : undefined
          if (broken !== undefined) io.stdout.write(JSON.stringify(broken) + '\n')
          throw err
        })
        out(opts, { ok: true, ...r }, () => `backup intact: ${r.records} records (${r.rows} rows, ${r.versions} versions) of ${Object.keys(r.tables).length} tables in ${r.chunks} chunks, ${r.encrypted ? 'encrypted' : 'in the clear'}; versions from ${r.span.from ?? '-'} to ${r.span.to ?? '-'}\n`)
        return
      }
      const r = await runBackup(await client(opts), dir, opts, io)
      out(opts, r, () => `backed up ${r.rows} rows (${r.records} records, ${r.versions} versions) of ${Object.keys(r.tables).length} tables into ${r.dir}: ${r.bytes} bytes in ${r.chunks} chunks, ${r.encrypted ? 'encrypted' : 'in the clear'} (${r.seconds} s)\n`)
    })

  common(program.command('restore').description('load a backup into the network: every record on all of its owners, history kept; restoring it again changes nothing (admin)'))
    .argument('<dir>', 'the backup directory')
    .option('--as-of <time>', 'restore the state at this time (ISO 8601 with its zone, e.g. 2026-12-02T10:00:00Z): each record as its versions up to then made it')
    .option('--key <file>', 'the key file the backup was encrypted with')
    .action(async (dir: string, opts: GlobalOpts & RestoreFlags) => {
      const { runRestore } = await import('./backup.js')
      const r = await runRestore(await client(opts), dir, opts, io)
      out(opts, r, () => `restored ${r.records} records (${r.rows} rows, ${r.versions} versions)${r.asOf === null ? '' : ` as of ${r.asOf}`} from ${r.dir}; ${r.changed} changed the network (${r.seconds} s)\n`)
    })
  // End of backup and restore.

  common(program.command('seed').description('load demo data made with Faker, through the API'))
    .option('--scale <n>', 'units of 20 doctors, patients, medications, appointments, history rows, bills, pairs and lab results', int, 1)
    .action(async (opts: GlobalOpts & { scale: number }) => {
      const { seed } = await import('./seed.js')
      const counts = await seed(await client(opts), opts.scale, io)
      out(opts, counts, () => renderObject(counts))
    })

  withConsistency(common(program.command('head').description('the first rows of every table, ordered by primary key')))
    .option('--limit <n>', `rows per table (default 5, at most ${MAX_LIMIT})`, limit)
    .action(async (opts: GlobalOpts & { limit?: number }) => {
      const { head, HEAD_ROWS } = await import('./head.js')
      const tables = await head(await client(opts), opts.limit ?? HEAD_ROWS, consistency(opts))
      out(opts, { tables }, () => tables.map(t => t.error !== undefined
        ? `${t.table}: not shown (${t.error.message})\n`
        : `${t.table} (${t.rows.length} of ${t.total} rows, by ${t.primaryKey.join(', ')})\n${renderTable(t.rows)}`).join('\n'))
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

  common(program.command('remove').argument('<peerId>', 'the member\'s peer id, or any unique prefix of it').description('declare a down member gone for good: its ring share and records pass to the others'))
    .action(async (peerId: string, opts: GlobalOpts) => {
      const api = await client(opts)
      const r = await api.removeMember(await resolvePeerId(api, peerId))
      out(opts, r, () => `${String(r.peerId)} removed; its records are being copied to their new owners (see status: replication.rebalance)\n`)
    })

  common(program.command('leave').description("hand this node's records to the other members, leave the network and stop the daemon"))
    .action(async (opts: GlobalOpts) => {
      const api = await client(opts)
      const self = String((await api.status()).peerId)
      // The daemon refuses a leave it cannot complete (nobody to hand off to, a member down) before it starts:
      // what it is doing is said once this node shows as left, never for a refused leave.
      let said = false
      const say = (): void => {
        if (said) return
        said = true
        io.stderr.write('handing off every record this node holds (this can take a while)...\n')
      }
      const poll = setInterval(() => {
        void api.peers().then(p => {
          if ((p.members as Array<{ peerId: string, state: string }>).find(m => m.peerId === self)?.state === 'left') say()
        }, () => {})
      }, 250)
      try {
        const r = await api.leave()
        // A hand-off quicker than the poll is still said, before what it did.
        say()
        out(opts, r, () => `${String(r.peerId)} left the network: ${String(r.handedOff)} records handed off; the daemon is stopping\n`)
      } finally {
        said = true
        clearInterval(poll)
      }
    })

  withBreakGlass(withConsistency(common(program.command('sql').description('run one SQL statement of the subset (see README: Queries and SQL); $1, $2... take --param values in order'))))
    .argument('<statement>')
    .option('--param <value>', 'a value for $1, $2, ... in order (repeatable; typed by the column it meets)', collect, [])
    .option('--cursor <cursor>', 'continue after a previous page')
    .action(async (statement: string, opts: GlobalOpts & { param: string[], cursor?: string }) => {
      // Sent as text: the daemon types each by the column it is compared with or written to.
      const params = opts.param
      const r = writeAnswerIds(statement, await (await client(opts)).sql(statement, params, { ...consistency(opts), ...breakGlass(opts), ...(opts.cursor === undefined ? {} : { cursor: opts.cursor }) }))
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
    .option('--since <time>', 'entries at or after this time: a date (its midnight UTC) or an ISO 8601 time with its zone')
    .option('--verify', "walk every node's hash chain and name the first broken link")
    .action(async (opts: GlobalOpts & { patient?: string, user?: string, since?: string, verify?: boolean }) => {
      if (opts.patient !== undefined && !/^\d+$/.test(opts.patient)) throw new UsageError(`--patient takes a patient id (an integer), got ${JSON.stringify(opts.patient)}`)
      if (opts.since !== undefined) {
        try {
          parseMoment(opts.since, '--since')
        } catch (err) {
          throw new UsageError((err as Error).message, { cause: err })
        }
      }
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
      // Entries as stored and hashed (patient_id and key are text there): an auditor can recompute each hash from them.
      out(opts, { entries: r.entries }, () => renderTable(r.entries.map(e => ({
        time: e.time, node: e.node, seq: e.seq, user: e.user ?? '', role: e.role ?? '', action: e.action, table: e.table ?? '', key: e.key ?? '', patient: e.patient_id ?? '', outcome: `${String(e.outcome)} ${String(e.status)}`, reason: e.reason ?? ''
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
  needsCommand(user, 'add, list or revoke (`ntsoekhe user --help`)')
  common(user.command('add').description("make a user; prints its token, shown only this once"))
    .argument('<name>')
    .addOption(new Option('--role <role>', 'the role: its rights are in `ntsoekhe roles`').choices(DEFAULT_ROLES.map(r => r.name)).makeOptionMandatory())
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

/**
 * A member's whole peer id from any unique prefix of it, as git takes a
 * commit's: an exact id is taken as it is, an ambiguous prefix is a usage
 * error naming the candidates, and a prefix of no member is passed on for
 * the daemon to refuse.
 */
export async function resolvePeerId (api: Pick<NtsoekheClient, 'peers'>, given: string): Promise<string> {
  if (given.trim() === '') throw new UsageError('a peer id (or a unique prefix of one) is needed')
  const { members } = await api.peers() as { members?: Array<{ peerId?: unknown }> }
  const ids = (members ?? []).map(m => String(m.peerId))
  if (ids.includes(given)) return given
  const matches = ids.filter(id => id.startsWith(given))
  if (matches.length > 1) throw new UsageError(`peer id prefix ${given} is ambiguous: it matches ${matches.join(', ')}`)
  return matches[0] ?? given
}

/**
 * A command of commands (`ntsoekhe`, `ntsoekhe user`) called without one is a
 * usage error of one line, as every other is; commander would print the
 * whole help on stderr instead. `--help` still prints it.
 */
function needsCommand (cmd: Command, hint: string): void {
  const help = cmd.help.bind(cmd) as (context?: HelpContext) => never
  cmd.help = ((context?: HelpContext) => {
    if (context?.error === true) {
      const name = cmd.parent === null ? cmd.name() : `${cmd.parent.name()} ${cmd.name()}`
      throw new UsageError(`${name} needs a command: ${hint}`)
    }
    help(context)
  }) as Command['help']
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

/** A commander parser for a `host:port` flag: a malformed one is a usage error (exit 2) */
function hostPort (flag: string): (value: string) => string {
  return value => {
    try {
      parseHostPort(value, flag)
    } catch (err) {
      throw new UsageError((err as Error).message)
    }
    return value
  }
}

function int (value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new UsageError(`expected a positive integer, got ${JSON.stringify(value)}`)
  return Number(value)
}

/** `--limit`: what one page may hold (the daemon's MAX_LIMIT) */
function limit (value: string): number {
  const n = int(value)
  if (n > MAX_LIMIT) throw new UsageError(`--limit takes 1 to ${MAX_LIMIT} (a page holds at most ${MAX_LIMIT} rows; --cursor pages on), got ${value}`)
  return n
}

/**
 * A row id as `--json` prints it: a number for a one-column key (every key
 * column is an INT), as the row itself holds it; `3:7` (a composite key)
 * stays text.
 */
function jsonId (id: string): number | string {
  return /^-?\d+$/.test(id) && Number.isSafeInteger(Number(id)) ? Number(id) : id
}

/**
 * The daemon's refusal of a query as what it is, a bad flag value (exit 2),
 * when it is about a column a `--where` or `--order-by` named (no such
 * column, or a value the column cannot hold) or about the `--cursor` given;
 * anything else (a column the role may not read is 403) stays a refusal.
 */
function badFlagValue (err: unknown, columns: string[], cursorGiven: boolean): unknown {
  if (!(err instanceof NtsoekheError) || err.code !== 'INVALID') return err
  const aboutFlag = (err.column !== undefined && columns.includes(err.column)) || (cursorGiven && /\bcursor\b/i.test(err.message))
  return aboutFlag ? new UsageError(err.message, { cause: err }) : err
}

/**
 * A SQL write's answer (`id`, `version`[, `deleted`]) with its id as `--json`
 * prints every other write's: a number for a one-column key. A SELECT's
 * values are the columns' own, typed already.
 */
function writeAnswerIds<T extends { columns: string[], rows: unknown[][] }> (statement: string, r: T): T {
  const write = /^\s*(set\b[^;]*;\s*)*(insert|update|delete)\b/i.test(statement)
  if (!write || r.columns[0] !== 'id' || r.columns[1] !== 'version') return r
  return { ...r, rows: r.rows.map(([id, ...rest]) => [typeof id === 'string' ? jsonId(id) : id, ...rest]) }
}

/** The message on one line: a usage error is one line on stderr */
function oneLine (message: string): string {
  return message.replace(/\s*\n\s*/g, ' ')
}

/** A path as a shell reads it back: quoted only when it needs to be */
function shellWord (s: string): string {
  return /^[\w@%+=:,./~-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`
}

/** A row argument (insert, update): a JSON object of columns, or the call is wrong (exit 2) */
function rowObject (value: unknown): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new UsageError(`the row must be a JSON object of columns ({"column": value, ...}), got ${Array.isArray(value) ? 'an array' : JSON.stringify(value)}`)
  }
  return value as Record<string, unknown>
}

/** `{"operations": [...]}` or the operations array alone */
function batchOperations (body: unknown): unknown[] {
  const ops = Array.isArray(body) ? body : (body as { operations?: unknown } | null)?.operations
  if (!Array.isArray(ops) || ops.length === 0) throw new UsageError('a batch is {"operations":[{"op","table","id"?,"row"?,"ifMatch"?}, ...]} or that array alone, with at least one operation')
  return ops
}

/** A whole number of either sign, at most a day's worth of ms either way (a clock offset) */
function signedInt (value: string): number {
  if (!/^-?\d+$/.test(value) || Math.abs(Number(value)) > 86_400_000) throw new UsageError(`expected a whole number of ms within a day either way, got ${JSON.stringify(value)}`)
  return Number(value)
}

async function readJsonArg (arg: string, io: Io, what = 'the row'): Promise<unknown> {
  let text = arg
  if (arg === '-') {
    const chunks: Uint8Array[] = []
    for await (const c of io.stdin) chunks.push(typeof c === 'string' ? fromString(c) : c as Uint8Array)
    text = toString(concat(chunks), 'utf8')
  }
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new UsageError(`${what} must be JSON: ${(err as Error).message}`)
  }
}

/**
 * The size of a file to import, once it is known to be one this process can
 * read (a pipe such as `<(zcat rows.ndjson.gz)` has no size: 0); anything else
 * is a usage error, before the daemon is asked, never a stream error later.
 */
async function readableSize (file: string): Promise<number> {
  const info = await stat(file).catch((err: NodeJS.ErrnoException) => { throw new UsageError(`cannot read ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`) })
  if (info.isDirectory()) throw new UsageError(`cannot read ${file}: it is a directory; import takes a file, or - for stdin`)
  await access(file, constants.R_OK).catch((err: Error) => { throw new UsageError(`cannot read ${file}: ${err.message}`) })
  return info.isFile() ? info.size : 0
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
