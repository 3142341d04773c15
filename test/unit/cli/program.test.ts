import { spawnSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import type { CliIo } from '../../../src/cli/io.js';
import { runCli } from '../../../src/cli/program.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
/** The version as npm sees it, read here independently of the code under test. */
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const dir = mkdtempSync(join(tmpdir(), 'rxflow-program-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function fakeIo() {
  const out: string[] = [];
  const err: string[] = [];
  const io: CliIo = {
    out: (s) => void out.push(s),
    err: (s) => void err.push(s),
    env: { RXFLOW_RUN_DIR: join(dir, 'run') },
    signals: new EventEmitter(),
    exit: () => undefined,
  };
  return { io, text: () => ({ out: out.join(''), err: err.join('') }) };
}

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const t = fakeIo();
  const code = await runCli(argv, t.io);
  return { code, ...t.text() };
}

const HINT = '(run with --help for usage)\n';

describe('rxflow --version', () => {
  it.each([['--version'], ['-V']])('%s prints the version of package.json and exits 0', async (flag) => {
    expect(VERSION).toMatch(/^\d+\.\d+\.\d+/);
    expect(await cli(flag)).toEqual({ code: 0, out: `${VERSION}\n`, err: '' });
  });

  it('is listed in the help', async () => {
    const help = await cli('--help');
    expect(help.code).toBe(0);
    expect(help.out).toContain('\n  -V, --version                  print the version of rxflow\n');
  });
});

describe('exit codes: 2 for a wrong command line, 1 for a command that failed', () => {
  it.each([
    [['bogus'], `error: unknown command 'bogus'\n${HINT}`],
    [['--bogus'], `error: unknown option '--bogus'\n${HINT}`],
    [['run'], `error: missing required argument 'file'\n${HINT}`],
    [['run', 'p.yaml', '--bogus'], `error: unknown option '--bogus'\n${HINT}`],
    [['run', 'p.yaml', '--log-level'], `error: option '--log-level <level>' argument missing\n${HINT}`],
    [
      ['run', 'p.yaml', '--log-level', 'loud'],
      `error: option '--log-level <level>' argument 'loud' is invalid. Allowed choices are trace, debug, info, warn, error, fatal, silent.\n${HINT}`,
    ],
    [
      ['demo', '--duration-s', '-1'],
      `error: option '--duration-s <seconds>' argument '-1' is invalid. give a positive number of seconds, e.g. 10 or 0.5\n${HINT}`,
    ],
    [['schema', 'extra'], `error: too many arguments for 'schema'. Expected 0 arguments but got 1.\n${HINT}`],
    [['validate'], "validate: give one or more pipeline files, or --list; see 'rxflow validate --help'\n"],
  ])('rxflow %j exits 2 and says what is wrong', async (argv, err) => {
    expect(await cli(...argv)).toEqual({ code: 2, out: '', err });
  });

  it('rxflow alone or a command group alone prints its usage on stderr and exits 2', async () => {
    for (const [argv, usage] of [
      [[], 'Usage: rxflow [options] [command]\n'],
      [['firewall'], 'Usage: rxflow firewall [options] [command]\n'],
    ] as const) {
      const r = await cli(...argv);
      expect(r.code).toBe(2);
      expect(r.out).toBe('');
      expect(r.err.startsWith(usage)).toBe(true);
    }
  });

  it('rxflow help prints the usage and exits 0', async () => {
    const r = await cli('help');
    expect(r.code).toBe(0);
    expect(r.out.startsWith('Usage: rxflow [options] [command]\n')).toBe(true);
  });

  it('a command that runs and fails exits 1', async () => {
    const missing = join(dir, 'missing.yaml');
    expect(await cli('validate', missing)).toEqual({
      code: 1,
      out: '',
      err: `read ${missing}: no such file; check the path\n`,
    });
    const socket = join(dir, 'none.sock');
    expect(await cli('status', '--socket', socket)).toEqual({
      code: 1,
      out: '',
      err: `status ${socket}: no pipeline serves this socket (ENOENT); is 'rxflow run' running?\n`,
    });
  });
});

describe('dist/src/cli/main.js exits with these codes as a process', () => {
  const main = join(ROOT, 'dist/src/cli/main.js');
  const node = (...args: string[]) =>
    spawnSync(process.execPath, [main, ...args], { cwd: dir, encoding: 'utf8' });

  it('--version, a usage error and a failure', () => {
    expect(node('--version')).toMatchObject({ status: 0, stdout: `${VERSION}\n`, stderr: '' });
    expect(node('run', '--bogus')).toMatchObject({
      status: 2,
      stdout: '',
      stderr: `error: unknown option '--bogus'\n${HINT}`,
    });
    expect(node('status', '--socket', join(dir, 'none.sock'))).toMatchObject({ status: 1, stdout: '' });
  });
});
