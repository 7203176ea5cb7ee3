/** Polls `cond` every `everyMs` until it holds, failing after `ms` with what was awaited */
export async function waitFor (what: string, cond: () => boolean | Promise<boolean>, ms = 10_000, everyMs = 25): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`Timed out after ${ms} ms waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, everyMs))
  }
}
