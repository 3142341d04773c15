import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink } from '../fixtures/traffic.js';
import { flowsSource, useRunSetup } from '../fixtures/run.js';
import { Cli } from '../kernel/cli-helpers.js';
import { isReady, packetsTo, readRecords, waitFor } from './lifecycle-helpers.js';

const TEST_OBJECT = fileURLToPath(new URL('../../bpf/test_datapath.o', import.meta.url));

kernelDescribe('one agent per instance; a failed start leaves no pins', () => {
  const run = useRunSetup('lcyin');
  const env = () => ({ RXFLOW_RUN_DIR: run.runDir, RXFLOW_LOG_LEVEL: 'info' });

  /** ebpf_flows on the server's veth end -> file. */
  function pipeline(
    name: string,
    instance: string,
    o: { netns?: string; iface?: string; extra?: string } = {},
  ): { file: string; out: string } {
    const file = join(run.runDir, `${name}.yaml`);
    const out = join(run.runDir, `${name}.jsonl`);
    writeFileSync(
      file,
      `${flowsSource(run, { instance, netns: o.netns, iface: o.iface, options: { eviction_interval_ms: 200 } })}${o.extra ?? ''}sinks:
  out: {type: file, inputs: [flows], path: ${out}}
`,
    );
    return { file, out };
  }

  it('refuses a second agent on a running instance, naming the first, and leaves the first running', async () => {
    const instance = 'lifecycle-one';
    const first = pipeline('lcyfirst', instance);
    const a = new Cli(['run', first.file], env());
    await a.until(isReady, "the first agent's 'ready' log");

    const second = pipeline('lcysecond', instance);
    const b = new Cli(['run', second.file], env());
    // The second either exits (the fix) or reports ready (the bug): wait for whichever comes first.
    const outcome = await Promise.race([
      b.exited.then((exit) => ({ exit })),
      b.until(isReady, "the second agent's 'ready' log", 30_000).then(() => ({ exit: undefined })),
    ]);
    expect(outcome.exit).toEqual({ code: 1, signal: null });
    expect(b.stderr.split('\n')).toContain(
      `run sources.flows (ebpf_flows): lock instance '${instance}' at ${run.pinRoot}/rxflow-${instance}: ` +
        `another agent runs it (pid ${a.pid}, pipeline ${first.file}); ` +
        'stop that agent first, or give this pipeline another instance name',
    );
    expect(existsSync(join(run.pinRoot, `rxflow-${instance}`, 'maps', 'flow_counters'))).toBe(true);

    // The first agent still counts: what the generator sends shows up in its file.
    const sink = await startUdpSink({ ns: run.topo.server, port: 6201, family: 4, count: 40 });
    const sent = await sendUdp({
      from: run.topo.client,
      to: run.topo.link.b.ipv4!,
      port: 6201,
      count: 40,
      payloadBytes: 64,
      srcPort: 42201,
    });
    await sink.result;
    await waitFor(
      () => packetsTo(readRecords(first.out), 6201) >= sent.sent,
      'the packets in the first file',
    );
    expect(packetsTo(readRecords(first.out), 6201)).toBe(40);

    a.signal('SIGTERM');
    expect(await a.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(join(run.pinRoot, `rxflow-${instance}`))).toBe(false);

    // Once the first has stopped, the instance is free again.
    const c = new Cli(['run', second.file], env());
    await c.until(isReady, "the third agent's 'ready' log");
    c.signal('SIGTERM');
    expect(await c.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(join(run.pinRoot, `rxflow-${instance}`))).toBe(false);
  });

  it('a lock left by a killed agent does not block the next one', async () => {
    const instance = 'lifecycle-killed';
    const p = pipeline('lcykilled', instance);
    const a = new Cli(['run', p.file], env());
    await a.until(isReady, "the 'ready' log");
    a.signal('SIGKILL');
    expect(await a.exited).toEqual({ code: null, signal: 'SIGKILL' });
    expect(existsSync(join(run.pinRoot, `rxflow-${instance}`, 'maps'))).toBe(true);
    const b = new Cli(['run', p.file], env());
    await b.until(isReady, "the restarted agent's 'ready' log");
    b.signal('SIGTERM');
    expect(await b.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(join(run.pinRoot, `rxflow-${instance}`))).toBe(false);
  });

  it.each([
    {
      fault: 'a missing network namespace',
      o: () => ({ netns: `${run.topo.server.name}x` }),
      error: (ns: string) =>
        `run sources.flows (ebpf_flows): enter network namespace ${ns}: /run/netns/${ns} cannot be opened; check the name with 'ip netns list'`,
    },
    {
      fault: 'an unknown interface',
      o: () => ({ iface: 'lcynope0' }),
      error: () =>
        "run sources.flows (ebpf_flows): attach tc ingress lcynope0: no such interface; check the name with 'ip link'",
    },
    {
      fault: 'an object that is not the flow program',
      // Validate cannot tell: the file is a BPF object, only not one with the flow maps.
      o: () => ({ extra: `    object_path: ${TEST_OBJECT}\n` }),
      error: undefined,
    },
  ])('a failed start on $fault exits 1 and leaves no pins', async ({ o, error }) => {
    const instance = 'lifecycle-failed';
    const opts = o();
    const p = pipeline('lcyfailed', instance, opts);
    const cli = new Cli(['run', p.file], env());
    expect(await cli.exited).toEqual({ code: 1, signal: null });
    if (error) expect(cli.stderr.split('\n')).toContain(error((opts as { netns?: string }).netns ?? ''));
    else {
      expect(cli.stderr.split('\n')).toContain(
        `run sources.flows (ebpf_flows): ${TEST_OBJECT}: no map named 'flow_map_a'; the object has maps: echo_counts, rb_config, events, test_flows, test_hash`,
      );
    }
    expect(existsSync(join(run.pinRoot, `rxflow-${instance}`))).toBe(false);
  });
});
