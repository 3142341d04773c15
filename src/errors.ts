/**
 * The one error base of rxflow. Every error rxflow throws on purpose is an `RxflowError` (or a
 * subclass naming its layer): `code` names the failure for programs and tests, `cause` carries
 * the underlying error, and `remedy`, when the message alone does not say it, tells the user what
 * to do; it is appended to the message so logs and the CLI show it.
 */
export interface RxflowErrorOptions {
  cause?: unknown;
  /** What the user should do, e.g. "start the agent as root or with CAP_BPF". */
  remedy?: string;
}

export class RxflowError extends Error {
  override name = 'RxflowError';
  readonly code: string;
  readonly remedy: string | undefined;

  constructor(code: string, message: string, options?: RxflowErrorOptions) {
    super(
      options?.remedy ? `${message}; ${options.remedy}` : message,
      options?.cause === undefined ? undefined : { cause: options.cause },
    );
    this.code = code;
    this.remedy = options?.remedy;
  }
}

/** The message of anything thrown, for logs and wrapped errors. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The `code` of anything thrown (an RxflowError's, or a Node system error's), if it has one. */
export function codeOf(err: unknown): string | undefined {
  if (err === null || typeof err !== 'object') return undefined;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}
