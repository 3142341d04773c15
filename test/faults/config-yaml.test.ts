/**
 * Pipeline files a hostile or careless user can give `rxflow validate` and `rxflow run`: an alias
 * bomb, a device, a fifo with no writer, a binary file. Each gets a clear error, quickly, in
 * bounded memory, and nothing of the file's bytes reaches the terminal raw.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MAIN = join(ROOT, 'dist/src/cli/main.js');
const LOAD = join(ROOT, 'dist/src/pipeline/load.js');
const dir = mkdtempSync(join(tmpdir(), 'rxflow-config-yaml-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, text: string | Buffer): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

/** `rxflow validate <file>`, killed after 10 s (a read that blocks fails the test, not the suite). */
function validate(file: string) {
  const r = spawnSync(process.execPath, [MAIN, 'validate', file], {
    cwd: dir,
    encoding: 'latin1',
    env: { PATH: process.env.PATH },
    timeout: 10_000,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** Raw control characters (a newline ends a line and is fine). */
const RAW_CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;

/** Nine levels of ten aliases each: 10^9 strings once expanded, from under 1 kB of YAML. */
function aliasBomb(): string {
  const names = 'abcdefghi';
  let text = `a: &a [${Array(10).fill('"lol"').join(', ')}]\n`;
  for (let i = 1; i < names.length; i++) {
    text += `${names[i]}: &${names[i]} [${Array(10)
      .fill(`*${names[i - 1]}`)
      .join(', ')}]\n`;
  }
  return text;
}

describe('hostile pipeline files', () => {
  it('stops an alias bomb within 1 s and 100 MB, with the alias position', () => {
    const file = write('bomb.yaml', aliasBomb());
    const warm = write(
      'warm.yaml',
      'sources:\n  f:\n    type: file_replay\n    paths: [x]\nsinks:\n  o:\n    type: stdout\n    inputs: [f]\n',
    );
    // In a child of its own, so its peak RSS is the loader's and a runaway expansion is killed.
    // A first load of a small file compiles the schemas, so what is measured is the bomb's cost.
    const script = `
      const { loadPipeline } = await import(${JSON.stringify(LOAD)});
      await loadPipeline(${JSON.stringify(warm)}, { env: {} });
      const rssBefore = process.memoryUsage().rss;
      const started = performance.now();
      let error;
      try { await loadPipeline(${JSON.stringify(file)}, { env: {} }); } catch (err) { error = err; }
      const ms = performance.now() - started;
      const grownKb = process.resourceUsage().maxRSS - rssBefore / 1024;
      console.log(JSON.stringify({ ms, grownKb, name: error?.name, message: error?.message }));
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    const result = JSON.parse(out) as { ms: number; grownKb: number; name: string; message: string };
    console.log(
      `alias bomb: ${result.ms.toFixed(1)} ms, peak rss grew ${Math.round(result.grownKb / 1024)} MB`,
    );
    expect(result.name).toBe('PipelineConfigError');
    expect(result.message).toBe(
      `${file}:4:36: d[7]: yaml: aliases expand to more than 10000 values (aliases of aliases multiply); write the values out, or use fewer aliases`,
    );
    expect(result.ms).toBeLessThan(1000);
    expect(result.grownKb).toBeLessThan(100 * 1024);
  });

  it('refuses /dev/zero without reading it', () => {
    const r = validate('/dev/zero');
    expect(r).toMatchObject({ status: 1, stdout: '' });
    expect(r.stderr).toBe(
      'read /dev/zero: a character device, not a regular file; give the path of a pipeline YAML file\n',
    );
  });

  it('refuses a fifo with no writer at once instead of waiting for one', () => {
    const fifo = join(dir, 'pipe.yaml');
    execFileSync('mkfifo', [fifo]);
    const r = validate(fifo);
    expect(r.signal).toBeNull();
    expect(r).toMatchObject({ status: 1, stdout: '' });
    expect(r.stderr).toBe(
      `read ${fifo}: a fifo, not a regular file; give the path of a pipeline YAML file\n`,
    );
  });

  it('refuses a fifo as a firewall policy too, before touching the kernel', () => {
    const fifo = join(dir, 'policy-pipe.yaml');
    execFileSync('mkfifo', [fifo]);
    const r = spawnSync(
      process.execPath,
      [
        MAIN,
        'firewall',
        'load',
        '--ingress',
        'lo',
        '--pin-root',
        dir,
        '--instance',
        'config-fifo',
        '--policy',
        fifo,
      ],
      { cwd: dir, encoding: 'utf8', env: { PATH: process.env.PATH }, timeout: 10_000 },
    );
    expect(r.signal).toBeNull();
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(
      `rxflow: read policy ${fifo}: a fifo, not a regular file; give the path of a policy YAML file\n`,
    );
  });

  it('refuses a file over 1 MiB', () => {
    const file = write('big.yaml', `# ${'x'.repeat(1024 * 1024)}\n`);
    const r = validate(file);
    expect(r).toMatchObject({ status: 1, stdout: '' });
    expect(r.stderr).toBe(
      `read ${file}: 1048579 bytes, more than the 1048576 bytes (1 MiB) a pipeline file may have; check the path\n`,
    );
  });

  it('refuses a binary file with NUL bytes without echoing it', () => {
    const file = write(
      'binary.yaml',
      Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x00, 0x1b, 0x5b, 0x32, 0x4a]),
    );
    const r = validate(file);
    expect(r).toMatchObject({ status: 1, stdout: '' });
    expect(r.stderr).toBe(
      `read ${file}: not a text file (it has NUL bytes); give the path of a pipeline YAML file\n`,
    );
  });

  it('escapes control characters of the file in every message', () => {
    // Terminal escapes (clear screen, set title, bell) in a key, a value and a syntax error.
    const file = write(
      'escapes.yaml',
      'sources:\n  "f\x1b[2J":\n    type: "ebpf\x1b]0;owned\x07"\n    interfaces: [eth0]\n  g:\n    type: \x9b31m\n',
    );
    const r = validate(file);
    expect(r.status).toBe(1);
    expect(r.stderr).not.toMatch(RAW_CONTROL);
    expect(r.stderr).toContain("bad id 'f\\x1b[2J'");
    expect(r.stderr).toContain("unknown source type 'ebpf\\x1b]0;owned\\x07'");
    const syntax = validate(write('syntax.yaml', 'sources: [\x1b[31m\n  {'));
    expect(syntax.status).toBe(1);
    expect(syntax.stderr).not.toMatch(RAW_CONTROL);
  });
});
