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

/**
 * Runs fn with the calling thread in the network namespace `name` (as `ip netns` names it, i.e.
 * /run/netns/<name>, or an absolute path such as /proc/<pid>/ns/net), then switches back.
 * Interface names and TC attachments resolve in the caller's namespace, so this is how the agent
 * attaches to a container's or a test namespace's interfaces. fn must be synchronous: the switch
 * applies to this thread only, and an await would run other code in the wrong namespace.
 */
export function withNetns<T>(name: string | undefined, fn: () => T): T {
  if (name === undefined) return fn();
  const path = name.startsWith('/') ? name : `/run/netns/${name}`;
  let target: number;
  try {
    target = openSync(path, 'r');
  } catch (err) {
    throw new NetnsError(
      'ENONETNS',
      `enter network namespace ${name}: ${path} cannot be opened; check the name with 'ip netns list'`,
      { cause: err },
    );
  }
  const home = openSync('/proc/thread-self/ns/net', 'r');
  try {
    if (setnsLib().setns(target, CLONE_NEWNET) !== 0) {
      const errno = koffi.errno();
      throw new NetnsError(
        errno === 1 ? 'ENOPRIV' : 'ENONETNS',
        `enter network namespace ${name}: ${describeErrno(errno)}${errno === 1 ? '; run as root or grant CAP_SYS_ADMIN' : ''}`,
        { cause: new SyscallError('setns', errno) },
      );
    }
    try {
      return fn();
    } finally {
      if (setnsLib().setns(home, CLONE_NEWNET) !== 0) {
        // Staying in the wrong namespace would silently misdirect every later attach.
        const errno = koffi.errno();
        throw new NetnsError('ENONETNS', `leave network namespace ${name}: ${describeErrno(errno)}`, {
          cause: new SyscallError('setns', errno),
        });
      }
    }
  } finally {
    closeSync(target);
    closeSync(home);
  }
}
