import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import {
  cleanup,
  isAlive,
  killSync,
  linkNames,
  netnsNames,
  ownerOf,
  resourceName,
  sweepStale,
  type SweepReport,
} from '../fixtures/cleanup.js';
import type { HeldResources } from '../fixtures/cleanup-child.js';
import { kernelDescribe } from '../fixtures/privilege.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const childJs = path.join(root, 'dist/test/fixtures/cleanup-child.js');
// Only this file uses this prefix, so no other run's start-up sweep can race with these checks.
const PREFIX = 'rxts';

function newestSource(): number {
  const dirs = ['test/fixtures', 'src/devtools'].map((d) => path.join(root, d));
  return Math.max(
    ...dirs.flatMap((d) =>
      fs
        .readdirSync(d)
        .filter((f) => f.endsWith('.ts'))
        .map((f) => fs.statSync(path.join(d, f)).mtimeMs),
    ),
  );
}

/** Compiles the project (tsc emits even when another file has type errors) if the child is stale. */
function ensureChildBuilt(): void {
  const fresh = (): boolean => fs.existsSync(childJs) && fs.statSync(childJs).mtimeMs >= newestSource();
  if (fresh()) {
    return;
  }
  const tsc = spawnSync(path.join(root, 'node_modules/.bin/tsc'), ['-p', path.join(root, 'tsconfig.json')], {
    encoding: 'utf8',
  });
  if (!fresh()) {
    throw new Error(`cleanup child: tsc did not build ${childJs}: ${tsc.stdout}${tsc.stderr}`);
  }
}

interface Child {
  proc: ChildProcess;
  line: Promise<string>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function startChild(mode: 'hold' | 'sweep'): Child {
  const proc = spawn(process.execPath, [childJs, PREFIX, mode], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const lines = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  const line = (async () => {
    const first = await Promise.race([
      lines.next(),
      exit.then(() => ({ done: true as const, value: undefined })),
    ]);
    if (first.done === true) {
      throw new Error(`cleanup child (${mode}) exited before reporting: ${stderr.trim()}`);
    }
    return first.value;
  })();
  return { proc, line, exit };
}

function pgrep(text: string): number[] {
  const r = spawnSync('pgrep', ['-f', text], { encoding: 'utf8' });
  return r.stdout
    .split('\n')
    .filter((l) => l !== '')
    .map(Number);
}

function qdiscs(): string {
  return execFileSync('tc', ['qdisc', 'show'], { encoding: 'utf8' });
}

/** Every trace of a held child that is visible from outside. */
function traces(held: HeldResources) {
  const namespaces = netnsNames();
  const links = linkNames();
  return {
    netns: held.netns.filter((n) => namespaces.includes(n)),
    links: held.links.filter((l) => links.includes(l)),
    clsact: qdiscs().includes(`clsact ffff: dev ${held.qdiscDev} `),
    bpffs: fs.existsSync(held.bpffsDir),
    pinnedMap: fs.existsSync(held.pinnedMap),
    tempDir: fs.existsSync(held.tempDir),
    nats: isAlive(held.natsPid),
    natsByCommandLine: pgrep(held.natsStoreDir).length > 0,
    kafka: isAlive(held.kafkaPid),
  };
}

const everything = (held: HeldResources) => ({
  netns: held.netns,
  links: held.links,
  clsact: true,
  bpffs: true,
  pinnedMap: true,
  tempDir: true,
  nats: true,
  natsByCommandLine: true,
  kafka: true,
});

const nothing = {
  netns: [],
  links: [],
  clsact: false,
  bpffs: false,
  pinnedMap: false,
  tempDir: false,
  nats: false,
  natsByCommandLine: false,
  kafka: false,
};

/** A last resort for this test's own leftovers, should an assertion fail half-way. */
function sweepAfterFailure(children: ChildProcess[]): void {
  for (const c of children) {
    if (c.pid !== undefined) {
      killSync(c.pid, 0);
    }
  }
  sweepStale(PREFIX);
}

kernelDescribe(
  'cleanup registry: nothing is left behind',
  () => {
    const children: ChildProcess[] = [];
    afterAll(() => sweepAfterFailure(children));

    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      it(`undoes namespaces, veths, qdiscs, bpffs pins, servers and temp dirs on ${sig}`, async () => {
        ensureChildBuilt();
        const child = startChild('hold');
        children.push(child.proc);
        const held = JSON.parse(await child.line) as HeldResources;
        expect(traces(held)).toEqual(everything(held));

        child.proc.kill(sig);
        expect(await child.exit).toEqual({ code: null, signal: sig });
        expect(traces(held)).toEqual(nothing);
      });
    }

    it('leaves traces after SIGKILL, which the next start-up sweep removes', async () => {
      ensureChildBuilt();
      const child = startChild('hold');
      children.push(child.proc);
      const held = JSON.parse(await child.line) as HeldResources;
      child.proc.kill('SIGKILL');
      expect(await child.exit).toEqual({ code: null, signal: 'SIGKILL' });
      // The Kafka mock follows its parent (PR_SET_PDEATHSIG); everything else stays behind.
      const deadline = Date.now() + 5000;
      while (isAlive(held.kafkaPid) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(traces(held)).toEqual({ ...everything(held), kafka: false });

      const sweeper = startChild('sweep');
      const report = JSON.parse(await sweeper.line) as SweepReport;
      expect(await sweeper.exit).toEqual({ code: 0, signal: null });
      expect({ ...report, netns: [...report.netns].sort(), tempDirs: [...report.tempDirs].sort() }).toEqual({
        processes: [held.natsPid],
        netns: [...held.netns].sort(),
        links: held.links,
        bpffs: [held.bpffsDir],
        tempDirs: [held.tempDir, path.dirname(held.natsStoreDir)].sort(),
        failures: [],
      });
      expect(traces(held)).toEqual(nothing);
    });
  },
  ['bpftool', 'pgrep', 'nats-server'],
);

describe('cleanup registry: order, scopes and names', () => {
  it('undoes in reverse order, keeps going past a failure and reports it', async () => {
    const done: string[] = [];
    const scope = cleanup.scope();
    scope.register('first', () => done.push('first'));
    scope.register('broken', () => {
      throw new Error('device busy');
    });
    scope.register('third', () => done.push('third'));
    const released = scope.register('released', () => done.push('released'));
    released.release();
    await expect(scope.dispose()).rejects.toMatchObject({
      code: 'ECLEANUP',
      message: 'cleanup: 1 undo action(s) failed (broken); remove those resources by hand',
    });
    expect(done).toEqual(['third', 'first']);
    await scope.dispose();
    expect(done).toEqual(['third', 'first']);
  });

  it('runs a registration at most once and leaves other scopes alone', async () => {
    const done: string[] = [];
    const a = cleanup.scope();
    const b = cleanup.scope();
    const ra = a.register('a', () => done.push('a'));
    b.register('b', () => done.push('b'));
    ra.run();
    ra.run();
    await a.dispose();
    expect(done).toEqual(['a']);
    await b.dispose();
    expect(done).toEqual(['a', 'b']);
  });

  it('names resources <prefix><pid><letters>, within the 15 characters of an interface name', () => {
    const name = resourceName('rxt');
    expect(name).toMatch(new RegExp(`^rxt${process.pid}[a-z]+$`));
    expect(name.length).toBeLessThanOrEqual(15);
    expect(ownerOf(name, 'rxt')).toBe(process.pid);
    expect(ownerOf('rxtx1a', 'rxt')).toBeUndefined();
    expect(() => resourceName('rx-')).toThrow(
      "resource prefix 'rx-': use 2 to 6 lower-case letters, so the owner pid can be parsed back",
    );
  });

  it('sweeps only what belongs to a dead owner', () => {
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    expect(isAlive(dead)).toBe(false);
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rxflow-sweep-'));
    try {
      for (const name of [
        `rxu${dead}a`,
        `rxu${dead}b-x`,
        `rxu${process.pid}a`,
        `rxuv${dead}a`,
        `other${dead}a`,
      ]) {
        fs.mkdirSync(path.join(tmp, name));
      }
      const report = sweepStale('rxu', { tmpRoot: tmp, bpffsRoot: path.join(tmp, 'none') });
      expect(report.tempDirs.sort()).toEqual([
        path.join(tmp, `rxu${dead}a`),
        path.join(tmp, `rxu${dead}b-x`),
      ]);
      expect(fs.readdirSync(tmp).sort()).toEqual(
        [`other${dead}a`, `rxu${process.pid}a`, `rxuv${dead}a`].sort(),
      );
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
