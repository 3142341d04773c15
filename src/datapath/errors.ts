import { RxflowError, SyscallError, describeErrno, errnoName } from '../errors.js';

/**
 * Codes of DatapathError. A datapath code where one applies; otherwise the OS error name of the
 * failed call (e.g. 'EEXIST' for an update with `noexist` on a present key).
 *
 * - ENOPRIV: not root / no CAP_BPF (the kernel answered EPERM)
 * - ENOBPFFS: the pin directory is not on a bpf filesystem
 * - EOBJMISSING: the object file does not exist
 * - EOBJOPEN: the object file is not a BPF ELF libbpf can parse
 * - EOBJLAYOUT: a struct in the object's BTF differs from the TypeScript layout
 * - EVERIFIER: the verifier rejected a program (message has the program name and the log tail)
 * - ELOAD: loading failed for another reason (map creation, BTF, ...)
 * - EPINMISMATCH: a map pinned by an earlier run has another type, key/value size or max entries
 * - ENOIFACE: unknown interface
 * - EATTACH / EDETACH: a TC attachment failed
 * - EMAPFULL: map update failed with E2BIG
 * - ENOTFOUND: no program or map of that name in the object
 * - EARG: an argument does not fit the map (key or value size, map type)
 * - ECLOSED: the object, map, link or reader was closed
 * - EBUSY: an asynchronous flow-map swap is still running
 * - EASYNC: koffi could not run a call on a worker thread
 * - ETESTRUN, ERINGBUF, EMAP: other failures of these operations
 */
export type DatapathErrorCode =
  | 'ENOPRIV'
  | 'ENOBPFFS'
  | 'EOBJMISSING'
  | 'EOBJOPEN'
  | 'EOBJLAYOUT'
  | 'EVERIFIER'
  | 'ELOAD'
  | 'EPINMISMATCH'
  | 'ENOIFACE'
  | 'EATTACH'
  | 'EDETACH'
  | 'EMAPFULL'
  | 'ENOTFOUND'
  | 'EARG'
  | 'ECLOSED'
  | 'ETESTRUN'
  | 'ERINGBUF'
  | 'EMAP'
  | (string & {});

/** The failed C call underneath a DatapathError is a SyscallError (src/errors.ts). */
export class DatapathError extends RxflowError {
  override readonly name = 'DatapathError';
  declare readonly code: DatapathErrorCode;
  /** The positive errno of the failed call, when one failed. */
  readonly errno?: number;

  constructor(code: DatapathErrorCode, message: string, cause?: unknown) {
    super(code, message, { cause });
    if (cause instanceof SyscallError) this.errno = cause.errno;
  }
}

/**
 * The DatapathError for a failed call: EPERM becomes ENOPRIV with the fix, E2BIG on a map update
 * EMAPFULL; anything else gets `fallbackCode` or, without one, the OS error name.
 */
export function syscallFailure(
  context: string,
  syscall: string,
  errno: number,
  opts: { code?: DatapathErrorCode; hint?: string } = {},
): DatapathError {
  const e = Math.abs(errno);
  const cause = new SyscallError(syscall, e);
  if (e === 1) {
    return new DatapathError(
      'ENOPRIV',
      `${context}: ${describeErrno(e)}; run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON`,
      cause,
    );
  }
  const hint = opts.hint ? `; ${opts.hint}` : '';
  return new DatapathError(opts.code ?? errnoName(e), `${context}: ${describeErrno(e)}${hint}`, cause);
}
