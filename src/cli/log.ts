import { pino, type DestinationStream, type Logger } from 'pino';
import { REDACTING } from '../logger.js';

/**
 * Errors that mean a bug in rxflow rather than a condition of the machine or the network: these
 * keep their stack in the log at every level. Any other error (no such interface, broker
 * unreachable) is logged with its message, code and causes; its stack only at debug or trace.
 */
const PROGRAMMER_ERRORS = new Set([
  'TypeError',
  'ReferenceError',
  'RangeError',
  'SyntaxError',
  'EvalError',
  'URIError',
  'AssertionError',
]);

const MAX_CAUSE_DEPTH = 5;

interface SerializedError {
  type: string;
  message: string;
  code?: string | number;
  cause?: SerializedError | string;
  stack?: string;
}

/** The `err` field of a log line: message, code and the chain of causes, with a stack when asked. */
export function serializeError(err: unknown, withStacks: boolean, depth = 0): SerializedError | string {
  if (!(err instanceof Error)) return String(err);
  const out: SerializedError = { type: err.name, message: err.message };
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' || typeof code === 'number') out.code = code;
  if (err.cause !== undefined && depth < MAX_CAUSE_DEPTH) {
    out.cause = serializeError(err.cause, withStacks, depth + 1);
  }
  if ((withStacks || PROGRAMMER_ERRORS.has(err.name)) && err.stack !== undefined) out.stack = err.stack;
  return out;
}

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

/**
 * The root logger of a command: JSON lines on stderr (stdout may carry records of a `stdout`
 * sink), written synchronously so nothing is lost when the process exits right after.
 */
export function createCliLogger(level: string, destination?: DestinationStream): Logger {
  const withStacks = level === 'debug' || level === 'trace';
  return pino(
    {
      name: 'rxflow',
      level,
      serializers: { err: (err: unknown) => serializeError(err, withStacks) },
      // Secret fields, URL userinfo and registered secrets never reach the log.
      ...REDACTING,
    },
    destination ?? pino.destination({ fd: 2, sync: true }),
  );
}
