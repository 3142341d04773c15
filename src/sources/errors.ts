import { RxflowError } from '../errors.js';

/** An error of a source: `code` names the failure, `cause` carries the underlying error. */
export class SourceError extends RxflowError {
  override readonly name = 'SourceError';
}
