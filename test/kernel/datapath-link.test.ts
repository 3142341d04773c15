import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DatapathError } from '../../src/datapath/errors.js';
import { attachTc } from '../../src/datapath/link.js';
import { ObjectSpec, type Collection } from '../../src/datapath/object.js';
import {
  bpffsDir,
  buildChild,
  createVethNs,
  destroyVethNs,
  kernelGate,
  pingFromNs,
  pingToNs,
  tcFilters,
  tcxLinksRunning,
  testObject,
  type VethNs,
} from './datapath-helpers.js';

const gate = kernelGate();
const PING_FRAME_BYTES = 98;

interface FilterRow {
  options?: { prog?: { id: number } };
}

/** Program ids of the bpf filters on a clsact hook (tc also prints a header row per priority). */
function filterProgs(ifname: string, direction: 'ingress' | 'egress'): number[] {
  return (tcFilters(ifname, direction) as FilterRow[]).flatMap((f) =>
    f.options?.prog ? [f.options.prog.id] : [],
  );
}

function echoCounts(coll: Collection): { packets: number; bytes: number } {
  const m = coll.map('echo_counts');
  const v = m.lookup(new Uint8Array(4))!;
  return { packets: m.sumPerCpuU64(v, 0), bytes: m.sumPerCpuU64(v, 8) };
}

function resetCounts(coll: Collection): void {
  const m = coll.map('echo_counts');
  m.update(new Uint8Array(4), new Uint8Array(m.valueBufferSize));
}

/** Starts the attach child and resolves with its report once it has attached. */
async function attachInChild(
  entry: string,
  args: string[],
): Promise<{ child: ChildProcess; report: { ok: boolean; programId: number; mode: string } }> {
  const child = spawn(process.execPath, [entry, 'attach', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8');
  const line = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (chunk: string) => {
      out += chunk;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    child.on('exit', (code) =>
      reject(new Error(`attach child exited with ${code} before reporting: ${out}`)),
    );
  });
  const report = JSON.parse(await line) as { ok: boolean; programId: number; mode: string };
  expect(report).toMatchObject({ ok: true });
  return { child, report };
}

async function kill9(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

describe.skipIf(gate.skip)(gate.title('datapath tc links'), () => {
  let v: VethNs;
  let obj: string;
  let coll: Collection;
  let child: { entry: string; dir: string } | undefined;
  const dirs: string[] = [];

  beforeAll(() => {
    obj = testObject('test_datapath');
    v = createVethNs('L', 41);
    coll = ObjectSpec.open(obj).load();
  });

  afterAll(() => {
    coll?.close();
    if (v) destroyVethNs(v);
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    if (child) rmSync(child.dir, { recursive: true, force: true });
  });

  beforeEach(() => resetCounts(coll));

  it('reports an unknown interface with the command to list them', () => {
    let err: unknown;
    try {
      attachTc(coll.program('count_echo'), 'rxdpnope0', 'ingress');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DatapathError);
    expect((err as DatapathError).code).toBe('ENOIFACE');
    expect((err as DatapathError).message).toBe(
      "attach tc ingress rxdpnope0: no such interface; check the name with 'ip link'",
    );
  });

  it('refuses a link pin path outside bpffs before attaching anything', () => {
    let err: unknown;
    try {
      attachTc(coll.program('count_echo'), v.hostIf, 'ingress', { pinPath: '/tmp/rxdp-links/tc' });
    } catch (e) {
      err = e;
    }
    expect((err as DatapathError).code).toBe('ENOBPFFS');
    expect((err as DatapathError).message).toBe(
      `attach tc ingress ${v.hostIf}: pin link at /tmp/rxdp-links/tc: /tmp is not on a bpf filesystem; ` +
        "mount it with 'mount -t bpf bpf /sys/fs/bpf' and pin under /sys/fs/bpf",
    );
    pingFromNs(v, 2);
    expect(echoCounts(coll).packets).toBe(0);
  });

  it('tcx ingress counts exactly the pings, and close leaves no link', () => {
    const link = attachTc(coll.program('count_echo'), v.hostIf, 'ingress');
    expect([link.mode, link.ifname, link.direction]).toEqual(['tcx', v.hostIf, 'ingress']);
    expect(tcxLinksRunning(link.programId)).toHaveLength(1);
    pingFromNs(v, 5);
    expect(echoCounts(coll)).toEqual({ packets: 5, bytes: 5 * PING_FRAME_BYTES });
    link.close();
    link.close();
    expect(tcxLinksRunning(link.programId)).toEqual([]);
    expect(tcFilters(v.hostIf, 'ingress')).toEqual([]);
    pingFromNs(v, 2);
    expect(echoCounts(coll).packets).toBe(5);
  });

  it('tcx egress counts the pings sent out of the interface', () => {
    const link = attachTc(coll.program('count_echo'), v.hostIf, 'egress', { mode: 'tcx' });
    try {
      pingToNs(v, 3);
      expect(echoCounts(coll)).toEqual({ packets: 3, bytes: 3 * PING_FRAME_BYTES });
    } finally {
      link.close();
    }
    expect(tcxLinksRunning(link.programId)).toEqual([]);
  });

  it('clsact ingress counts exactly the pings, and close leaves no filter', () => {
    const link = attachTc(coll.program('count_echo'), v.hostIf, 'ingress', { mode: 'clsact' });
    expect(link.mode).toBe('clsact');
    expect(filterProgs(v.hostIf, 'ingress')).toEqual([link.programId]);
    expect(tcxLinksRunning(link.programId)).toEqual([]);
    pingFromNs(v, 4);
    expect(echoCounts(coll)).toEqual({ packets: 4, bytes: 4 * PING_FRAME_BYTES });
    link.close();
    expect(tcFilters(v.hostIf, 'ingress')).toEqual([]);
    pingFromNs(v, 2);
    expect(echoCounts(coll).packets).toBe(4);
  });

  it('clsact attach replaces the filter at the same handle and priority', () => {
    const a = attachTc(coll.program('count_echo'), v.hostIf, 'ingress', { mode: 'clsact' });
    const b = attachTc(coll.program('count_echo'), v.hostIf, 'ingress', { mode: 'clsact' });
    expect(filterProgs(v.hostIf, 'ingress')).toEqual([b.programId]);
    pingFromNs(v, 3);
    expect(echoCounts(coll).packets).toBe(3);
    b.close();
    a.close();
    expect(tcFilters(v.hostIf, 'ingress')).toEqual([]);
  });

  it('tcx: after SIGKILL of a pinned attacher, a fresh process replaces its link instead of adding one', async () => {
    child ??= buildChild();
    const dir = bpffsDir('link-kill');
    dirs.push(dir);
    const pinPath = `${dir}/links/tc-${v.hostIf}-ingress`;
    const { child: proc, report } = await attachInChild(child.entry, [
      obj,
      dir,
      v.hostIf,
      'ingress',
      'tcx',
      pinPath,
    ]);
    await kill9(proc);
    expect(report.mode).toBe('tcx');
    // The pin keeps the dead process's link attached, counting into its pinned map.
    const before = tcxLinksRunning(report.programId);
    expect(before).toHaveLength(1);
    expect(existsSync(pinPath)).toBe(true);
    const again = ObjectSpec.open(obj).load({ pinDir: dir });
    try {
      pingFromNs(v, 2);
      expect(echoCounts(again).packets).toBe(2);

      const link = attachTc(again.program('count_echo'), v.hostIf, 'ingress', { pinPath });
      expect(link.mode).toBe('tcx');
      // Same link, new program: updated in place, so the hook never ran without a program.
      expect(tcxLinksRunning(report.programId, link.programId)).toEqual([
        { ...before[0], prog_id: link.programId },
      ]);
      // Attached twice, both programs would count into the shared pinned map.
      pingFromNs(v, 3);
      expect(echoCounts(again)).toEqual({ packets: 5, bytes: 5 * PING_FRAME_BYTES });

      link.close();
      expect(tcxLinksRunning(report.programId, link.programId)).toEqual([]);
      expect(existsSync(pinPath)).toBe(false);
      expect(tcFilters(v.hostIf, 'ingress')).toEqual([]);
    } finally {
      again.close();
      again.unpin();
    }
  });

  it('clsact: after SIGKILL, a fresh process replaces the filter instead of adding one', async () => {
    child ??= buildChild();
    const dir = bpffsDir('link-kill-clsact');
    dirs.push(dir);
    const { child: proc, report } = await attachInChild(child.entry, [
      obj,
      dir,
      v.hostIf,
      'ingress',
      'clsact',
      '-',
    ]);
    await kill9(proc);
    expect(filterProgs(v.hostIf, 'ingress')).toEqual([report.programId]);
    const again = ObjectSpec.open(obj).load({ pinDir: dir });
    try {
      const link = attachTc(again.program('count_echo'), v.hostIf, 'ingress', { mode: 'clsact' });
      expect(filterProgs(v.hostIf, 'ingress')).toEqual([link.programId]);
      pingFromNs(v, 3);
      expect(echoCounts(again).packets).toBe(3);
      link.close();
      expect(tcFilters(v.hostIf, 'ingress')).toEqual([]);
    } finally {
      again.close();
      again.unpin();
    }
  });
});
