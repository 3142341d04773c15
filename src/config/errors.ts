import { RxflowError } from '../errors.js';
import { redactText } from '../redact.js';
import { escapeControl, escapeControlKeepLines } from './text.js';

/**
 * A pipeline could not be read, checked, built or run. Control characters in the message (from a
 * file's bytes or a variable's value) are escaped, so printing it cannot drive the terminal, and
 * URLs lose their userinfo (a password).
 */
export class PipelineError extends RxflowError {
  override name = 'PipelineError';

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(code, escapeControlKeepLines(redactText(message)), options);
  }
}

/** One problem in a pipeline file, with the place it was found. */
export interface ConfigProblem {
  file: string;
  /** 1-based. */
  line: number;
  /** 1-based. */
  column: number;
  /** Where in the pipeline, e.g. `transforms.acct.max_entries`; empty for the whole file. */
  path: string;
  message: string;
}

/** `file:line:col: path: message` on one line, control characters escaped, URLs without userinfo. */
export function formatProblem(p: ConfigProblem): string {
  const where = `${escapeControl(p.file)}:${p.line}:${p.column}: `;
  const message = escapeControl(redactText(p.message));
  return p.path ? `${where}${escapeControl(p.path)}: ${message}` : `${where}${message}`;
}

/** A pipeline file has one or more problems; `message` lists every one, one per line. */
export class PipelineConfigError extends PipelineError {
  override name = 'PipelineConfigError';

  constructor(
    readonly problems: readonly ConfigProblem[],
    options?: { cause?: unknown },
  ) {
    super('ECONFIG', problems.map(formatProblem).join('\n'), options);
  }
}
