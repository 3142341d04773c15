import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { DEMO_OWNER_ENV, demoPinDir } from '../../src/devtools/demo-network.js';
import { linkNames, netnsNames, processesWithEnv } from '../../src/devtools/system.js';
import { cleanup, makeTempDir } from '../fixtures/cleanup.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { Cli, assertBuilt } from './cli-helpers.js';

/** A row of the top table: the demo's busiest IPv4 UDP flow, counted on the server's veth end. */
const UDP_ROW =
  /^192\.0\.2\.1 +40001 +192\.0\.2\.2 +9001 +udp +ingress +rxdemo-s +[\d,]+ +[\d.]+ [kMG]?B +[\d.]+ [kMG]?bit\/s$/m;

kernelDescribe(
  'rxflow demo',
  () => {
    let runDir: string;

    /** Nothing of the demo is left: namespaces, veths, pins, Kafka mock, lock, status socket. */
    function expectNothingLeft(cli: Cli): void {
      expect(netnsNames().filter((n) => n.startsWith('rxdemo'))).toEqual([]);
      expect(linkNames().filter((n) => n.startsWith('rxdemo'))).toEqual([]);
      expect(existsSync(demoPinDir())).toBe(false);
      expect(processesWithEnv(DEMO_OWNER_ENV, (owner) => owner === String(cli.pid))).toEqual([]);
      expect(existsSync('/run/rxflow/demo.pid')).toBe(false);
      expect(existsSync(join(runDir, 'demo.sock'))).toBe(false);
    }

    beforeAll(() => {
      assertBuilt();
      runDir = makeTempDir('rxcl');
    });
    afterAll(() => cleanup.dispose());

    it('--duration-s 6 without a terminal prints plain tables with flows, drains, removes everything and exits 0', async () => {
      const cli = new Cli(['demo', '--duration-s', '6'], { RXFLOW_RUN_DIR: runDir });
      expect(await cli.exited).toEqual({ code: 0, signal: null });
      expect(cli.stdout).not.toContain('\x1b[');
      expect(cli.stdout).toMatch(UDP_ROW);
      // A plain table every 3 s: at least one while it ran, and the summary's after the drain.
      const tables = cli.stdout.split('\n').filter((l) => l.startsWith('top flows by bytes'));
      expect(tables.length).toBeGreaterThanOrEqual(2);
      const summary = cli.stdout.slice(cli.stdout.indexOf('rxflow demo ran'));
      const written = /^kafka {5}([\d,]+) records written to topic flows$/m.exec(summary)?.[1];
      const ledger =
        /^ledger {4}seen ([\d,]+) {2}written to kafka ([\d,]+) {2}dropped 0 {2}in flight 0$/m.exec(summary);
      // Drained: every record the kernel gave is in Kafka, none dropped or held.
      expect(ledger?.[1]).toBe(written);
      expect(ledger?.[2]).toBe(written);
      expect(Number(written?.replace(/,/g, ''))).toBeGreaterThan(0);
      expect(summary).toMatch(UDP_ROW);
      expect(cli.stdout).toMatch(
        /^demo: removed namespaces rxdemo-cli, rxdemo-srv with veth rxdemo-c\/rxdemo-s; kafka mock \(pid \d+\)$/m,
      );
      expectNothingLeft(cli);
    });

    it('stops on SIGINT the same way, and a demo killed outright is cleaned up by the next one', async () => {
      const first = new Cli(['demo', '--refresh-s', '1'], { RXFLOW_RUN_DIR: runDir });
      await first.until((c) => UDP_ROW.test(c.stdout), 'a table with flows');
      // SIGKILL leaves the network, the pins and the traffic behind.
      first.signal('SIGKILL');
      expect((await first.exited).signal).toBe('SIGKILL');
      expect(
        netnsNames()
          .filter((n) => n.startsWith('rxdemo'))
          .sort(),
      ).toEqual(['rxdemo-cli', 'rxdemo-srv']);

      const second = new Cli(['demo', '--refresh-s', '1'], { RXFLOW_RUN_DIR: runDir });
      await second.until((c) => UDP_ROW.test(c.stdout), 'a table with flows');
      expect(second.stdout).toMatch(
        /^demo: removed what an earlier demo left: namespaces rxdemo-cli, rxdemo-srv, pins \/sys\/fs\/bpf\/rxflow-demo(, \d+ process(es)?)?$/m,
      );
      second.signal('SIGINT');
      expect(await second.exited).toEqual({ code: 0, signal: null });
      expect(second.stdout).toContain('demo: stopping (SIGINT): traffic, then draining the pipeline');
      expect(second.stdout).toContain('rxflow demo ran');
      expectNothingLeft(second);
      expectNothingLeft(first);
    });
  },
  ['iperf3', 'setpriv'],
);
