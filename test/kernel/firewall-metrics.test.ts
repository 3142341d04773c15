/**
 * The firewall's counters in OpenTelemetry, as a user reads them: a firewall loaded on a veth of a
 * namespace pair judges traffic from the generator, a pipeline (firewall_metrics and firewall_audit
 * into otel_metrics) serves the metrics, and a real Prometheus scrapes them. With the traffic
 * stopped, what Prometheus stored equals `rxflow firewall counters` exactly, and the packets the
 * generator sent and the receiver counted.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { freePort } from '../faults/records-helpers.js';
import { cleanup, killSync } from '../fixtures/cleanup.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink } from '../fixtures/traffic.js';
import { Cli, cliTestbed } from './cli-helpers.js';

/** A CLI command run to its end; its stdout. */
async function rxflow(args: string[]): Promise<string> {
  const cli = new Cli(args);
  const exit = await cli.exited;
  if (exit.code !== 0) throw new Error(`rxflow ${args.join(' ')}: exit ${exit.code}\n${cli.stderr}`);
  return cli.stdout;
}

interface PromSeries {
  metric: Record<string, string>;
  value: [number, string];
}

/** An instant query to Prometheus's HTTP API. */
async function query(port: number, promql: string): Promise<PromSeries[]> {
  const res = await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(promql)}`);
  const doc = (await res.json()) as { status: string; data: { result: PromSeries[] } };
  if (doc.status !== 'success') throw new Error(`prometheus query ${promql}: ${JSON.stringify(doc)}`);
  return doc.data.result;
}

/** The counters as `rxflow firewall counters` names them, read from what Prometheus scraped. */
async function scrapedCounters(port: number, instance: string): Promise<Record<string, number>> {
  const sel = `{rxflow_firewall_instance="${instance}"}`;
  const out: Record<string, number> = {};
  let packets = 0;
  for (const s of await query(port, `rxflow_firewall_packets_total${sel}`)) {
    const n = Number(s.value[1]);
    out[s.metric.rxflow_firewall_outcome!] = n;
    packets += n;
  }
  out.packets = packets;
  for (const s of await query(port, `rxflow_firewall_session_hits_total${sel}`)) {
    out.session_hits = Number(s.value[1]);
  }
  for (const s of await query(port, `rxflow_firewall_session_create_failures_total${sel}`)) {
    out.session_create_failed = Number(s.value[1]);
  }
  for (const s of await query(port, `rxflow_firewall_events_lost_total${sel}`)) {
    out[s.metric.rxflow_firewall_ring === 'audit' ? 'audit_lost' : 'session_events_lost'] = Number(
      s.value[1],
    );
  }
  return out;
}

kernelDescribe(
  'firewall metrics scraped by Prometheus',
  () => {
    const bed = cliTestbed('fwmet');
    const instance = 'fwmetrics';

    it('rxflow_firewall_* in Prometheus equal rxflow firewall counters and the generator once traffic stops', async () => {
      const { topo, pinRoot, dir } = bed;
      // Clients of 192.0.2.0/24 may send to udp/7001 of 192.0.2.2 only.
      const rules = '[{destination: 192.0.2.2, protocol: udp, port: 7001}]';
      writeFileSync(
        join(dir, 'policy.yaml'),
        `networks: [{cidr: 192.0.2.0/24, policy: clients}]\npolicies: {clients: {default_action: block, rules: ${rules}}}\n`,
      );
      const pins = ['--pin-root', pinRoot, '--instance', instance];
      const policy = join(dir, 'policy.yaml');
      const ns = topo.server.name;
      const load = `load --ingress ${topo.link.b.ifname} --netns ${ns} --policy ${policy} --set audit_sampling=1`;
      await rxflow(['firewall', ...load.split(' '), ...pins]);

      const metricsPort = await freePort();
      const pipeline = join(dir, 'fwmetrics.yaml');
      writeFileSync(
        pipeline,
        [
          'sources:',
          `  fw: {type: firewall_metrics, instance: ${instance}, pin_root: ${pinRoot}, interval_ms: 200}`,
          `  audit: {type: firewall_audit, instance: ${instance}, pin_root: ${pinRoot}}`,
          'sinks:',
          `  metrics: {type: otel_metrics, inputs: [fw, audit], prometheus_port: ${metricsPort}}`,
          '',
        ].join('\n'),
      );
      const run = new Cli(['run', pipeline, '--no-status-socket']);
      await run.until((c) => c.logs().some((l) => l.msg === 'ready'), "the pipeline's 'ready' log");

      const promPort = await freePort();
      writeFileSync(
        join(dir, 'prometheus.yml'),
        [
          'global: {scrape_interval: 1s, scrape_timeout: 900ms}',
          'scrape_configs:',
          '  - job_name: rxflow',
          `    static_configs: [{targets: ['127.0.0.1:${metricsPort}']}]`,
          '',
        ].join('\n'),
      );
      const prom = spawn(
        'prometheus',
        [
          `--config.file=${join(dir, 'prometheus.yml')}`,
          `--storage.tsdb.path=${join(dir, 'tsdb')}`,
          `--web.listen-address=127.0.0.1:${promPort}`,
          '--log.level=warn',
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      let promLog = '';
      prom.stderr.on('data', (d: Buffer) => (promLog += d.toString()));
      cleanup.register(`prometheus ${prom.pid}`, () => killSync(prom.pid!, 5000));

      // Traffic: 10 datagrams to the allowed port (received, counted by the receiver), 4 to a blocked one.
      const sink = await startUdpSink({ ns: topo.server, port: 7001, family: 4, count: 10 });
      const allowed = await sendUdp({
        from: topo.client,
        to: '192.0.2.2',
        port: 7001,
        count: 10,
        payloadBytes: 10,
      });
      expect((await sink.result).received).toBe(10);
      const blocked = await sendUdp({
        from: topo.client,
        to: '192.0.2.2',
        port: 7003,
        count: 4,
        payloadBytes: 10,
      });
      const counters = async () =>
        JSON.parse(await rxflow(['firewall', 'counters', ...pins, '--json'])) as Record<string, number>;
      const deadline = Date.now() + 10_000;
      while ((await counters()).blocked !== blocked.sent && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      const cli = await counters();
      expect(cli).toMatchObject({ allowed: allowed.sent, blocked: blocked.sent });

      // Prometheus scrapes every second and the source samples every 200 ms: wait for the first
      // scrape of a sample taken after the traffic, up to a bound.
      let scraped: Record<string, number> = {};
      const until = Date.now() + 30_000;
      for (;;) {
        scraped = await scrapedCounters(promPort, instance).catch(() => ({}));
        if (scraped.blocked === cli.blocked && scraped.allowed === cli.allowed) break;
        if (Date.now() > until) {
          throw new Error(`prometheus never showed the counters: ${JSON.stringify(scraped)}\n${promLog}`);
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      // Nothing moved since: the CLI and Prometheus describe the same moment.
      expect(await counters()).toStrictEqual(cli);
      expect(scraped).toStrictEqual(cli);

      // Audit events by verdict: each blocked datagram, enforced, by the policy's default.
      const audit = await query(promPort, 'rxflow_firewall_audit_events_total');
      expect(audit.map((s) => [s.metric, Number(s.value[1])])).toStrictEqual([
        [
          expect.objectContaining({
            rxflow_firewall_action: 'block',
            rxflow_firewall_reason: 'policy_default',
            rxflow_firewall_enforced: 'true',
          }),
          blocked.sent,
        ],
      ]);
      // The one session the allowed datagrams opened, as the CLI lists it.
      const sessions = JSON.parse(await rxflow(['firewall', 'sessions', ...pins, '--json'])) as unknown[];
      const count = await query(promPort, `rxflow_firewall_sessions{rxflow_firewall_instance="${instance}"}`);
      expect(count.map((s) => Number(s.value[1]))).toStrictEqual([sessions.length]);
      expect(sessions).toHaveLength(1);

      run.signal('SIGTERM');
      expect(await run.exited).toEqual({ code: 0, signal: null });
      await rxflow(['firewall', 'unload', ...pins]);
    });
  },
  ['prometheus'],
);
