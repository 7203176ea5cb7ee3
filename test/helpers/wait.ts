/** Polls `cond` every `everyMs` until it holds, failing after `ms` with what was awaited */
export async function waitFor (what: string, cond: () => boolean | Promise<boolean>, ms = 10_000, everyMs = 25): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`Timed out after ${ms} ms waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, everyMs))
  }
}

/**
 * Polls `fn` every 100 ms until it gives a value (not undefined or false), for
 * end-to-end tests: an error (a daemon still starting) counts as not yet, and
 * the last one is named when the wait times out.
 */
export async function waitForValue<T> (what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await fn()
      if (v !== undefined && v !== false) return v
    } catch (err) { last = err }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last === undefined ? '' : ` (last error: ${(last as Error).message})`}`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

/** A patient_records row for end-to-end tests, with its key */
export function e2ePatient (i: number): Record<string, unknown> {
  return { patient_id: i, patient_name: `Patient ${i}`, date_of_birth: '1980-01-02', gender: 'F', address: `${i} Main St`, contact_number: '0123456789', email: `p${i}@example.org` }
}
