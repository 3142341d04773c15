/** An error of a sink: `code` names the failure, `cause` carries the underlying error. */
export class SinkError extends Error {
  override readonly name = 'SinkError';
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** The message of anything thrown, for logs and wrapped errors. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Errors pass through as they are; anything else thrown is wrapped, so a rejection is always an Error. */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new SinkError('EINPUT', `input failed: ${String(err)}`, { cause: err });
}
