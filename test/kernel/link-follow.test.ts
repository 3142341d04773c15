/**
 * ebpf_flows follows interfaces by pattern: a pipeline with `interfaces: ['/^rxv<pid>x/']` runs
 * while 100 veth pairs are created, used and deleted one after another. Each link's traffic,
 * sent by a generator in another namespace right after the source logs the link attached, is
 * found exactly in the records (packets the generator sent = packets in the records of that
 * ifindex); each deleted link leaves no TCX link (bpftool) and no pin. Under `netns: all`, a
 * namespace created while the pipeline runs is followed, and its flows carry its name and are
 * named in it by decorate.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import decorateModule from '../../src/operators/decorate.js';
import type { Pipeline } from '../../src/pipeline/build.js';
import { ComponentRegistry } from '../../src/pipeline/component-registry.js';
import { parsePipeline } from '../../src/pipeline/load.js';
import type { FlowRecord } from '../../src/records/flow.js';
import ebpfFlowsModule from '../../src/sources/ebpf_flows.js';
import { cleanup, deleteLinkSync, makeBpffsDir } from '../fixtures/cleanup.js';
import { createNetns, type Netns } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp } from '../fixtures/traffic.js';
import { collectModule, until, type CollectStore } from '../unit/pipeline/components.js';
import { startLogged } from './ebpf-pipeline.js';

const LINKS = 100;
const PACKETS = 7;
const PORT = 9;
const pid = process.pid;

interface LogLine {
  msg: string;
  ifname?: string;
  ifindex?: number;
  netns?: string;
}

interface TcxLinkInfo {
  id: number;
  prog_id?: number;
}

function bpftool<T>(args: string[]): T {
  return JSON.parse(execFileSync('bpftool', ['-j', ...args], { encoding: 'utf8' })) as T;
}

/** Every BPF link in the kernel that runs one of `programs`. */
function ourLinks(programs: Set<number>): TcxLinkInfo[] {
  return bpftool<TcxLinkInfo[]>(['link', 'show']).filter((l) => programs.has(l.prog_id ?? 0));
}

/** ip -batch: one process for several commands; `netns` runs them there. */
function ipBatch(lines: string[], netns?: string): void {
  execFileSync('ip', [...(netns ? ['-n', netns] : []), '-batch', '-'], {
    input: `${lines.join('\n')}\n`,
    stdio: ['pipe', 'ignore', 'pipe'],
  });
}

/** Starts a pipeline from YAML; its log lines land in `logs`. */
function startPipeline(yaml: string, store: CollectStore, logs: LogLine[]): Promise<Pipeline> {
  const registry = new ComponentRegistry([ebpfFlowsModule, decorateModule, collectModule(store)]);
  return startLogged(parsePipeline(yaml, 'link-follow.yaml', { registry }), logs);
}

/** Packets of UDP datagrams to PORT received (ingress) on `ifindex`, summed over the records. */
function udpPackets(records: FlowRecord[], ifindex: number, netns?: string): number {
  let n = 0;
  for (const r of records) {
    if (
      r.ingressInterface === ifindex &&
      r.networkNamespace === netns &&
      r.protocolIdentifier === 17 &&
      r.destinationTransportPort === PORT &&
      r.flowDirection === 0
    )
      n += r.packetDeltaCount;
  }
  return n;
}

const mac = (a: number, b: number, c: number): string =>
  `02:${a.toString(16).padStart(2, '0')}:00:00:${b.toString(16).padStart(2, '0')}:${c.toString(16).padStart(2, '0')}`;

kernelDescribe(
  'ebpf_flows follows interfaces by pattern',
  () => {
    let peer: Netns;
    let pinRoot: string;

    beforeAll(async () => {
      peer = await createNetns({ prefix: 'rxif' });
      pinRoot = makeBpffsDir('ifw');
    });
    afterAll(() => cleanup.dispose());

    it('100 veth pairs created, used and deleted while it runs: exact counts per link, nothing left behind', async () => {
      const store: CollectStore = new Map();
      const logs: LogLine[] = [];
      const yaml = `
sources:
  flows:
    type: ebpf_flows
    interfaces: ['/^rxv${pid}x/']
    exclude_interfaces: ['rxv${pid}x99']
    instance: ifwatch
    pin_root: ${pinRoot}
transforms:
  names:
    type: decorate
    inputs: [flows]
sinks:
  out:
    type: collect
    inputs: [names]
`;
      const pipeline = await startPipeline(yaml, store, logs);
      const linksDir = join(pinRoot, 'rxflow-ifwatch', 'links');
      const ifindexes: number[] = [];
      const programIds = new Set<number>();
      let stopped = false;
      try {
        for (let i = 0; i < LINKS; i++) {
          const host = `rxv${pid}x${i}`;
          const far = `rxw${pid}y${i}`;
          const net = `198.19.${i}`;
          const undo = cleanup.register(`link ${host}`, () => deleteLinkSync(host));
          ipBatch([
            `link add ${host} address ${mac(1, i, 1)} type veth peer name ${far} address ${mac(1, i, 2)} netns ${peer.name}`,
            `addr add ${net}.1/30 dev ${host}`,
            `link set ${host} up`,
          ]);
          const ifindex = Number(
            execFileSync('cat', [`/sys/class/net/${host}/ifindex`], { encoding: 'utf8' }),
          );
          ifindexes.push(ifindex);
          if (i === 99) {
            // Excluded: never attached, so the traffic below must not show up.
            await new Promise((r) => setTimeout(r, 50));
            expect(logs.filter((l) => l.ifname === host)).toEqual([]);
          } else {
            await until(
              () => logs.some((l) => l.msg === 'interface attached' && l.ifindex === ifindex),
              `${host} attached`,
              5000,
            );
          }
          if (i === 0) {
            // The programs of this source, from the links it pinned for this interface.
            for (const pin of readdirSync(linksDir)) {
              programIds.add(bpftool<TcxLinkInfo>(['link', 'show', 'pinned', join(linksDir, pin)]).prog_id!);
            }
            expect(readdirSync(linksDir).sort()).toEqual([
              `tc-if${ifindex}-egress`,
              `tc-if${ifindex}-ingress`,
            ]);
            expect(ourLinks(programIds)).toHaveLength(2);
          }
          ipBatch(
            [
              `addr add ${net}.2/30 dev ${far}`,
              `link set ${far} up`,
              `neigh replace ${net}.1 lladdr ${mac(1, i, 1)} dev ${far} nud permanent`,
            ],
            peer.name,
          );
          const sent = await sendUdp({
            from: peer,
            to: `${net}.1`,
            port: PORT,
            count: PACKETS,
            payloadBytes: 64,
          });
          expect(sent.sent).toBe(PACKETS);
          deleteLinkSync(host);
          undo.release();
          if (i !== 99) {
            await until(
              () => logs.some((l) => l.msg === 'interface detached' && l.ifindex === ifindex),
              `${host} detached`,
              5000,
            );
            expect(readdirSync(linksDir).filter((n) => n.startsWith(`tc-if${ifindex}-`))).toEqual([]);
          }
        }
        // Every link is gone: none of the programs' TCX links is left, and no pin.
        expect(ourLinks(programIds)).toEqual([]);
        expect(readdirSync(linksDir)).toEqual([]);
        await pipeline.stop();
        stopped = true;
      } finally {
        if (!stopped) await pipeline.stop();
      }
      const records = [...store.values()].flatMap((c) => c.batches.flat());
      const counted = ifindexes.map((ifindex) => udpPackets(records, ifindex));
      expect(counted).toEqual(ifindexes.map((_, i) => (i === 99 ? 0 : PACKETS)));
      // stop() unpinned and closed everything: no program of the source is loaded any more.
      const progs = bpftool<{ id: number }[]>(['prog', 'show']).filter((p) => programIds.has(p.id));
      expect(progs).toEqual([]);
      expect(existsSync(join(pinRoot, 'rxflow-ifwatch'))).toBe(false);
    });

    it("netns 'all': namespaces created while it runs are followed; their flows carry and are named in them, even where ifindexes coincide", async () => {
      const store: CollectStore = new Map();
      const logs: LogLine[] = [];
      const yaml = `
sources:
  flows:
    type: ebpf_flows
    interfaces: ['/^rxv${pid}n/']
    netns: all
    instance: ifwatch-all
    pin_root: ${pinRoot}
transforms:
  names:
    type: decorate
    inputs: [flows]
sinks:
  out:
    type: collect
    inputs: [names]
`;
      const pipeline = await startPipeline(yaml, store, logs);
      const fresh: Netns[] = [];
      // Two namespaces, each with its own matching link; in a new namespace the first link after
      // lo takes ifindex 2, so both links have the same one and only the namespace tells them apart.
      const sends = [7, 5];
      const seen: { ns: string; inner: string; ifindex: number }[] = [];
      let stopped = false;
      try {
        for (let n = 0; n < sends.length; n++) {
          const netns = await createNetns({ prefix: 'rxif' });
          fresh.push(netns);
          const inner = `rxv${pid}n${n}`;
          const far = `rxw${pid}m${n}`;
          ipBatch(
            [
              `link add ${inner} address ${mac(2, n, 1)} type veth peer name ${far} address ${mac(2, n, 2)} netns ${peer.name}`,
              `addr add 198.19.${200 + n}.1/30 dev ${inner}`,
              `link set ${inner} up`,
            ],
            netns.name,
          );
          await until(
            () =>
              logs.some(
                (l) => l.msg === 'interface attached' && l.ifname === inner && l.netns === netns.name,
              ),
            `${inner} attached in ${netns.name}`,
            10_000,
          );
          const ifindex = logs.find((l) => l.msg === 'interface attached' && l.ifname === inner)!.ifindex!;
          seen.push({ ns: netns.name, inner, ifindex });
          ipBatch(
            [
              `addr add 198.19.${200 + n}.2/30 dev ${far}`,
              `link set ${far} up`,
              `neigh replace 198.19.${200 + n}.1 lladdr ${mac(2, n, 1)} dev ${far} nud permanent`,
            ],
            peer.name,
          );
        }
        expect(seen[0]!.ifindex).toBe(seen[1]!.ifindex);
        for (let n = 0; n < sends.length; n++) {
          const sent = await sendUdp({
            from: peer,
            to: `198.19.${200 + n}.1`,
            port: PORT,
            count: sends[n]!,
            payloadBytes: 64,
          });
          expect(sent.sent).toBe(sends[n]);
        }
        // Destroyed: the source lets go of it (its monitor would otherwise keep it alive).
        fresh[0]!.dispose();
        await until(
          () => logs.some((l) => l.msg === 'network namespace gone' && l.netns === seen[0]!.ns),
          `${seen[0]!.ns} gone`,
          10_000,
        );
        await pipeline.stop();
        stopped = true;
        const records = [...store.values()].flatMap((c) => c.batches.flat());
        expect(seen.map((s) => udpPackets(records, s.ifindex, s.ns))).toEqual(sends);
        for (const s of seen) {
          const names = new Set(
            records
              .filter((r) => r.networkNamespace === s.ns && r.ingressInterface === s.ifindex)
              .map((r) => r.interfaceName),
          );
          expect([...names]).toEqual([s.inner]);
        }
      } finally {
        if (!stopped) await pipeline.stop();
        for (const netns of fresh) netns.dispose();
      }
    });
    it('a rename keeps the attachment (by ifindex); renamed out of the patterns it is detached, back in attached again', async () => {
      const store: CollectStore = new Map();
      const logs: LogLine[] = [];
      const yaml = `
sources:
  flows:
    type: ebpf_flows
    interfaces: ['rxv${pid}r0', 'rxv${pid}s*']
    instance: ifwatch-rename
    pin_root: ${pinRoot}
sinks:
  out:
    type: collect
    inputs: [flows]
`;
      const host = `rxv${pid}r0`;
      const far = `rxw${pid}r0`;
      const undo = cleanup.register(`link ${host}`, () => {
        for (const name of [host, `rxv${pid}s1`, `rxv${pid}q1`]) deleteLinkSync(name);
      });
      ipBatch([
        `link add ${host} address ${mac(3, 0, 1)} type veth peer name ${far} address ${mac(3, 0, 2)} netns ${peer.name}`,
        `addr add 198.19.210.1/30 dev ${host}`,
        `link set ${host} up`,
      ]);
      ipBatch(
        [
          `addr add 198.19.210.2/30 dev ${far}`,
          `link set ${far} up`,
          `neigh replace 198.19.210.1 lladdr ${mac(3, 0, 1)} dev ${far} nud permanent`,
        ],
        peer.name,
      );
      const pipeline = await startPipeline(yaml, store, logs);
      const events = () =>
        logs.filter((l) => l.msg.startsWith('interface ')).map((l) => `${l.msg} ${l.ifname}`);
      const send = async (count: number) => {
        const sent = await sendUdp({ from: peer, to: '198.19.210.1', port: PORT, count, payloadBytes: 64 });
        expect(sent.sent).toBe(count);
      };
      let stopped = false;
      try {
        expect(events()).toEqual([`interface attached ${host}`]);
        const ifindex = logs.find((l) => l.msg === 'interface attached')!.ifindex!;
        await send(3);
        // Renamed into another pattern: the same links stay (a link must be down to be renamed).
        ipBatch([`link set ${host} down`, `link set ${host} name rxv${pid}s1`, `link set rxv${pid}s1 up`]);
        await until(() => events().length === 2, 'rename seen', 5000);
        expect(events()).toEqual([`interface attached ${host}`, `interface renamed rxv${pid}s1`]);
        await send(4);
        // Renamed out of every pattern: detached, and its traffic is not counted.
        ipBatch([
          `link set rxv${pid}s1 down`,
          `link set rxv${pid}s1 name rxv${pid}q1`,
          `link set rxv${pid}q1 up`,
        ]);
        await until(() => events().length === 3, 'detach seen', 5000);
        await send(5);
        // And back: attached again.
        ipBatch([
          `link set rxv${pid}q1 down`,
          `link set rxv${pid}q1 name rxv${pid}s1`,
          `link set rxv${pid}s1 up`,
        ]);
        await until(() => events().length === 4, 'attach seen', 5000);
        await send(6);
        expect(events()).toEqual([
          `interface attached ${host}`,
          `interface renamed rxv${pid}s1`,
          `interface detached rxv${pid}q1`,
          `interface attached rxv${pid}s1`,
        ]);
        await pipeline.stop();
        stopped = true;
        const records = [...store.values()].flatMap((c) => c.batches.flat());
        expect(udpPackets(records, ifindex)).toBe(3 + 4 + 6);
      } finally {
        if (!stopped) await pipeline.stop();
        undo.run();
      }
    });
  },
  ['bpftool'],
);
