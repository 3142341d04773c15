/**
 * `ebpf_flows` with `netns: all` and a namespace that has no name when the source finds it (a
 * process's, as a container runtime makes them) and is named later with `ip netns attach`: its
 * flows carry the name from then on, not `net:[<inode>]`; the generator's packet count is exact.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createNetns, type Netns } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp } from '../fixtures/traffic.js';
import { until } from '../unit/pipeline/components.js';
import { startEbpfPipeline } from './ebpf-pipeline.js';

const pid = process.pid;
const PORT = 9;
const INNER = `rxnr${pid}a`;
const OUTER = `rxnr${pid}b`;
const NAME = `rxnr-later-${pid}`;

interface Line {
  msg: string;
  ifname?: string;
  netns?: string;
  previous?: string;
}

kernelDescribe('a namespace named after the source found it', () => {
  let peer: Netns;
  let holder: ChildProcess;
  let pinRoot: string;

  beforeAll(async () => {
    peer = await createNetns({ prefix: 'rxnr' });
    pinRoot = makeBpffsDir('nsren');
    // An anonymous namespace, held by a process, as a container runtime leaves it.
    holder = spawn('unshare', ['--net', 'sleep', '600'], { stdio: 'ignore' });
    cleanup.register(`namespace holder ${holder.pid}`, () => holder.kill('SIGKILL'));
    cleanup.register(`ip netns ${NAME}`, () => {
      try {
        execFileSync('ip', ['netns', 'del', NAME], { stdio: 'ignore' });
      } catch {
        // never attached
      }
    });
    const nsOf = (p: number): string => execFileSync('readlink', [`/proc/${p}/ns/net`], { encoding: 'utf8' });
    await until(() => nsOf(holder.pid!) !== nsOf(process.pid), 'unshare entered its namespace', 5_000);
    execFileSync('ip', ['link', 'add', INNER, 'type', 'veth', 'peer', 'name', OUTER, 'netns', peer.name]);
    cleanup.register(`veth ${INNER}`, () => {
      try {
        execFileSync('ip', ['-n', peer.name, 'link', 'del', OUTER], { stdio: 'ignore' });
      } catch {
        // gone with a namespace
      }
    });
    execFileSync('ip', ['link', 'set', INNER, 'netns', String(holder.pid)]);
    const inHolder = (args: string[]): void => {
      execFileSync('nsenter', ['-t', String(holder.pid), '-n', 'ip', ...args]);
    };
    inHolder(['link', 'set', 'lo', 'up']);
    inHolder(['addr', 'add', '198.19.250.1/30', 'dev', INNER]);
    inHolder(['link', 'set', INNER, 'up']);
    execFileSync('ip', ['-n', peer.name, 'addr', 'add', '198.19.250.2/30', 'dev', OUTER]);
    execFileSync('ip', ['-n', peer.name, 'link', 'set', OUTER, 'up']);
  });

  afterAll(() => cleanup.dispose());

  it('carries the name from `ip netns attach` on, and logs the rename', async () => {
    const { pipeline, collected, logs } = await startEbpfPipeline({
      name: 'nsrename',
      iface: `/^${INNER}$/`,
      netns: 'all',
      pinRoot,
      options: '    netns_rescan_interval_ms: 100',
      directions: ['ingress'],
    });
    const lines = logs as unknown as Line[];
    let stopped = false;
    try {
      await until(
        () => lines.some((l) => l.msg === 'interface attached' && l.ifname === INNER),
        `${INNER} attached`,
        10_000,
      );
      const anonymous = lines.find((l) => l.msg === 'interface attached' && l.ifname === INNER)!.netns!;
      expect(anonymous).toMatch(/^net:\[\d+\]$/);
      execFileSync('ip', ['netns', 'attach', NAME, String(holder.pid)]);
      await until(
        () => lines.some((l) => l.msg === 'network namespace renamed' && l.netns === NAME),
        'rename seen',
        10_000,
      );
      expect(lines.find((l) => l.msg === 'network namespace renamed')!.previous).toBe(anonymous);
      const sent = await sendUdp({ from: peer, to: '198.19.250.1', port: PORT, count: 9, payloadBytes: 32 });
      expect(sent.sent).toBe(9);
      await pipeline.stop();
      stopped = true;
      const udp = collected().filter(
        (r) => r.protocolIdentifier === 17 && r.destinationTransportPort === PORT,
      );
      expect(udp.map((r) => [r.networkNamespace, r.packetDeltaCount])).toEqual([[NAME, 9]]);
    } finally {
      if (!stopped) await pipeline.stop();
    }
  });
});
