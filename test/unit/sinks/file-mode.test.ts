import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { from } from 'rxjs';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ComponentContext } from '../../../src/component.js';
import { Ledger } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { FlowRecord } from '../../../src/records/flow.js';
import fileModule, { type FileSinkConfig } from '../../../src/sinks/file.js';
import { cleanup, makeTempDir } from '../../fixtures/cleanup.js';
import { describeWith } from '../../fixtures/privilege.js';
import { flowRecord } from '../../fixtures/records.js';

afterAll(() => cleanup.dispose());

const records = (n: number): FlowRecord[] =>
  Array.from({ length: n }, (_, i) => flowRecord({ sourceTransportPort: 40000 + i }));
const L = Buffer.byteLength(`${JSON.stringify(records(1)[0])}\n`);

function context(): ComponentContext {
  const ledger = new Ledger();
  return { id: 'f', logger: silentLogger(), ledger, counters: ledger.stage('f', 'file', 'sink') };
}

async function run(config: FileSinkConfig, n = 1): Promise<void> {
  const sink = fileModule.build(config, context());
  await sink.consume(from([records(n)]));
  await sink.close();
}

const modeOf = (p: string): number => fs.statSync(p).mode & 0o7777;
const gidOf = (p: string): number => fs.statSync(p).gid;

/** The gid of a group this process is not in, by `getent`, so giving it a file is a change. */
function otherGroup(): { name: string; gid: number } {
  const gid = Number(execFileSync('getent', ['group', 'nogroup'], { encoding: 'utf8' }).split(':')[2]);
  return { name: 'nogroup', gid };
}

describe('file sink mode', () => {
  // A permissive umask, so nothing but the sink itself keeps the files from being world-readable.
  let umask = 0;
  beforeEach(() => {
    umask = process.umask(0);
  });
  afterEach(() => {
    process.umask(umask);
  });

  it('creates files 0640 by default, rotated ones included', async () => {
    const dir = makeTempDir('rxsink');
    const p = path.join(dir, 'flows.jsonl');
    // One line per file: three files.
    await run({ path: p, max_file_bytes: L, max_files: 3 }, 3);
    expect(fs.readdirSync(dir).sort()).toEqual(['flows.jsonl', 'flows.jsonl.1', 'flows.jsonl.2']);
    for (const f of fs.readdirSync(dir)) expect(modeOf(path.join(dir, f)).toString(8)).toBe('640');
  });

  it('creates files with the configured mode, with or without the leading 0', async () => {
    const dir = makeTempDir('rxsink');
    await run({ path: path.join(dir, 'a'), mode: '0600', max_file_bytes: L, max_files: 2 }, 2);
    await run({ path: path.join(dir, 'b'), mode: '644' });
    expect(modeOf(path.join(dir, 'a')).toString(8)).toBe('600');
    expect(modeOf(path.join(dir, 'a.1')).toString(8)).toBe('600');
    expect(modeOf(path.join(dir, 'b')).toString(8)).toBe('644');
  });

  it('narrows a file that already exists to the mode', async () => {
    const dir = makeTempDir('rxsink');
    const p = path.join(dir, 'flows.jsonl');
    fs.writeFileSync(p, '', { mode: 0o666 });
    expect(modeOf(p).toString(8)).toBe('666');
    await run({ path: p });
    expect(modeOf(p).toString(8)).toBe('640');
  });

  it('takes the mode as a quoted octal string and refuses anything else at validation', () => {
    const registry = new ComponentRegistry([fileModule]);
    expect(registry.validate(fileModule, { path: '/x' })).toMatchObject({
      ok: true,
      config: { mode: '0640' },
    });
    for (const mode of ['0600', '600', '0644', '0660']) {
      expect(registry.validate(fileModule, { path: '/x', mode }).ok).toBe(true);
    }
    // 640 is what YAML makes of an unquoted 0640; 0o640 as a number would be 416.
    for (const mode of [640, 416, '0648', '06400', '1777', 'rw-r-----', '']) {
      expect(registry.validate(fileModule, { path: '/x', mode }).ok, String(mode)).toBe(false);
    }
  });
});

describeWith({ root: true, commands: ['getent'] }, 'file sink group', () => {
  it('gives its files the group, by name or by gid, rotated ones included', async () => {
    const dir = makeTempDir('rxsink');
    const { name, gid } = otherGroup();
    expect(gid).not.toBe(process.getgid?.());
    await run({ path: path.join(dir, 'byname'), group: name, max_file_bytes: L, max_files: 2 }, 2);
    await run({ path: path.join(dir, 'bygid'), group: gid, mode: '0660' });
    for (const f of ['byname', 'byname.1', 'bygid']) expect(gidOf(path.join(dir, f)), f).toBe(gid);
    expect(modeOf(path.join(dir, 'byname')).toString(8)).toBe('640');
    expect(modeOf(path.join(dir, 'bygid')).toString(8)).toBe('660');
  });

  it('refuses to start with a group that does not exist, saying what to do', async () => {
    const dir = makeTempDir('rxsink');
    const p = path.join(dir, 'f');
    const sink = fileModule.build({ path: p, group: 'rxflow-no-such-group' }, context());
    await expect(sink.consume(from([]))).rejects.toThrow(
      `file sink ${p}: group rxflow-no-such-group does not exist; name an existing group or give its gid`,
    );
    await sink.close();
    expect(fs.existsSync(p)).toBe(false);
  });

  it('validates group as a name or a gid', () => {
    const registry = new ComponentRegistry([fileModule]);
    for (const group of ['adm', 'nogroup', 0, 65534]) {
      expect(registry.validate(fileModule, { path: '/x', group }).ok, String(group)).toBe(true);
    }
    for (const group of [-1, '', 1.5, 4_294_967_295, true]) {
      expect(registry.validate(fileModule, { path: '/x', group }).ok, String(group)).toBe(false);
    }
  });
});
