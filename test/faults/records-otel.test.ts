import { Subject } from 'rxjs';
import { expect, it } from 'vitest';
import { Ledger } from '../../src/ledger.js';
import { silentLogger } from '../../src/logger.js';
import type { FlowBatch } from '../../src/records/flow.js';
import otelMetricsModule from '../../src/sinks/otel_metrics.js';
import { describeWith } from '../fixtures/privilege.js';
import { flowRecord } from '../fixtures/records.js';
import { freePort, nonFinite, promtool, samples, waitFor } from './records-helpers.js';

/**
 * What reaches the otel_metrics sink without a source's check (a component of the pipeline's own,
 * a record built in code): control characters in an interface name, an endless name, counts of
 * 1e308, negative or NaN. The Prometheus endpoint, scraped over HTTP, stays valid text for
 * promtool with finite values; the records with bad counts are left out and dropped as
 * sink_failed.
 */
describeWith({ commands: ['promtool'] }, 'otel_metrics with hostile values', () => {
  it('sanitises label values and never makes a counter non-finite', async () => {
    const port = await freePort();
    const ledger = new Ledger();
    const sink = otelMetricsModule.build(
      { prometheus_port: port, prometheus_host: '127.0.0.1' },
      {
        id: 'metrics',
        logger: silentLogger(),
        ledger,
        counters: ledger.stage('metrics', 'otel_metrics', 'sink'),
      },
    );
    try {
      const input = new Subject<FlowBatch>();
      const consumed = sink.consume(input);
      // The sink reads its input once its endpoint is up.
      await waitFor('the sink to subscribe', () => input.observed);
      const long = `if-${'x'.repeat(300)}`;
      input.next([
        flowRecord({ interfaceName: 'eth0\u0000evil', octetDeltaCount: 100, packetDeltaCount: 1 }),
        flowRecord({
          interfaceName: 'eth1"} 9\n# TYPE x counter\nx',
          octetDeltaCount: 10,
          packetDeltaCount: 1,
        }),
        flowRecord({ interfaceName: '\u001b[31mred\u009b', octetDeltaCount: 1, packetDeltaCount: 1 }),
        flowRecord({ interfaceName: long, octetDeltaCount: 5, packetDeltaCount: 1 }),
        flowRecord({ interfaceName: 'eth2', octetDeltaCount: 1e308, packetDeltaCount: 1 }),
        flowRecord({ interfaceName: 'eth2', octetDeltaCount: 1e308, packetDeltaCount: 1 }),
        flowRecord({ interfaceName: 'eth2', octetDeltaCount: -50, packetDeltaCount: 1 }),
        flowRecord({ interfaceName: 'eth2', octetDeltaCount: 7, packetDeltaCount: NaN }),
        flowRecord({ interfaceName: 'eth2', octetDeltaCount: 7, packetDeltaCount: 2 }),
      ]);
      const url = `http://127.0.0.1:${port}/metrics`;
      let text = '';
      await waitFor('the metrics endpoint', async () => {
        text = await fetch(url)
          .then((res) => (res.ok ? res.text() : ''))
          .catch(() => '');
        return text.includes('rxflow_flow_bytes_total');
      });
      expect(await promtool(text)).toEqual({ code: 0, output: '' });
      const scraped = samples(text);
      expect(nonFinite(scraped)).toEqual([]);
      const bytes = Object.fromEntries(
        [...scraped]
          .filter(([k]) => k.startsWith('rxflow_flow_bytes_total{'))
          // Labels are sorted: network_interface_name first, then network_io_direction.
          .map(([k, v]): [string, number] => [
            /\{network_interface_name=(.*),network_io_direction=/.exec(k)![1]!,
            Number(v),
          ]),
      );
      expect(bytes).toEqual({
        'eth0\ufffdevil': 100,
        'eth1\\"} 9\ufffd# TYPE x counter\ufffdx': 10,
        '\ufffd[31mred\ufffd': 1,
        [`if-${'x'.repeat(122)}...`]: 5,
        eth2: 7,
      });
      expect(ledger.stage('metrics', 'otel_metrics').snapshot()).toMatchObject({
        received: 9,
        sent: 5,
        dropped: { sink_failed: 4 },
      });
      input.complete();
      await consumed;
    } finally {
      await sink.close();
    }
  });
});
