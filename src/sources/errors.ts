/** An error of a source: `code` names the failure, `cause` carries the underlying error. */
export class SourceError extends Error {
  override readonly name = 'SourceError';
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** The message of anything thrown, for logs and wrapped errors. */
export { messageOf } from '../sinks/errors.js';
