/**
 * Sizes and durations the machine cannot honour, given to the real CLI on this machine: refused by
 * validate and by run, before anything is created, with the estimate of the memory they would lock.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MAIN = join(ROOT, 'dist/src/cli/main.js');
const dir = mkdtempSync(join(tmpdir(), 'rxflow-config-limits-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function rxflow(args: string[]) {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    cwd: dir,
    encoding: 'utf8',
    env: { PATH: process.env.PATH, RXFLOW_RUN_DIR: dir },
    timeout: 20_000,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** Possible CPUs as the kernel counts them for per-CPU maps ("0-1" is 2). */
function possibleCpus(): number {
  return readFileSync('/sys/devices/system/cpu/possible', 'utf8')
    .trim()
    .split(',')
    .reduce((n, part) => {
      const [a, b] = part.split('-').map(Number);
      return n + (b === undefined ? 1 : b - a! + 1);
    }, 0);
}

describe('a flow cache larger than the machine', () => {
  const pinRoot = join(dir, 'bpffs');
  const file = join(dir, 'huge.yaml');
  writeFileSync(
    file,
    `sources:\n  flows:\n    type: ebpf_flows\n    interfaces: [lo]\n    instance: config-oom\n    pin_root: ${pinRoot}\n    cache_max_flows: 268435456\nsinks:\n  out:\n    type: stdout\n    inputs: [flows]\n`,
  );
  const cpus = possibleCpus();
  const estimate = `cache_max_flows 268435456 would lock about ${((2 * 268435456 * (128 * cpus + 60)) / 1e9).toFixed(1)} GB (2 flow maps x 268435456 entries x (128 bytes x ${cpus} possible cpus + 60 bytes of key)); with ringbuf_size_bytes 16.8 MB`;
  const available =
    / in all, but the machine has \d+\.\d GB available and a pipeline may lock at most half of it; lower it\n$/;

  it('is refused by validate with the estimate', () => {
    const r = rxflow(['validate', file]);
    expect(r).toMatchObject({ status: 1, stdout: '' });
    expect(r.stderr.startsWith(`${file}:7:22: sources.flows.cache_max_flows: ${estimate}: `)).toBe(true);
    expect(r.stderr).toMatch(available);
  });

  it('is refused by run before anything is created', () => {
    const r = rxflow(['run', file, '--no-status-socket']);
    expect(r.signal).toBeNull();
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(estimate);
    expect(existsSync(pinRoot)).toBe(false);
  });
});

describe('a firewall session map larger than the machine', () => {
  it('is refused by firewall load before anything is loaded, with the estimate', () => {
    const pinRoot = join(dir, 'fw-bpffs');
    const n = 4294967295;
    const r = rxflow([
      'firewall',
      'load',
      '--ingress',
      'lo',
      '--pin-root',
      pinRoot,
      '--max-sessions',
      String(n),
    ]);
    expect(r.status).toBe(2);
    const estimate = `${n} sessions would lock about ${((n * 180) / 1e9).toFixed(1)} GB (${n} entries x (136 bytes of session + 44 bytes of key))`;
    expect(
      r.stderr.startsWith(`error: option '--max-sessions <n>' argument '${n}' is invalid. ${estimate}, `),
    ).toBe(true);
    expect(r.stderr).toMatch(
      /, but the machine has \d+\.\d GB available and a firewall may lock at most half of it; lower it\n\(run with --help for usage\)\n$/,
    );
    expect(existsSync(pinRoot)).toBe(false);
  });

  it('is refused past the most entries a map can have', () => {
    const r = rxflow(['firewall', 'load', '--ingress', 'lo', '--max-sessions', '4294967296']);
    expect([r.status, r.stderr]).toEqual([
      2,
      "error: option '--max-sessions <n>' argument '4294967296' is invalid. give at most 4294967295\n(run with --help for usage)\n",
    ]);
  });
});

describe('a duration longer than a timer holds', () => {
  it('is refused by validate instead of firing every millisecond', () => {
    const file = join(dir, 'long.yaml');
    writeFileSync(
      file,
      'sources:\n  flows:\n    type: ebpf_flows\n    interfaces: [lo]\n    eviction_interval_ms: 100000h\nsinks:\n  out:\n    type: stdout\n    inputs: [flows]\n',
    );
    expect(rxflow(['validate', file])).toMatchObject({
      status: 1,
      stderr: `${file}:5:27: sources.flows.eviction_interval_ms: must be at most 2147483647 ms (about 24.8 days), the longest a timer can wait; got 360000000000 ms\n`,
    });
  });

  it('is refused on the command line too', () => {
    const r = rxflow(['run', 'x.yaml', '--ledger-log-interval', '100000h']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(
      "option '--ledger-log-interval <duration>' argument '100000h' is invalid. at most 2147483647 ms (about 24.8 days), the longest a timer can wait",
    );
  });
});
