import {
  closeSync,
  constants,
  fstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readlinkSync,
  statSync,
} from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import koffi from 'koffi';
import { libcLibrary } from '../native.js';
import { SyscallError, describeErrno } from '../errors.js';
import { DatapathError } from './errors.js';

/**
 * An agent instance names its bpffs directory (<pin root>/rxflow-<instance>), so the name must be
 * a single safe path component. Config schemas use the pattern; loaders check with the function.
 */
export const INSTANCE_PATTERN = '^[A-Za-z0-9_.-]{1,64}$';
const INSTANCE_RE = new RegExp(INSTANCE_PATTERN);

/** What a bad instance name is told: the rule, in words. */
export const INSTANCE_RULE = "must be 1-64 letters, digits, '_', '.' or '-'";

export function isInstanceName(name: string): boolean {
  return INSTANCE_RE.test(name);
}

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

interface FlockLib {
  flock: (fd: number, operation: number) => number;
}

let flockLib: FlockLib | undefined;

function flock(fd: number, operation: number): number {
  if (!flockLib) {
    const c = libcLibrary();
    flockLib = { flock: c.func('int flock(int fd, int operation)') as FlockLib['flock'] };
  }
  return flockLib.flock(fd, operation);
}

/** The process holding an flock on the file `ino` of device `dev`, from /proc/locks. */
function lockHolder(dev: number, ino: number): number | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/locks', 'utf8');
  } catch {
    return undefined;
  }
  const major = ((dev >>> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
  const minor = (dev & 0xff) | ((dev >>> 12) & ~0xff);
  // e.g. "1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF"; blocked waiters start with "->".
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[1] !== 'FLOCK' || f.length < 6) continue;
    const [ma, mi, node] = (f[5] ?? '').split(':');
    if (Number(node) === ino && parseInt(ma ?? '', 16) === major && parseInt(mi ?? '', 16) === minor) {
      const pid = Number(f[4]);
      return Number.isInteger(pid) && pid > 0 ? pid : undefined;
    }
  }
  return undefined;
}

/**
 * What process `pid` runs, for an error message: `rxflow run <absolute pipeline file>` when it is
 * an rxflow run, else its command line.
 */
export function describeProcess(pid: number): string {
  let argv: string[];
  try {
    argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      .split('\0')
      .filter((a) => a !== '');
  } catch {
    return `pid ${pid}`;
  }
  const run = argv.indexOf('run');
  const file = run >= 0 ? argv[run + 1] : undefined;
  if (file !== undefined && !file.startsWith('-')) {
    let cwd = '/';
    try {
      cwd = readlinkSync(`/proc/${pid}/cwd`);
    } catch {
      // Shown as given.
    }
    return `pid ${pid}, pipeline ${isAbsolute(file) ? file : resolve(cwd, file)}`;
  }
  return `pid ${pid}, ${argv.join(' ').slice(0, 200)}`;
}

/**
 * One agent per instance: an exclusive flock on the instance's bpffs directory, held for as long
 * as the agent uses its pins. The kernel releases it when the process dies, however it dies, so a
 * killed agent never blocks the next one; a second live agent is refused with an error naming the
 * first.
 */
export class InstanceLock {
  #fd: number | undefined;

  private constructor(
    readonly dir: string,
    fd: number,
    /** The directory did not exist: this agent made it, and a failed start removes it. */
    readonly created: boolean,
  ) {
    this.#fd = fd;
  }

  /**
   * Creates `dir` if need be and locks it; throws EINSTANCEBUSY naming the process holding it.
   * `what` names the instance in messages, e.g. "instance 'edge'".
   */
  static acquire(dir: string, what: string): InstanceLock {
    // The agent holding the lock may remove the directory as it stops, between our open and our
    // flock: then the lock we got is on a removed directory, and we try the new one.
    for (let attempt = 0; ; attempt++) {
      let created = false;
      try {
        created = mkdirSync(dir, { recursive: true, mode: 0o700 }) !== undefined;
      } catch (err) {
        throw new DatapathError('ELOCK', `lock ${what} at ${dir}: ${(err as Error).message}`, err);
      }
      let fd: number;
      try {
        fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT' && attempt < 5) continue;
        throw new DatapathError('ELOCK', `lock ${what} at ${dir}: ${(err as Error).message}`, err);
      }
      if (flock(fd, LOCK_EX | LOCK_NB) !== 0) {
        const errno = koffi.errno();
        const st = fstatSync(fd);
        closeSync(fd);
        if (errno === EWOULDBLOCK) {
          const pid = lockHolder(st.dev, st.ino);
          const holder = pid === undefined ? 'another process' : describeProcess(pid);
          throw new DatapathError(
            'EINSTANCEBUSY',
            `lock ${what} at ${dir}: another agent runs it (${holder}); stop that agent first, or give this pipeline another instance name`,
          );
        }
        throw new DatapathError(
          'ELOCK',
          `lock ${what} at ${dir}: ${describeErrno(errno)}`,
          new SyscallError('flock', errno),
        );
      }
      let current: number | undefined;
      try {
        current = statSync(dir).ino;
      } catch {
        current = undefined;
      }
      if (current === fstatSync(fd).ino || attempt >= 5) return new InstanceLock(dir, fd, created);
      closeSync(fd);
    }
  }

  /** Releases the lock; idempotent. */
  release(): void {
    if (this.#fd === undefined) return;
    closeSync(this.#fd);
    this.#fd = undefined;
  }
}
