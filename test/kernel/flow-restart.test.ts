/**
 * An agent killed with SIGKILL leaves its programs attached (a TCX link is pinned, a clsact filter
 * stays on its qdisc) and its maps pinned. A restarted agent with the same instance must take the
 * hooks over instead of attaching a second time, keep counting into the same maps, drain both flow
 * maps on its first eviction (the dead agent may have swapped them without draining), and leave
 * nothing behind when it closes.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { TcDirection } from '../../src/datapath/index.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { FlowDatapath, type FlowDatapathOptions } from '../../src/datapath/flow/datapath.js';
import { buildChild, startChild, type BuiltChild } from '../fixtures/child.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink, udpFrameBytes } from '../fixtures/traffic.js';
import { tcxLinksRunning, testObject } from './datapath-helpers.js';

interface ChildLinks {
  ok: boolean;
  pinDir: string;
  links: { ifname: string; direction: TcDirection; mode: string; programId: number }[];
}

/** Program ids of the bpf filters on a clsact hook of an interface in a namespace. */
function filterProgs(netns: string, ifname: string, direction: TcDirection): number[] {
  const out = execFileSync('tc', ['-n', netns, '-j', 'filter', 'show', 'dev', ifname, direction], {
    encoding: 'utf8',
  }).trim();
  const rows = out === '' ? [] : (JSON.parse(out) as { options?: { prog?: { id: number } } }[]);
  return rows.flatMap((r) => (r.options?.prog ? [r.options.prog.id] : []));
}

/** Ids of every BPF program loaded on the host. */
function loadedPrograms(): Set<number> {
  const rows = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show'], { encoding: 'utf8' })) as {
    id: number;
  }[];
  return new Set(rows.map((r) => r.id));
}

/** The programs of `ids` still loaded once none is or after 5 s, whichever comes first. */
async function stillLoaded(ids: number[]): Promise<number[]> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const loaded = loadedPrograms();
    const left = ids.filter((id) => loaded.has(id));
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const byDirection = (links: { direction: TcDirection; programId: number }[]) =>
  Object.fromEntries(links.map((l) => [l.direction, l.programId])) as Record<TcDirection, number>;

kernelDescribe(
  'flow datapath across SIGKILL and restart',
  () => {
    let topo: PairTopology;
    let pinRoot: string;
    let child: BuiltChild;
    let objectPath: string;

    beforeAll(async () => {
      topo = await createPair({ prefix: 'rxfp' });
      pinRoot = makeBpffsDir('rxfp');
      objectPath = testObject('flow');
      child = buildChild('test/kernel/flow-child.ts');
      const dir = child.dir;
      cleanup.register(`child dir ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
    });
    afterAll(() => cleanup.dispose());

    for (const mode of ['tcx', 'clsact'] as const) {
      it(`${mode}: a restart after SIGKILL takes the hooks over, counts every packet once, and close leaves nothing`, async () => {
        const ifname = topo.link.b.ifname;
        const netns = topo.server.name;
        const options: FlowDatapathOptions = {
          interfaces: [ifname],
          netns,
          instance: `rxfp-restart-${mode}-${process.pid}`,
          pinRoot,
          attachMode: mode,
          objectPath,
        };
        const port = mode === 'tcx' ? 7101 : 7102;
        const srcPort = mode === 'tcx' ? 44001 : 44002;
        const send = async (count: number): Promise<void> => {
          const sink = await startUdpSink({ ns: topo.server, port, family: 4, count });
          await sendUdp({ from: topo.client, to: topo.link.b.ipv4!, port, count, payloadBytes: 64, srcPort });
          expect((await sink.result).received).toBe(count);
        };

        const first = startChild(process.execPath, [child.entry, 'open', JSON.stringify(options)], {
          prefix: 'rxfp',
        });
        const before = await first.next<ChildLinks>();
        expect(before).toMatchObject({ ok: true, pinDir: `${pinRoot}/rxflow-${options.instance}` });
        expect(before.links.map((l) => [l.ifname, l.direction, l.mode])).toEqual([
          [ifname, 'ingress', mode],
          [ifname, 'egress', mode],
        ]);
        const old = byDirection(before.links);
        await send(30);
        // Killed between the swap and the drain of an eviction: flows are left in both maps.
        first.send('swap');
        expect(await first.next()).toEqual({ ok: true, active: 'flow_map_b' });
        await send(10);
        await first.kill();

        // The dead agent's programs still run, counting into its pinned maps.
        const orphanLinks = tcxLinksRunning(old.ingress, old.egress);
        if (mode === 'tcx') {
          expect(orphanLinks).toHaveLength(2);
          expect(existsSync(`${before.pinDir}/links/tc-${ifname}-ingress`)).toBe(true);
        } else {
          expect(orphanLinks).toEqual([]);
          expect(filterProgs(netns, ifname, 'ingress')).toEqual([old.ingress]);
          expect(filterProgs(netns, ifname, 'egress')).toEqual([old.egress]);
        }
        await send(20);

        const dp = FlowDatapath.open(options);
        const fresh = byDirection(dp.links);
        try {
          expect(dp.pinDir).toBe(before.pinDir);
          expect(dp.links.map((l) => [l.ifname, l.direction, l.mode])).toEqual([
            [ifname, 'ingress', mode],
            [ifname, 'egress', mode],
          ]);
          expect([fresh.ingress, fresh.egress]).not.toContain(old.ingress);
          // Exactly one attachment per hook, running the new programs; the old ones are unloaded.
          const tcx = tcxLinksRunning(old.ingress, old.egress, fresh.ingress, fresh.egress);
          if (mode === 'tcx') {
            // The pinned links were updated in place: same link ids, new programs.
            expect(tcx.map((l) => [l.id, l.prog_id]).sort()).toEqual(
              orphanLinks.map((l) => [l.id, l.prog_id === old.ingress ? fresh.ingress : fresh.egress]).sort(),
            );
            expect(filterProgs(netns, ifname, 'ingress')).toEqual([]);
            expect(filterProgs(netns, ifname, 'egress')).toEqual([]);
          } else {
            expect(tcx).toEqual([]);
            expect(filterProgs(netns, ifname, 'ingress')).toEqual([fresh.ingress]);
            expect(filterProgs(netns, ifname, 'egress')).toEqual([fresh.egress]);
          }
          expect(await stillLoaded([old.ingress, old.egress])).toEqual([]);

          await send(25);
          let spilled = 0;
          dp.events.drain(() => spilled++);
          expect(spilled).toBe(0);
          // Before the swap, after it, between kill and restart, after the restart: each packet once.
          // The first eviction drains the active map (10 + 20 + 25), then the one left undrained.
          const frame = udpFrameBytes(4, 64);
          const flows = (records: FlowRecord[]) =>
            records.map((r) => ({
              direction: r.flowDirection,
              sport: r.sourceTransportPort,
              dport: r.destinationTransportPort,
              packets: r.packetDeltaCount,
              bytes: r.layer2OctetDeltaCount!,
            }));
          const flow = (packets: number) => ({
            direction: 0,
            sport: srcPort,
            dport: port,
            packets,
            bytes: packets * frame,
          });
          expect(flows(dp.evictFlows(0))).toEqual([flow(55), flow(30)]);
          await send(5);
          expect(flows(dp.evictFlows(0))).toEqual([flow(5)]);
        } finally {
          dp.close();
        }
        const ids = [old.ingress, old.egress, fresh.ingress, fresh.egress];
        expect(tcxLinksRunning(...ids)).toEqual([]);
        expect(filterProgs(netns, ifname, 'ingress')).toEqual([]);
        expect(filterProgs(netns, ifname, 'egress')).toEqual([]);
        expect(existsSync(before.pinDir)).toBe(false);
        // A deleted cls_bpf filter drops its program after an RCU grace period, not at once.
        expect(await stillLoaded(ids)).toEqual([]);
      });
    }
  },
  ['bpftool'],
);
