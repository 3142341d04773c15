/**
 * `rxflow flush` (or SIGUSR1) on a running pipeline: the kernel flow map is read and emptied at
 * once, long before its eviction interval, and the flows reach the file sink with the generator's
 * exact counts.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink } from '../fixtures/traffic.js';
import { Cli, cliTestbed } from './cli-helpers.js';

interface Line {
  firewallSessionEvent?: string;
  sourceTransportPort: number;
  destinationTransportPort: number;
  flowDirection: number;
  packetDeltaCount: number;
  octetDeltaCount: number;
}

kernelDescribe('rxflow flush', () => {
  const bed = cliTestbed('fwflu');

  /** `rxflow run` of pipeline `name`: the source `id` (YAML `source`) into a file sink; once ready. */
  async function runToFile(name: string, id: string, source: string) {
    const out = join(bed.dir, `${name}.jsonl`);
    const file = join(bed.dir, `${name}.yaml`);
    writeFileSync(
      file,
      `sources: {${id}: ${source}}\nsinks: {out: {type: file, inputs: [${id}], path: ${out}}}\n`,
    );
    const socket = join(bed.dir, `${name}.sock`);
    const run = new Cli(['run', file, '--status-socket', socket]);
    await run.until((c) => c.logs().some((l) => l.msg === 'ready'), "the 'ready' log");
    return { run, out, socket };
  }

  it('reads and empties the kernel map at once: the flows are in the file long before the 10 min eviction', async () => {
    const { topo, pinRoot } = bed;
    const flows = `{type: ebpf_flows, netns: ${topo.server.name}, interfaces: [${topo.link.b.ifname}], instance: fwmetricsflush, pin_root: ${pinRoot}, eviction_interval_ms: 10m}`;
    const { run, out, socket } = await runToFile('fwflush', 'flows', flows);

    /** `count` datagrams of 100 bytes from port 42001 to 6201, every one received. */
    const traffic = async (count: number): Promise<void> => {
      const sink = await startUdpSink({ ns: topo.server, port: 6201, family: 4, count });
      const to = topo.link.b.ipv4!;
      expect(
        (await sendUdp({ from: topo.client, to, port: 6201, count, payloadBytes: 100, srcPort: 42001 })).sent,
      ).toBe(count);
      expect((await sink.result).received).toBe(count);
    };
    const flow = (): Line[] =>
      (existsSync(out) ? readFileSync(out, 'utf8').split('\n') : [])
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Line)
        .filter((l) => l.sourceTransportPort === 42001 && l.destinationTransportPort === 6201);

    await traffic(30);
    expect(flow()).toEqual([]);
    const flush = new Cli(['flush', '--socket', socket]);
    expect(await flush.exited).toEqual({ code: 0, signal: null });
    expect(flush.stdout).toBe(`flush: pipeline fwflush (pid ${run.pid}): flows reading the kernel now\n`);
    await run.until(() => flow().length > 0, 'the flushed flow in the file', 10_000);
    // UDP 100 bytes + 8 + IPv4 20: IP octets as octetDeltaCount counts them.
    expect(flow()).toEqual([
      expect.objectContaining({ flowDirection: 0, packetDeltaCount: 30, octetDeltaCount: 30 * 128 }),
    ]);

    // SIGUSR1 flushes as well; the first flush removed what it read, so this record holds only
    // the datagrams sent since.
    await traffic(20);
    run.signal('SIGUSR1');
    await run.until(() => flow().length > 1, 'the flow flushed by SIGUSR1', 10_000);
    expect(flow().map((l) => l.packetDeltaCount)).toEqual([30, 20]);

    // The drain's final eviction finds nothing more of the flow.
    run.signal('SIGTERM');
    expect(await run.exited).toEqual({ code: 0, signal: null });
    expect(flow().map((l) => l.packetDeltaCount)).toEqual([30, 20]);
  });

  it('reads the firewall session events at once: the sessions are in the file long before the 10 min drain', async () => {
    const { topo, pinRoot, dir } = bed;
    const pins = ['--pin-root', pinRoot, '--instance', 'fwmetricsflush'];
    const policy = join(dir, 'allow.yaml');
    writeFileSync(
      policy,
      'networks: [{cidr: 192.0.2.0/24, policy: open}]\npolicies: {open: {default_action: allow}}\n',
    );
    const load = new Cli([
      'firewall',
      'load',
      '--ingress',
      topo.link.b.ifname,
      '--netns',
      topo.server.name,
      '--policy',
      policy,
      ...pins,
    ]);
    expect(await load.exited).toEqual({ code: 0, signal: null });
    const sessions = `{type: firewall_sessions, instance: fwmetricsflush, pin_root: ${pinRoot}, drain_interval_ms: 10m, expire_interval_ms: 10m}`;
    const { run, out, socket } = await runToFile('fwsessions', 'sessions', sessions);

    // Three flows from ports 43001-43003, 5 datagrams each: three sessions.
    const sink = await startUdpSink({ ns: topo.server, port: 6301, family: 4, count: 15 });
    const to = topo.link.b.ipv4!;
    const sent = await sendUdp({
      from: topo.client,
      to,
      port: 6301,
      count: 5,
      flows: 3,
      payloadBytes: 10,
      srcPort: 43001,
    });
    expect([sent.sent, (await sink.result).received]).toEqual([15, 15]);
    const created = (): number[] =>
      (existsSync(out) ? readFileSync(out, 'utf8').split('\n') : [])
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Line)
        .filter((l) => l.firewallSessionEvent === 'created' && l.destinationTransportPort === 6301)
        .map((l) => l.sourceTransportPort)
        .sort();
    expect(created()).toEqual([]);

    const flush = new Cli(['flush', '--socket', socket]);
    expect(await flush.exited).toEqual({ code: 0, signal: null });
    expect(flush.stdout).toBe(
      `flush: pipeline fwsessions (pid ${run.pid}): sessions reading the kernel now\n`,
    );
    await run.until(() => created().length === 3, 'the three created sessions in the file', 10_000);
    expect(created()).toEqual([43001, 43002, 43003]);

    run.signal('SIGTERM');
    expect(await run.exited).toEqual({ code: 0, signal: null });
    const unload = new Cli(['firewall', 'unload', ...pins]);
    expect(await unload.exited).toEqual({ code: 0, signal: null });
  });
});
