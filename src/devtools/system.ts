import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { DevtoolError } from './tools.js';

/**
 * Commands, processes, namespaces and links of the machine, for the demo and the test fixtures.
 * The `...Sync` helpers exist for undo actions, which also run from `exit` and signal handlers
 * where nothing asynchronous gets to finish.
 */

export interface ExecResult {
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

/** Runs a command to completion; rejects with a DevtoolError carrying its stderr. */
export function run(file: string, args: string[], opts: RunOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      {
        encoding: 'utf8',
        timeout: opts.timeoutMs ?? 30_000,
        maxBuffer: 64 << 20,
        env: opts.env ?? process.env,
      },
      (error, stdout, stderr) => {
        if (error) {
          const detail = stderr.trim() || error.message;
          reject(new DevtoolError('ECOMMAND', `${file} ${args.join(' ')}: ${detail}`, { cause: error }));
        } else {
          resolve({ stdout, stderr });
        }
      },
    );
  });
}

/** Runs a command synchronously; throws a DevtoolError with its stderr. */
export function runSync(file: string, args: string[]): string {
  try {
    return execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    const raw = (error as { stderr?: string | Buffer }).stderr;
    const stderr = (typeof raw === 'string' ? raw : (raw?.toString('utf8') ?? '')).trim();
    throw new DevtoolError('ECOMMAND', `${file} ${args.join(' ')}: ${stderr || String(error)}`, {
      cause: error,
    });
  }
}

/** True while a process exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X';
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/** Blocks the thread; only for undo actions, which cannot wait asynchronously. */
export function sleepSync(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

/** Waits until `pid` is gone or a zombie; returns false on timeout. */
export function waitGoneSync(pid: number, timeoutMs: number): boolean {
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid)) {
    if (Date.now() >= deadline) {
      return false;
    }
    sleepSync(10);
  }
  return true;
}

/** Sends `sig`; false when the process no longer exists. */
export function signalProcess(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ESRCH') {
      return false;
    }
    throw error;
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; returns once the process is gone. */
export function killSync(pid: number, graceMs = 2000): void {
  if (!signalProcess(pid, 'SIGTERM')) {
    return;
  }
  if (waitGoneSync(pid, graceMs)) {
    return;
  }
  signalProcess(pid, 'SIGKILL');
  if (!waitGoneSync(pid, 5000)) {
    throw new DevtoolError('EKILL', `kill process ${pid}: still running after SIGKILL; check 'ps ${pid}'`);
  }
}

/** Names of the network namespaces `ip netns` knows. */
export function netnsNames(): string[] {
  return runSync('ip', ['netns', 'list'])
    .split('\n')
    .map((line) => line.split(' ')[0] ?? '')
    .filter((name) => name !== '');
}

/** Names of the interfaces in the current (root) namespace. */
export function linkNames(): string[] {
  const links = JSON.parse(runSync('ip', ['-j', 'link', 'show'])) as { ifname: string }[];
  return links.map((l) => l.ifname);
}

/** Deletes an interface of the root namespace; a missing one is not an error. */
export function deleteLinkSync(name: string): void {
  try {
    runSync('ip', ['link', 'del', 'dev', name]);
  } catch (error) {
    if (!linkNames().includes(name)) {
      return;
    }
    throw error;
  }
}

/** Deletes a named network namespace; a missing one is not an error. */
export function deleteNetnsSync(name: string): void {
  try {
    runSync('ip', ['netns', 'del', name]);
  } catch (error) {
    if (!netnsNames().includes(name)) {
      return;
    }
    throw error;
  }
}

/** Pids of the processes inside a named network namespace (`ip netns pids`). */
export function netnsPids(name: string): number[] {
  let out: string;
  try {
    out = runSync('ip', ['netns', 'pids', name]);
  } catch {
    return [];
  }
  return out
    .split('\n')
    .filter((line) => /^\d+$/.test(line.trim()))
    .map((line) => Number(line.trim()));
}

/** Pids of the processes whose environment holds `name=value` for some value `accept` takes. */
export function processesWithEnv(name: string, accept: (value: string) => boolean): number[] {
  const found: number[] = [];
  const needle = `${name}=`;
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    return found;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) {
      continue;
    }
    let environ: string;
    try {
      environ = fs.readFileSync(`/proc/${entry}/environ`, 'latin1');
    } catch {
      continue;
    }
    for (const kv of environ.split('\0')) {
      if (kv.startsWith(needle)) {
        if (accept(kv.slice(needle.length))) {
          found.push(Number(entry));
        }
        break;
      }
    }
  }
  return found;
}
