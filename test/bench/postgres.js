// PostgreSQL 15 for side-by-side benchmarks: a primary and two synchronous
// standbys on Unix sockets in a temp dir (`synchronous_standby_names = 'ANY 1 (s1, s2)'`),
// loaded with the same tables as Ntsoekhe's schema, driven by pgbench.
//
// Debian's package (`postgresql`) is installed when absent (apt-get, as root).
// PostgreSQL refuses to run as root, so when this process is root the server
// and its tools run as the `postgres` user the package creates.
import { execFile, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, chown, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)
const PG_BIN = '/usr/lib/postgresql/15/bin'
const PRIMARY_PORT = 5432
/** How long a server may take to start or a standby to catch up */
const START_TIMEOUT = 60_000

/** The SQL type of a schema column (src/schema/tables.ts) */
function sqlType (c) {
  switch (c.type) {
    case 'INT': return 'integer'
    case 'VARCHAR': return `varchar(${c.length})`
    case 'DATE': return 'date'
    case 'TIMESTAMP': return 'timestamptz'
    case 'DECIMAL': return `numeric(${c.precision}, ${c.scale})`
    default: throw new Error(`no SQL type for ${c.type}`)
  }
}

/** CREATE TABLE statements for `tables` (TableDefs), with primary keys and the same secondary indexes */
export function createTablesSql (tables) {
  const out = []
  for (const t of tables) {
    const cols = t.columns.map(c => `  ${c.name} ${sqlType(c)}${c.notNull ? ' NOT NULL' : ''}`)
    out.push(`CREATE TABLE ${t.name} (\n${cols.join(',\n')},\n  PRIMARY KEY (${t.primaryKey.join(', ')})\n);`)
    for (const col of t.indexed) out.push(`CREATE INDEX ON ${t.name} (${col});`)
  }
  return out.join('\n')
}

async function ensureInstalled (log) {
  if (existsSync(join(PG_BIN, 'postgres')) && existsSync(join(PG_BIN, 'pgbench'))) return
  log('postgres: installing Debian\'s postgresql package (apt-get)')
  await run('apt-get', ['install', '-y', '-q', 'postgresql'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, maxBuffer: 64 << 20 })
}

/**
 * Starts a primary and `standbys` synchronous standbys in a fresh temp dir and
 * waits until the standbys stream. Returns `{ dir, port, psql, copy, pgbench, stop }`.
 */
export async function startPostgres ({ standbys = 2, log = () => {} } = {}) {
  await ensureInstalled(log)
  const root = userInfo().uid === 0
  const asPg = (cmd, args) => root ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args]
  const pg = async (tool, args, options = {}) => {
    const [cmd, argv] = asPg(join(PG_BIN, tool), args)
    return await run(cmd, argv, { maxBuffer: 64 << 20, ...options })
  }
  const dir = await mkdtemp(join(tmpdir(), 'ntk-pg-'))
  if (root) {
    const { stdout } = await run('id', ['-u', 'postgres'])
    const { stdout: gid } = await run('id', ['-g', 'postgres'])
    await chown(dir, Number(stdout.trim()), Number(gid.trim()))
  }
  await chmod(dir, 0o700)
  const started = []
  const stop = async () => {
    for (const data of started.reverse()) await pg('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']).catch(() => {})
    await rm(dir, { recursive: true, force: true })
  }
  try {
    const primary = join(dir, 'primary')
    await pg('initdb', ['-D', primary, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-instructions'])
    const names = Array.from({ length: standbys }, (_, i) => `s${i + 1}`)
    const conf = [
      "listen_addresses = ''",
      `unix_socket_directories = '${dir}'`,
      'wal_level = replica',
      'max_wal_senders = 10',
      'max_connections = 200',
      'shared_buffers = 256MB',
      names.length === 0 ? '' : `synchronous_standby_names = 'ANY 1 (${names.join(', ')})'`,
      'synchronous_commit = on',
      'fsync = on'
    ].join('\n')
    await appendAsPg(pg, join(primary, 'postgresql.conf'), `\n${conf}\n`, dir)
    await pg('pg_ctl', ['-D', primary, '-l', join(dir, 'primary.log'), '-w', '-t', String(START_TIMEOUT / 1000), '-o', `-p ${PRIMARY_PORT}`, 'start'])
    started.push(primary)
    for (const [i, name] of names.entries()) {
      const data = join(dir, name)
      await pg('pg_basebackup', ['-h', dir, '-p', String(PRIMARY_PORT), '-U', 'postgres', '-D', data, '-R', '-X', 'stream'])
      await appendAsPg(pg, join(data, 'postgresql.auto.conf'), `\nprimary_conninfo = 'host=${dir} port=${PRIMARY_PORT} user=postgres application_name=${name}'\n`, dir)
      await pg('pg_ctl', ['-D', data, '-l', join(dir, `${name}.log`), '-w', '-t', String(START_TIMEOUT / 1000), '-o', `-p ${PRIMARY_PORT + 1 + i}`, 'start'])
      started.push(data)
    }
    const psql = async (sql, db = 'postgres') => (await pg('psql', ['-h', dir, '-p', String(PRIMARY_PORT), '-U', 'postgres', '-d', db, '-v', 'ON_ERROR_STOP=1', '-qAt', '-c', sql])).stdout
    const until = Date.now() + START_TIMEOUT
    for (;;) {
      const streaming = Number((await psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")).trim())
      if (streaming === standbys) break
      if (Date.now() > until) throw new Error(`postgres: ${streaming} of ${standbys} standbys streaming after ${START_TIMEOUT} ms`)
      await new Promise(resolve => setTimeout(resolve, 200))
    }
    await psql('CREATE DATABASE bench')
    return {
      dir,
      port: PRIMARY_PORT,
      psql: async sql => await psql(sql, 'bench'),
      /** Loads rows (objects) into `table` with COPY, columns in `columns` order */
      copy: async (table, columns, rows) => await copyRows(asPg, dir, table, columns, rows),
      /** Runs pgbench with `script` at `clients` for `seconds`; returns transactions per second */
      pgbench: async (script, { clients = 32, seconds = 10 } = {}) => {
        const file = join(dir, `script-${Math.random().toString(36).slice(2)}.sql`)
        await writeFile(file, script)
        if (root) await chmod(file, 0o644)
        const { stdout } = await pg('pgbench', ['-h', dir, '-p', String(PRIMARY_PORT), '-U', 'postgres', '-n', '-M', 'prepared', '-c', String(clients), '-j', '2', '-T', String(seconds), '-f', file, 'bench'])
        const m = /tps = ([\d.]+) \(without initial connection time\)/.exec(stdout)
        if (m === null) throw new Error(`pgbench printed no tps:\n${stdout}`)
        return Number(m[1])
      },
      stop
    }
  } catch (err) {
    await stop()
    throw err
  }
}

/** Appends to a file the postgres user owns (through the postgres user when root) */
async function appendAsPg (pg, file, text, dir) {
  const tmp = join(dir, `append-${Math.random().toString(36).slice(2)}`)
  await writeFile(tmp, text)
  await chmod(tmp, 0o644)
  const root = userInfo().uid === 0
  const [cmd, argv] = root ? ['runuser', ['-u', 'postgres', '--', 'sh', '-c', `cat "$1" >> "$2"`, 'sh', tmp, file]] : ['sh', ['-c', `cat "$1" >> "$2"`, 'sh', tmp, file]]
  await run(cmd, argv)
  await rm(tmp, { force: true })
}

/** COPY rows in through psql's stdin (CSV), so no temp file needs to be readable by the server */
async function copyRows (asPg, dir, table, columns, rows) {
  const [cmd, argv] = asPg(join(PG_BIN, 'psql'), ['-h', dir, '-p', String(PRIMARY_PORT), '-U', 'postgres', '-d', 'bench', '-v', 'ON_ERROR_STOP=1', '-qc', `\\copy ${table} (${columns.join(', ')}) FROM STDIN WITH (FORMAT csv)`])
  const child = spawn(cmd, argv, { stdio: ['pipe', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', s => { stderr += s })
  const done = new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('exit', code => {
      if (code === 0) resolve()
      else reject(new Error(`COPY ${table} failed (${code}): ${stderr}`))
    })
  })
  const csv = v => v === null || v === undefined ? '' : `"${String(v).replaceAll('"', '""')}"`
  for (let i = 0; i < rows.length; i += 1000) {
    const chunk = rows.slice(i, i + 1000).map(r => columns.map(c => csv(r[c])).join(',')).join('\n') + '\n'
    if (!child.stdin.write(chunk)) await new Promise(resolve => child.stdin.once('drain', resolve))
  }
  child.stdin.end()
  await done
}
