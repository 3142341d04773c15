import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { readStatus } from '../../src/cli/status.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { icmpFrameBytes, ping, sendTcp, sendUdp, startUdpSink, udpFrameBytes } from '../fixtures/traffic.js';
import { flowsSource, useRunSetup } from '../fixtures/run.js';
import { Cli } from './cli-helpers.js';

interface LoggedFlow {
  src: string;
  sport: number;
  dst: string;
  dport: number;
  proto: number;
  dir: string;
  iface: string;
  packets: number;
  bytes: number;
}

kernelDescribe('rxflow run on a veth in a namespace', () => {
  const run = useRunSetup('rxcl');

  /** ebpf_flows on the server's end -> decorate (names from that namespace) -> top, logged at the end. */
  function pipeline(name: string, evictionMs: string, iface = run.topo.link.b.ifname): string {
    const file = join(run.runDir, `${name}.yaml`);
    writeFileSync(
      file,
      `${flowsSource(run, { instance: name, iface, options: { eviction_interval_ms: evictionMs } })}transforms:
  named: {type: decorate, inputs: [flows], netns: ${run.topo.server.name}}
sinks:
  top: {type: top, inputs: [named], top_n: 50, window_ms: 1h, log_interval_ms: 1h}
`,
    );
    return file;
  }

  const env = () => ({ RXFLOW_RUN_DIR: run.runDir, RXFLOW_LOG_LEVEL: 'info' });

  it('drains on SIGTERM: the last eviction delivers every flow still in the kernel map, exactly, and it exits 0', async () => {
    // Nothing is evicted before the signal: every record below comes from the drain.
    const file = pipeline('rxcldrain', '1h');
    const cli = new Cli(['run', file], env());
    await cli.until((c) => c.logs().some((l) => l.msg === 'ready'), "the 'ready' log");
    const socket = join(run.runDir, 'rxcldrain.sock');
    expect(await readStatus(socket)).toMatchObject({ state: 'running', ready: true, ledger: { seen: 0 } });

    const sink = await startUdpSink({ ns: run.topo.server, port: 6101, family: 4, count: 50 });
    await sendUdp({
      from: run.topo.client,
      to: run.topo.link.b.ipv4!,
      port: 6101,
      count: 50,
      payloadBytes: 100,
      srcPort: 41101,
    });
    await sink.result;
    await ping({ from: run.topo.client, to: run.topo.link.b.ipv6!, count: 5, payloadBytes: 56 });
    const tcp = await sendTcp({
      from: run.topo.client,
      server: run.topo.server,
      to: run.topo.link.b.ipv4!,
      port: 6102,
      bytes: 20_000,
      srcPort: 41102,
    });
    cli.signal('SIGTERM');
    expect(await cli.exited).toEqual({ code: 0, signal: null });

    const top = cli.logs().find((l) => l.msg === 'top flows');
    const flows = (top?.flows as LoggedFlow[]).map((f) => ({ ...f }));
    const ifname = run.topo.link.b.ifname;
    const key = (f: LoggedFlow) => `${f.proto} ${f.dir} ${f.src}:${f.sport}>${f.dst}:${f.dport}`;
    const byKey = Object.fromEntries(flows.map((f) => [key(f), f]));
    expect(Object.keys(byKey).sort()).toEqual(
      [
        '17 ingress 192.0.2.1:41101>192.0.2.2:6101',
        '58 ingress 2001:db8:0:1::1:0>2001:db8:0:1::2:0',
        '58 egress 2001:db8:0:1::2:0>2001:db8:0:1::1:0',
        '6 ingress 192.0.2.1:41102>192.0.2.2:6102',
        '6 egress 192.0.2.2:6102>192.0.2.1:41102',
      ].sort(),
    );
    expect(flows.every((f) => f.iface === ifname)).toBe(true);
    expect(byKey['17 ingress 192.0.2.1:41101>192.0.2.2:6101']).toMatchObject({
      packets: 50,
      bytes: 50 * udpFrameBytes(4, 100),
    });
    const echo = 5 * icmpFrameBytes(6, 56);
    expect(byKey['58 ingress 2001:db8:0:1::1:0>2001:db8:0:1::2:0']).toMatchObject({
      packets: 5,
      bytes: echo,
    });
    expect(byKey['58 egress 2001:db8:0:1::2:0>2001:db8:0:1::1:0']).toMatchObject({ packets: 5, bytes: echo });
    expect(byKey['6 ingress 192.0.2.1:41102>192.0.2.2:6102']!.packets).toBe(tcp.clientSegsOut);
    expect(byKey['6 egress 192.0.2.2:6102>192.0.2.1:41102']!.packets).toBe(tcp.serverSegsOut);

    expect(cli.logs().at(-1)).toMatchObject({
      msg: 'ledger',
      seen: 5,
      delivered: 5,
      droppedTotal: 0,
      inFlight: 0,
      sinks: [{ id: 'top', handed: 5, exported: 5, droppedTotal: 0, inFlight: 0 }],
    });
    expect(existsSync(socket)).toBe(false);
    expect(existsSync(join(run.pinRoot, 'rxflow-rxcldrain'))).toBe(false);
  });

  it('serves the loss ledger and the state to rxflow status while it runs', async () => {
    const file = pipeline('rxcllive', '200ms');
    const socket = join(run.runDir, 'rxcllive.sock');
    const cli = new Cli(['run', file, '--status-socket', socket], env());
    await cli.until((c) => c.logs().some((l) => l.msg === 'ready'), "the 'ready' log");
    // A listener, so the server answers no datagram with a port-unreachable.
    const sink = await startUdpSink({ ns: run.topo.server, port: 6103, family: 4, count: 30 });
    await sendUdp({
      from: run.topo.client,
      to: run.topo.link.b.ipv4!,
      port: 6103,
      count: 30,
      payloadBytes: 200,
      srcPort: 41103,
    });
    await sink.result;

    const deadline = Date.now() + 10_000;
    let status = await readStatus(socket);
    while ((status.top?.top?.flows[0]?.packets ?? 0) < 30 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      status = await readStatus(socket);
    }
    expect(status.top?.top?.flows.map((f) => [f.destinationPort, f.packets, f.bytes, f.interface])).toEqual([
      [6103, 30, 30 * udpFrameBytes(4, 200), run.topo.link.b.ifname],
    ]);
    expect(status.ledger).toEqual({
      seen: 1,
      merged: 0,
      dropped: {},
      droppedTotal: 0,
      inFlight: 0,
      delivered: 1,
      sinks: [{ id: 'top', type: 'top', handed: 1, exported: 1, dropped: {}, droppedTotal: 0, inFlight: 0 }],
    });

    const printed = new Cli(['status', '--socket', socket], env());
    expect(await printed.exited).toEqual({ code: 0, signal: null });
    const lines = printed.stdout.split('\n');
    expect(lines[0]).toBe(`pipeline  rxcllive (${file}), pid ${cli.pid}`);
    expect(lines.slice(2, 5)).toEqual([
      'ledger    seen 1  merged 0  dropped 0  in flight 0  delivered 1',
      '          sink top  handed 1  exported 1  dropped 0  in flight 0',
      'health    healthy',
    ]);
    expect(lines.slice(6, 11)).toEqual([
      'COMPONENT      TYPE        KIND       RECEIVED  SENT  DROPPED  MERGED  IN FLIGHT',
      'flows          ebpf_flows  source            1     1        0       0          0',
      'named          decorate    transform         1     1        0       0          0',
      'top            top         sink              1     1        0       0          0',
      'flows.account  account     stage             0     0        0       0          0',
    ]);

    cli.signal('SIGINT');
    expect(await cli.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(socket)).toBe(false);
  });

  it('exits 1 with the reason and no stack trace when an interface does not exist', async () => {
    const file = pipeline('rxclnoif', '1s', 'rxclnope0');
    const cli = new Cli(['run', file], env());
    expect(await cli.exited).toEqual({ code: 1, signal: null });
    expect(cli.stderr.split('\n')).toContain(
      "run sources.flows (ebpf_flows): attach tc ingress rxclnope0: no such interface; check the name with 'ip link'",
    );
    expect(cli.stderr).not.toMatch(/\n\s+at /);
    expect(cli.stderr).not.toContain('"stack"');
    expect(existsSync(join(run.pinRoot, 'rxflow-rxclnoif'))).toBe(false);
    expect(existsSync(join(run.runDir, 'rxclnoif.sock'))).toBe(false);
  });
});
