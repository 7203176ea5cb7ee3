import { existsSync } from 'node:fs'
import { open, unlink, type FileHandle } from 'node:fs/promises'
import { StringDecoder } from 'node:string_decoder'
import type { NtsoekheClient } from '../client/index.js'
import { NtsoekheError } from '../errors/index.js'
import type { Io } from './index.js'
import { UsageError } from './usage.js'

export interface ExportFlags {
  table: string[]
  anonymize?: boolean
  out?: string
  consistency?: 'one' | 'quorum' | 'all'
}

/** Where the lines go: stdout, or a new file */
interface Sink {
  write: (chunk: Buffer) => Promise<void>
  /** Flushes and closes; the file is complete */
  close: () => Promise<void>
  /** Removes what was written: a cut-off export is not left looking like a whole one */
  discard: () => Promise<void>
}

/**
 * `ntsoekhe export`: streams the daemon's NDJSON to stdout or to a new file
 * (0600, never over an existing one), with a progress bar on stderr when it
 * is a terminal and a one-line summary at the end.
 */
export async function runExport (api: NtsoekheClient, flags: ExportFlags, io: Io): Promise<void> {
  // Checked before the daemon is asked, and again (atomically) by the open below.
  if (flags.out !== undefined && existsSync(flags.out)) throw new UsageError(`${flags.out} exists; an export never overwrites a file`)
  const { tables, body } = await api.export({
    tables: flags.table,
    ...(flags.anonymize === true ? { anonymize: true } : {}),
    ...(flags.consistency === undefined ? {} : { consistency: flags.consistency })
  })
  let sink: Sink
  try {
    sink = flags.out === undefined ? stdoutSink(io) : await fileSink(flags.out)
  } catch (err) {
    body.destroy()
    throw err
  }
  const progress = await exportProgress(io, tables)
  let rows = 0
  try {
    for await (const chunk of body) {
      const buf = chunk as Buffer
      for (let i = buf.indexOf(10); i !== -1; i = buf.indexOf(10, i + 1)) rows++
      progress.update(buf, rows)
      await sink.write(buf)
    }
    await sink.close()
  } catch (err) {
    progress.stop(false)
    body.destroy()
    await sink.discard()
    throw new NtsoekheError('UNAVAILABLE', `The export was cut off after ${rows} rows${flags.out === undefined ? '' : ` (${flags.out} removed)`}: ${(err as Error).message}`, { cause: err })
  }
  progress.stop()
  io.stderr.write(`exported ${rows} rows of ${tables.length} tables${flags.anonymize === true ? ', anonymized,' : ''} to ${flags.out ?? 'stdout'}\n`)
}

function stdoutSink (io: Io): Sink {
  const decoder = new StringDecoder('utf8')
  const out = io.stdout as { write: (s: string) => unknown, once?: (e: string, f: (err?: Error) => void) => unknown, off?: (e: string, f: (err?: Error) => void) => unknown }
  // A reader that goes away (`| head`) ends the export with an error, not a crash.
  let failed: Error | undefined
  out.once?.('error', (err?: Error) => { failed = err ?? new Error('stdout failed') })
  return {
    write: async chunk => {
      if (failed !== undefined) throw failed
      // Paced by stdout: a slow reader slows the daemon's paging instead of filling memory.
      if (out.write(decoder.write(chunk)) !== false || out.once === undefined) return
      await new Promise<void>(resolve => {
        const done = (): void => {
          out.off?.('drain', done)
          out.off?.('close', done)
          resolve()
        }
        out.once?.('drain', done)
        out.once?.('close', done)
      })
      if (failed !== undefined) throw failed
    },
    close: async () => { out.write(decoder.end()) },
    discard: async () => {}
  }
}

async function fileSink (path: string): Promise<Sink> {
  let file: FileHandle
  try {
    file = await open(path, 'wx', 0o600)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new UsageError(`${path} exists; an export never overwrites a file`)
    throw new NtsoekheError('INVALID', `cannot create ${path}: ${(err as Error).message}`, { cause: err })
  }
  let closed = false
  const close = async (): Promise<void> => {
    if (closed) return
    closed = true
    await file.close()
  }
  return {
    write: async chunk => { await file.write(chunk) },
    close,
    discard: async () => {
      await close()
      await unlink(path)
    }
  }
}

/** A bar over the export's tables, with the rows so far; nothing when stderr is not a terminal */
async function exportProgress (io: Io, tables: string[]): Promise<{ update: (chunk: Buffer, rows: number) => void, stop: (complete?: boolean) => void }> {
  if (io.stderr.isTTY !== true) return { update: () => {}, stop: () => {} }
  const { SingleBar, Presets } = await import('cli-progress')
  const bar = new SingleBar({ format: 'exporting [{bar}] {value}/{total} tables | {rows} rows | {table}', stream: io.stderr as NodeJS.WritableStream }, Presets.shades_classic)
  // The lines come table after table: the bar moves on when the next table's first line shows
  // (Buffer's includes() looks for a string's UTF-8 bytes).
  const starts = tables.map(t => `{"table":${JSON.stringify(t)}`)
  let current = -1
  bar.start(tables.length, 0, { rows: 0, table: '' })
  let stopped = false
  return {
    update: (chunk, rows) => {
      while (current + 1 < starts.length && chunk.includes(starts[current + 1] as string)) current++
      bar.update(Math.max(current, 0), { rows, table: tables[current] ?? '' })
    },
    stop: (complete = true) => {
      if (stopped) return
      stopped = true
      if (complete) bar.update(tables.length)
      bar.stop()
    }
  }
}
