import { getSystemErrorMap } from 'node:util';

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

/** A failed C call (the cause of a datapath or namespace error): `code` is the OS error name, `errno` positive. */
export class SyscallError extends RxflowError {
  override readonly name = 'SyscallError';
  readonly errno: number;
  readonly syscall: string;

  constructor(syscall: string, errno: number) {
    super(errnoName(errno), `${syscall}: ${errnoMessage(errno)} (${errnoName(errno)})`);
    this.syscall = syscall;
    this.errno = errno;
  }
}

// 524 is kernel-internal but leaks out of the bpf syscall, and libuv does not know it; libuv
// words 95 for sockets only.
// libbpf's own codes start at 4000 (enum libbpf_errno in libbpf.h).
const errnoOverrides: Record<number, [string, string]> = {
  95: ['EOPNOTSUPP', 'operation not supported'],
  524: ['ENOTSUPP', 'operation not supported by this kernel'],
  4000: ['LIBBPF_ERRNO__LIBELF', 'libelf could not read the file'],
  4001: ['LIBBPF_ERRNO__FORMAT', 'invalid bpf object format'],
  4002: ['LIBBPF_ERRNO__KVERSION', "'version' section incorrect or lost"],
  4003: ['LIBBPF_ERRNO__ENDIAN', 'endianness mismatch'],
  4004: ['LIBBPF_ERRNO__INTERNAL', 'internal error in libbpf'],
  4005: ['LIBBPF_ERRNO__RELOC', 'relocation failed'],
  4007: ['LIBBPF_ERRNO__VERIFY', 'the kernel verifier blocked loading'],
  4008: ['LIBBPF_ERRNO__PROG2BIG', 'program too big'],
  4009: ['LIBBPF_ERRNO__KVER', 'incorrect kernel version'],
  4010: ['LIBBPF_ERRNO__PROGTYPE', 'program type not supported by this kernel'],
};

let errnoTable: Map<number, [string, string]> | undefined;

function lookup(errno: number): [string, string] | undefined {
  errnoTable ??= getSystemErrorMap();
  // libuv keys its table by negated errno.
  return errnoOverrides[errno] ?? errnoTable.get(-errno);
}

/** 'EPERM' for 1; `E<n>` for numbers nobody named. Accepts negative values as libbpf returns them. */
export function errnoName(errno: number): string {
  const e = Math.abs(errno);
  return lookup(e)?.[0] ?? `E${e}`;
}

/** Lower-case description, e.g. 'operation not permitted'. */
export function errnoMessage(errno: number): string {
  const e = Math.abs(errno);
  return lookup(e)?.[1]?.toLowerCase() ?? `error ${e}`;
}

/** ': operation not permitted (EPERM)', for the end of a message's context part. */
export function describeErrno(errno: number): string {
  return `${errnoMessage(errno)} (${errnoName(errno)})`;
}
