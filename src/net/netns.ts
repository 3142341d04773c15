import { openSync, closeSync } from 'node:fs';
import koffi from 'koffi';
import { libcLibrary } from '../native.js';
import { RxflowError, SyscallError, describeErrno } from '../errors.js';

/**
 * A network namespace cannot be entered or left: ENONETNS (no such namespace, or setns failed),
 * ENOPRIV (not root / no CAP_SYS_ADMIN). `cause` is the failed call's SyscallError.
 */
export class NetnsError extends RxflowError {
  override readonly name = 'NetnsError';
}

const CLONE_NEWNET = 0x40000000;

interface SetnsLib {
  setns: (fd: number, nstype: number) => number;
}

let lib: SetnsLib | undefined;

function setnsLib(): SetnsLib {
  if (!lib) {
    const c = libcLibrary();
    lib = { setns: c.func('int setns(int fd, int nstype)') as SetnsLib['setns'] };
  }
  return lib;
}

/** The file that enters network namespace `name` (an `ip netns` name or an absolute path). */
export function netnsPath(name: string): string {
  return name.startsWith('/') ? name : `/run/netns/${name}`;
}

/**
 * The error of a step of entering network namespace `name` that failed: opening its file (`cause`
 * the fs error), setns into it or back out of it (`cause` the errno). Also for the entries made
 * in C on a worker thread (see native/tcx_attach.c).
 */
export function netnsError(name: string, step: 'open' | 'enter' | 'leave', cause: unknown): NetnsError {
  if (step === 'open') {
    return new NetnsError(
      'ENONETNS',
      `enter network namespace ${name}: ${netnsPath(name)} cannot be opened; check the name with 'ip netns list'`,
      { cause },
    );
  }
  const errno = cause as number;
  const syscall = new SyscallError('setns', errno);
  if (step === 'leave') {
    return new NetnsError('ENONETNS', `leave network namespace ${name}: ${describeErrno(errno)}`, {
      cause: syscall,
    });
  }
  return new NetnsError(
    errno === 1 ? 'ENOPRIV' : 'ENONETNS',
    `enter network namespace ${name}: ${describeErrno(errno)}${errno === 1 ? '; run as root or grant CAP_SYS_ADMIN' : ''}`,
    { cause: syscall },
  );
}

/**
 * Runs fn with the calling thread in the network namespace `name` (as `ip netns` names it, i.e.
 * /run/netns/<name>, or an absolute path such as /proc/<pid>/ns/net), then switches back.
 * Interface names and TC attachments resolve in the caller's namespace, so this is how the agent
 * attaches to a container's or a test namespace's interfaces. fn must be synchronous: the switch
 * applies to this thread only, and an await would run other code in the wrong namespace.
 */
export function withNetns<T>(name: string | undefined, fn: () => T): T {
  if (name === undefined) return fn();
  const path = netnsPath(name);
  let target: number;
  try {
    target = openSync(path, 'r');
  } catch (err) {
    throw netnsError(name, 'open', err);
  }
  const home = openSync('/proc/thread-self/ns/net', 'r');
  try {
    if (setnsLib().setns(target, CLONE_NEWNET) !== 0) throw netnsError(name, 'enter', koffi.errno());
    try {
      return fn();
    } finally {
      // Staying in the wrong namespace would silently misdirect every later attach.
      if (setnsLib().setns(home, CLONE_NEWNET) !== 0) throw netnsError(name, 'leave', koffi.errno());
    }
  } finally {
    closeSync(target);
    closeSync(home);
  }
}
