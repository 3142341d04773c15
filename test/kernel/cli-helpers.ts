import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';
import { cleanup, killSync, makeBpffsDir, makeTempDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';

/** The built command line; the tests run it as a user would. */
export const MAIN = fileURLToPath(new URL('../../dist/src/cli/main.js', import.meta.url));

export function assertBuilt(): void {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing; build it with: npx tsc -p .`);
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A `node dist/src/cli/main.js ...` process, its output collected, killed by the cleanup registry. */
export class Cli {
  stdout = '';
  stderr = '';
  readonly exited: Promise<Exit>;
  private readonly child: ChildProcess;

  constructor(args: string[], env: NodeJS.ProcessEnv = {}) {
    this.child = spawn(process.execPath, [MAIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => (this.stdout += s));
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));
    const pid = this.child.pid!;
    // SIGTERM first: a demo drains and removes its network by itself.
    const registration = cleanup.register(`rxflow ${args[0]} ${pid}`, () => killSync(pid, 10_000));
    this.exited = new Promise<Exit>((resolve) =>
      this.child.once('close', (code, signal) => {
        registration.release();
        resolve({ code, signal });
      }),
    );
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The JSON log lines on stderr. */
  logs(): Record<string, unknown>[] {
    return this.stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }

  /** Waits until `condition` holds, failing after `ms` with the output so far. */
  async until(condition: (cli: Cli) => boolean, what: string, ms = 20_000): Promise<void> {
    const deadline = Date.now() + ms;
    let done = false;
    void this.exited.then(() => (done = true));
    while (!condition(this)) {
      if (done || Date.now() > deadline) {
        throw new Error(
          `${done ? 'exited' : 'timed out'} waiting for ${what}\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** What a test of the command line on the kernel works in; set before its first test runs. */
export interface CliTestbed {
  topo: PairTopology;
  pinRoot: string;
  dir: string;
}

/**
 * A namespace pair, a bpffs directory and a temporary directory, named after `prefix`, made
 * before the suite's first test and removed, with everything else registered, after its last.
 */
export function cliTestbed(prefix: string): CliTestbed {
  const bed = {} as CliTestbed;
  beforeAll(async () => {
    assertBuilt();
    bed.topo = await createPair({ prefix });
    bed.pinRoot = makeBpffsDir(prefix);
    bed.dir = makeTempDir(prefix);
  });
  afterAll(() => cleanup.dispose());
  return bed;
}
