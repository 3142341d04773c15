import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readStatus } from '../../src/cli/status.js';
import type { KafkaMockCluster } from '../../src/devtools/kafka-mock.js';
import { cleanup } from '../fixtures/cleanup.js';
import { startKafkaMock } from '../fixtures/kafka.js';
import { faultRecord, topicAccount } from '../fixtures/kafka-faults.js';
import { describeWith } from '../fixtures/privilege.js';
import { Cli, assertBuilt } from '../kernel/cli-helpers.js';

/**
 * SIGTERM while the Kafka brokers are away: `rxflow run` drains within the pipeline's
 * drain_timeout_ms (plus 2 s), exits 0, logs the final ledger with what the sink still held
 * counted as shutdown, and the topic read back with kcat + those drops = the lines of the file fed.
 */

const DRAIN_MS = 3000;
const LINES = 2000;

describeWith({ commands: ['kcat'] }, 'rxflow run stopped during a Kafka outage', () => {
  let cluster: KafkaMockCluster;
  let dir: string;

  beforeAll(async () => {
    assertBuilt();
    cluster = await startKafkaMock();
    dir = mkdtempSync(join(tmpdir(), 'rxflow-kfault-sigterm-'));
  });

  afterAll(async () => {
    await cluster?.stop();
    await cleanup.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  it('exits 0 within drain_timeout_ms + 2 s, logs the ledger, counts what the sink held as shutdown; topic + drops = lines fed', async () => {
    const topic = 'sigterm';
    await cluster.createTopic(topic, 3);
    const flows = join(dir, 'flows.jsonl');
    writeFileSync(
      flows,
      Array.from({ length: LINES }, (_, i) => `${JSON.stringify(faultRecord(i))}\n`).join(''),
    );
    const file = join(dir, 'sigterm.yaml');
    writeFileSync(
      file,
      [
        `drain_timeout_ms: ${DRAIN_MS}`,
        'sources:',
        '  replay:',
        '    type: file_replay',
        `    paths: [${JSON.stringify(flows)}]`,
        '    batch_size: 100',
        '    rate_limit_records_per_s: 1000',
        'sinks:',
        '  out:',
        '    type: kafka',
        '    inputs: [replay]',
        `    bootstrap_servers: [${cluster.brokers.map((b) => JSON.stringify(b)).join(', ')}]`,
        `    topic: ${topic}`,
        '',
      ].join('\n'),
    );
    const socket = join(dir, 'sigterm.sock');
    const cli = new Cli(['run', file, '--status-socket', socket]);
    await cli.until((c) => c.logs().some((l) => l.msg === 'ready'), "the 'ready' log");
    const sink = async () => (await readStatus(socket)).components.find((c) => c.id === 'out')!;
    let out = await sink();
    // Some records written, then the brokers go away while the rest of the file is fed.
    for (let deadline = Date.now() + 20_000; out.sent < 300 && Date.now() < deadline;) {
      await new Promise((r) => setTimeout(r, 50));
      out = await sink();
    }
    expect(out.sent).toBeGreaterThanOrEqual(300);
    await cluster.brokerDown(-1);
    for (let deadline = Date.now() + 20_000; out.received < LINES && Date.now() < deadline;) {
      await new Promise((r) => setTimeout(r, 50));
      out = await sink();
    }
    expect(out.received).toBe(LINES);
    const signalled = Date.now();
    cli.signal('SIGTERM');
    const exit = await cli.exited;
    const tookMs = Date.now() - signalled;
    console.log(
      tookMs,
      signalled,
      cli.stderr
        .split('\n')
        .filter((l) => !l.includes('"level":20'))
        .slice(-15)
        .join('\n'),
    );
    expect(exit).toEqual({ code: 0, signal: null });
    expect(tookMs).toBeLessThan(DRAIN_MS + 2000);

    const ledger = cli.logs().filter((l) => l.msg === 'ledger');
    expect(ledger).toHaveLength(1);
    const final = ledger[0] as {
      seen: number;
      dropped: Record<string, number>;
      inFlight: number;
      sinks: {
        id: string;
        handed: number;
        exported: number;
        dropped: Record<string, number>;
        inFlight: number;
      }[];
    };
    expect(final).toMatchObject({ seen: LINES, inFlight: 0 });
    const kafka = final.sinks.find((k) => k.id === 'out')!;
    expect(Object.keys(kafka.dropped)).toEqual(['shutdown']);
    const shutdown = kafka.dropped.shutdown!;
    expect(shutdown).toBeGreaterThan(0);
    expect(kafka).toEqual({
      ...kafka,
      handed: LINES,
      exported: LINES - shutdown,
      inFlight: 0,
    });

    await cluster.brokerUp(-1);
    const { indexes: _indexes, ...account } = await topicAccount(cluster.bootstrap, topic, LINES, {
      sent: kafka.exported,
      dropped: kafka.dropped,
    });
    expect(account).toEqual({
      fed: LINES,
      inTopic: LINES - shutdown,
      duplicates: 0,
      dropped: shutdown,
      accounted: LINES,
      ledgerSent: LINES - shutdown,
    });
  }, 60_000);
});
