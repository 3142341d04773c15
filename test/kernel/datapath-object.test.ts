import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { DatapathError } from '../../src/datapath/errors.js';
import { setLibbpfLogger } from '../../src/datapath/libbpf.js';
import { ObjectSpec, type Collection } from '../../src/datapath/object.js';
import {
  bpffsDir,
  buildChild,
  icmpEchoFrame,
  kernelGate,
  testObject,
  thrown,
  u32,
  u64,
} from './datapath-helpers.js';

const gate = kernelGate();

describe.skipIf(gate.skip)(gate.title('datapath objects'), () => {
  let obj: string;
  let reject: string;
  const dirs: string[] = [];

  beforeAll(() => {
    obj = testObject('test_datapath');
    reject = testObject('test_reject');
  });

  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('lists programs and maps, loads, and closes idempotently', () => {
    const spec = ObjectSpec.open(obj);
    expect(spec.path).toBe(obj);
    expect(spec.programNames()).toEqual(['count_echo', 'fill_ring']);
    expect(spec.mapNames()).toEqual(['echo_counts', 'rb_config', 'events', 'test_flows', 'test_hash']);
    const coll = spec.load();
    expect(coll.program('count_echo').fd).toBeGreaterThan(0);
    const m = coll.map('test_hash');
    expect([m.type, m.keySize, m.valueSize, m.maxEntries, m.perCpu]).toEqual([1, 4, 8, 16, false]);
    coll.close();
    coll.close();
    spec.close();
    expect(thrown(() => m.lookup(u32(1))).code).toBe('ECLOSED');
    expect(thrown(() => spec.load()).message).toBe(
      `load ${obj}: the object spec was loaded or closed; open it again`,
    );
  });

  it('names the candidates when a program or map is missing', () => {
    const coll = ObjectSpec.open(obj).load();
    try {
      const e = thrown(() => coll.program('nope'));
      expect(e.code).toBe('ENOTFOUND');
      expect(e.message).toBe(
        `${obj}: no program named 'nope'; the object has programs: count_echo, fill_ring`,
      );
      expect(thrown(() => coll.map('flows')).message).toBe(
        `${obj}: no map named 'flows'; the object has maps: echo_counts, rb_config, events, test_flows, test_hash`,
      );
    } finally {
      coll.close();
    }
  });

  it('applies setMaxEntries before load', () => {
    const coll = ObjectSpec.open(obj).setMaxEntries('test_hash', 100).load();
    try {
      expect(coll.map('test_hash').maxEntries).toBe(100);
    } finally {
      coll.close();
    }
  });

  it('reports a missing object with the command that builds it', () => {
    const e = thrown(() => ObjectSpec.open('bpf/nothing_here.o'));
    expect(e.code).toBe('EOBJMISSING');
    expect(e.message).toBe(
      "open bpf object bpf/nothing_here.o: no such file; run 'bash scripts/setup.sh' to build it",
    );
  });

  it('reports a file that is not a bpf object', () => {
    const path = `/tmp/rxdp-garbage-${process.pid}.o`;
    writeFileSync(path, 'not an elf file\n');
    try {
      const e = thrown(() => ObjectSpec.open(path));
      expect(e.code).toBe('EOBJOPEN');
      expect(e.message).toBe(
        `open bpf object ${path}: not a bpf object libbpf can read: invalid bpf object format (LIBBPF_ERRNO__FORMAT); ` +
          "rebuild it with 'bash scripts/setup.sh'",
      );
    } finally {
      rmSync(path, { force: true });
    }
  });

  it('reports a verifier rejection with the program name and the tail of the log', () => {
    const e = thrown(() => ObjectSpec.open(reject).load());
    expect(e.code).toBe('EVERIFIER');
    const [head, ...tail] = e.message.split('\n');
    expect(head).toBe(
      `load ${reject}: the verifier rejected program 'reject_null_deref'; fix the program, the log ends with:`,
    );
    expect(tail.length).toBeGreaterThan(2);
    expect(tail.length).toBeLessThanOrEqual(20);
    expect(tail).toContain("R0 invalid mem access 'map_value_or_null'");
    expect(tail[tail.length - 1]).toMatch(/^processed \d+ insns/);
    expect((e as DatapathError & { program: string }).program).toBe('reject_null_deref');
  });

  it("routes libbpf's own messages to the debug logger, and keeps stderr quiet without one", () => {
    const lines: { level: number; msg: string; libbpfLevel: string }[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(JSON.parse(chunk.toString()) as { level: number; msg: string; libbpfLevel: string });
        done();
      },
    });
    setLibbpfLogger(pino({ level: 'debug' }, sink));
    try {
      expect(thrown(() => ObjectSpec.open(reject).load()).code).toBe('EVERIFIER');
    } finally {
      setLibbpfLogger(undefined);
    }
    expect(lines).toContainEqual(
      expect.objectContaining({
        level: 20,
        libbpfLevel: 'warn',
        msg: "libbpf: prog 'reject_null_deref': BPF program load failed: Permission denied",
      }),
    );

    const child = buildChild();
    try {
      const r = spawnSync(process.execPath, [child.entry, 'load', reject], { encoding: 'utf8' });
      expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, code: 'EVERIFIER' });
      expect(r.stderr).toBe('');
    } finally {
      rmSync(child.dir, { recursive: true, force: true });
    }
  });

  it('pins maps per instance: two pin dirs never collide, a reload reuses the pinned map', () => {
    const a = bpffsDir('pin-a');
    const b = bpffsDir('pin-b');
    dirs.push(a, b);
    const ca = ObjectSpec.open(obj).load({ pinDir: a });
    const cb = ObjectSpec.open(obj).load({ pinDir: b });
    let again: Collection | undefined;
    try {
      expect(readdirSync(`${a}/maps`).sort()).toEqual([
        'echo_counts',
        'events',
        'rb_config',
        'test_flows',
        'test_hash',
      ]);
      ca.map('test_hash').update(u32(7), u64(700));
      cb.map('test_hash').update(u32(7), u64(900));
      expect(ca.map('test_hash').lookup(u32(7))).toEqual(u64(700));
      expect(cb.map('test_hash').lookup(u32(7))).toEqual(u64(900));
      ca.close();
      again = ObjectSpec.open(obj).load({ pinDir: a });
      expect(again.map('test_hash').lookup(u32(7))).toEqual(u64(700));
      expect([...again.map('test_hash').keys()]).toEqual([u32(7)]);
    } finally {
      ca.close();
      cb.close();
      again?.close();
    }
    again.unpin();
    expect(existsSync(a)).toBe(false);
    expect(existsSync(b)).toBe(true);
    cb.unpin();
    expect(existsSync(b)).toBe(false);
  });

  it('refuses a pinned map whose shape changed, saying how to fix it', () => {
    const dir = bpffsDir('pin-shape');
    dirs.push(dir);
    ObjectSpec.open(obj).load({ pinDir: dir }).close();
    const e = thrown(() => ObjectSpec.open(obj).setMaxEntries('test_hash', 32).load({ pinDir: dir }));
    expect(e.code).toBe('EPINMISMATCH');
    expect(e.message).toBe(
      `reuse pinned map test_hash at ${dir}/maps/test_hash: maxEntries 16 pinned, 32 in the object; ` +
        `remove the stale pin with 'rm ${dir}/maps/test_hash' (its entries are lost) or use another instance name`,
    );
  });

  it('refuses a pin dir outside bpffs with the mount command', () => {
    const dir = `/tmp/rxdp-not-bpffs-${process.pid}`;
    const e = thrown(() => ObjectSpec.open(obj).load({ pinDir: dir }));
    expect(e.code).toBe('ENOBPFFS');
    expect(e.message).toBe(
      `pin maps of ${obj} under ${dir}: /tmp is not on a bpf filesystem; ` +
        "mount it with 'mount -t bpf bpf /sys/fs/bpf' and pin under /sys/fs/bpf",
    );
    expect(existsSync(dir)).toBe(false);
  });

  it('runs a program with BPF_PROG_TEST_RUN and counts per cpu', () => {
    const coll = ObjectSpec.open(obj).load();
    try {
      const frame = icmpEchoFrame();
      const r = coll.program('count_echo').testRun(frame, { repeat: 25 });
      expect(r.retval).toBe(0);
      expect(r.dataOut).toEqual(frame);
      const counts = coll.map('echo_counts');
      const v = counts.lookup(u32(0))!;
      expect(v.length).toBe(counts.valueBufferSize);
      expect(counts.sumPerCpuU64(v, 0)).toBe(25);
      expect(counts.sumPerCpuU64(v, 8)).toBe(25 * 98);
    } finally {
      coll.close();
    }
  });

  it('reports a missing privilege as ENOPRIV with the fix', () => {
    const child = buildChild();
    try {
      const r = spawnSync(
        'setpriv',
        [
          // Still uid 0 (so a clone under a 0700 home stays readable), with no capabilities at all.
          '--inh-caps=-all',
          '--bounding-set=-all',
          process.execPath,
          child.entry,
          'load',
          obj,
        ],
        { encoding: 'utf8' },
      );
      expect(JSON.parse(r.stdout)).toEqual({
        ok: false,
        code: 'ENOPRIV',
        message: `load ${obj}: operation not permitted (EPERM); run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON`,
      });
    } finally {
      rmSync(child.dir, { recursive: true, force: true });
    }
  });
});
