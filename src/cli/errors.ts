import { RxflowError } from '../errors.js';

/**
 * An error the command line reports to the user as its message alone (no stack): a pipeline that
 * cannot start, a socket that is in use, a demo that is already running.
 */
export class CliError extends RxflowError {
  override readonly name = 'CliError';
}
