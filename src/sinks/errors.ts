import { RxflowError } from '../errors.js';

/** An error of a sink: `code` names the failure, `cause` carries the underlying error. */
export class SinkError extends RxflowError {
  override readonly name = 'SinkError';
}

/** Errors pass through as they are; anything else thrown is wrapped, so a rejection is always an Error. */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new SinkError('EINPUT', `input failed: ${String(err)}`, { cause: err });
}
