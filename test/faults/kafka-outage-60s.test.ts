import { afterAll, it } from 'vitest';
import type { KafkaMockCluster } from '../../src/devtools/kafka-mock.js';
import { cleanup } from '../fixtures/cleanup.js';
import { startKafkaMock } from '../fixtures/kafka.js';
import { outage } from '../fixtures/kafka-faults.js';
import { describeWith } from '../fixtures/privilege.js';

/**
 * The long outage of the fault suite, in a file of its own so it runs beside the short ones: every
 * broker down 60 s at 1,000 records/s with idempotence on, against the embedded broker. Records in
 * the topic (kcat) + the ledger's drops = records fed, none twice.
 */
describeWith({ commands: ['kcat'] }, 'kafka sink through a 60 s broker outage', () => {
  let cluster: KafkaMockCluster | undefined;
  afterAll(async () => {
    await cluster?.stop();
    await cleanup.dispose();
  });

  it('down 60 s with idempotence: every record fed is in the topic once or counted dropped', async () => {
    cluster = await startKafkaMock();
    await outage(cluster, 'outage-60s-idem', true, 60_000);
  }, 120_000);
});
