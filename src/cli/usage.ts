/** A command was called wrongly (exit 2): a bad flag value, a file that must not be overwritten */
export class UsageError extends Error {
  override name = 'UsageError'
}
