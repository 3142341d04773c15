/**
 * SIGKILL mid-stream, then a restart of the same pipeline: ebpf_flows -> file on a veth in a
 * namespace, one UDP flow per packet (source port = packet number), counted outside rxflow by
 * the generator and by the lines of the file.
 *
 * What a SIGKILL may lose, exactly: the records of the eviction the agent had taken out of the
 * kernel map but not yet written (between a swap and the write of its batch). Evictions swap the
 * map, so such records are all newer than every record the killed agent wrote, and older than
 * every record the kernel still held, which the restarted agent drains from the pinned maps.
 * Everything counted after that last swap, while the agent runs, while it is dead (the pinned
 * links keep counting into the pinned maps), and after the restart, is in the file exactly once.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp } from '../fixtures/traffic.js';
import { flowsSource, useRunSetup } from '../fixtures/run.js';
import { Cli } from '../kernel/cli-helpers.js';
import { isReady, lastLog, readRecords, waitFor, type FileRecord } from './lifecycle-helpers.js';

const PORT = 6301;
/** First source port of each phase; each phase sends one packet per source port. */
const PHASE = { before: 20_000, during: 21_000, dead: 23_000, after: 24_000 } as const;
const COUNT = { before: 100, during: 600, dead: 100, after: 100 } as const;

/** Source port -> packets, of the UDP records to PORT (ingress) in `records`. */
function byPort(records: readonly FileRecord[]): Map<number, number[]> {
  const out = new Map<number, number[]>();
  for (const r of records) {
    if (r.protocolIdentifier !== 17 || r.destinationTransportPort !== PORT || r.flowDirection !== 0) continue;
    const list = out.get(r.sourceTransportPort) ?? [];
    list.push(r.packetDeltaCount);
    out.set(r.sourceTransportPort, list);
  }
  return out;
}

const range = (first: number, n: number) => Array.from({ length: n }, (_, i) => first + i);

kernelDescribe(
  'SIGKILL mid-stream and restart: the file and the ledger account for every packet sent',
  () => {
    const run = useRunSetup('lcyrs');
    const env = () => ({ RXFLOW_RUN_DIR: run.runDir, RXFLOW_LOG_LEVEL: 'info' });

    it('loses at most the one eviction in the process at the kill, and the pinned maps carry the rest over', async () => {
      const { topo, pinRoot, runDir: dir } = run;
      const out = join(dir, 'flows.jsonl');
      const file = join(dir, 'lcyrestart.yaml');
      writeFileSync(
        file,
        `${flowsSource(
          { topo, pinRoot },
          { instance: 'lifecycle-restart', options: { directions: '[ingress]', eviction_interval_ms: 200 } },
        )}sinks:
  out: {type: file, inputs: [flows], path: ${out}}
`,
      );
      const send = (phase: keyof typeof PHASE, intervalUs: number) =>
        sendUdp({
          from: topo.client,
          to: topo.link.b.ipv4!,
          port: PORT,
          count: 1,
          flows: COUNT[phase],
          srcPort: PHASE[phase],
          payloadBytes: 32,
          intervalUs,
        });

      const first = new Cli(['run', file, '--no-status-socket'], env());
      await first.until(isReady, "the first agent's 'ready' log");
      await send('before', 1000);
      // Mid-stream: the kill lands while the generator sends, once the agent has written some of it.
      const during = send('during', 5000);
      await waitFor(
        () => [...byPort(readRecords(out)).keys()].some((p) => p >= PHASE.during + 50),
        'records of the second phase in the file',
      );
      first.signal('SIGKILL');
      expect(await first.exited).toEqual({ code: null, signal: 'SIGKILL' });
      // The killed agent wrote whole lines only.
      expect(readFileSync(out, 'utf8').endsWith('\n')).toBe(true);
      const writtenByFirst = byPort(readRecords(out));
      const linesByFirst = readFileSync(out, 'utf8').split('\n').length - 1;

      // No agent runs: what is sent now is counted by the pinned programs into the pinned maps.
      const sentDuring = await during;
      const sentDead = await send('dead', 500);

      const second = new Cli(['run', file, '--no-status-socket'], env());
      await second.until(isReady, "the restarted agent's 'ready' log");
      const sentAfter = await send('after', 500);
      second.signal('SIGTERM');
      expect(await second.exited).toEqual({ code: 0, signal: null });

      const all = readRecords(out);
      const lines = all.length;
      const got = byPort(all);
      const fromSecond = byPort(all.slice(linesByFirst));
      const sent = COUNT.before + sentDuring.sent + sentDead.sent + sentAfter.sent;
      expect(sent).toBe(900);

      // Every packet is in at most one record, and that record counts it once.
      for (const [port, packets] of got) expect([port, packets]).toEqual([port, [1]]);
      // Before the kill's phase, while dead, and after the restart: all there.
      const missing = (ports: number[]) => ports.filter((p) => !got.has(p));
      expect(missing(range(PHASE.before, COUNT.before))).toEqual([]);
      expect(missing(range(PHASE.dead, COUNT.dead))).toEqual([]);
      expect(missing(range(PHASE.after, COUNT.after))).toEqual([]);
      // The packets sent while no agent ran came out of the pinned maps, through the second agent.
      expect(range(PHASE.dead, COUNT.dead).every((p) => fromSecond.has(p))).toBe(true);

      // Lost at the kill: at most one eviction, newer than all the first agent wrote, older than all
      // the second agent drained of that phase.
      const lost = missing(range(PHASE.during, COUNT.during));
      const lastWritten = Math.max(...[...writtenByFirst.keys()].filter((p) => p < PHASE.dead));
      const firstDrained = Math.min(
        ...[...fromSecond.keys()].filter((p) => p >= PHASE.during && p < PHASE.dead),
      );
      expect(lost.filter((p) => p <= lastWritten || p >= firstDrained)).toEqual([]);

      // Packets in the file + lost at the kill = packets sent.
      let packetsInFile = 0;
      for (const packets of got.values()) packetsInFile += packets.reduce((a, b) => a + b, 0);
      expect(packetsInFile + lost.length).toBe(sent);

      // The second agent's own ledger: everything it saw was handed to the file and written, and
      // what it wrote is the lines after the first agent's.
      const ledger = lastLog(second, 'ledger')!;
      expect(ledger).toMatchObject({
        droppedTotal: 0,
        inFlight: 0,
        sinks: [
          {
            id: 'out',
            handed: lines - linesByFirst,
            exported: lines - linesByFirst,
            droppedTotal: 0,
            inFlight: 0,
          },
        ],
      });
      expect(ledger.seen).toBe(ledger.delivered);
    });
  },
);
