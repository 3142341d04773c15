import { afterAll, it } from 'vitest';
import type { KafkaMockCluster } from '../../src/devtools/kafka-mock.js';
import { cleanup } from '../fixtures/cleanup.js';
import { startKafkaMock } from '../fixtures/kafka.js';
import { outage } from '../fixtures/kafka-faults.js';
import { describeWith } from '../fixtures/privilege.js';

/**
 * Kafka broker outages under steady traffic (1,000 records/s), against the embedded broker (the
 * librdkafka mock rxflow demo uses, which does not check producer sequences). The judge is the
 * topic read back with kcat: records in it + the ledger's drops = records fed, none twice.
 */

describeWith({ commands: ['kcat'] }, 'kafka sink through a broker outage at 1,000 records/s', () => {
  const clusters: KafkaMockCluster[] = [];
  afterAll(async () => {
    await Promise.all(clusters.map((c) => c.stop()));
    await cleanup.dispose();
  });

  it.concurrent(
    'down 10 s with idempotence: every record fed is in the topic once or counted dropped',
    async () => {
      const cluster = await startKafkaMock();
      clusters.push(cluster);
      await outage(cluster, 'outage-10s-idem', true, 10_000);
    },
    60_000,
  );

  it.concurrent(
    'down 10 s without idempotence: every record fed is in the topic once or counted dropped',
    async () => {
      const cluster = await startKafkaMock();
      clusters.push(cluster);
      await outage(cluster, 'outage-10s-plain', false, 10_000);
    },
    60_000,
  );
});
