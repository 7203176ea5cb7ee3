import { pino, type DestinationStream, type Logger } from 'pino'

/** The component a line names when its caller names none */
export const DEFAULT_COMPONENT = 'daemon'

/**
 * The daemon's logger: JSON lines, each naming its `component` once. A
 * component comes from the line (`log.info({ component: 'store' }, ...)`)
 * or from a child's bindings (`log.child({ component: 'api' })`); a line
 * with neither is the daemon's own. (A component in pino's `base` as well
 * would print the key twice: pino writes bindings and fields side by side.)
 */
export function createLogger (level: string, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: {},
    mixin: (fields: object, _level: number, logger: Logger) =>
      'component' in fields || 'component' in logger.bindings() ? {} : { component: DEFAULT_COMPONENT }
  }
  return destination === undefined ? pino(options) : pino(options, destination)
}
