import { Subject, from } from 'rxjs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { KafkaMockCluster } from '../../src/devtools/kafka-mock.js';
import { Ledger } from '../../src/ledger.js';
import type { FlowBatch } from '../../src/records/flow.js';
import kafkaModule, { type KafkaSinkConfig } from '../../src/sinks/kafka.js';
import { cleanup } from '../fixtures/cleanup.js';
import { startKafkaMock } from '../fixtures/kafka.js';
import {
  balanced,
  droppedFor,
  faultRecords,
  feedSteady,
  pause,
  settleAndBalance,
  sinkContext,
  topicAccount,
} from '../fixtures/kafka-faults.js';
import { IdempotentBrokerProxy } from '../fixtures/kafka-idempotent-broker.js';
import { describeWith } from '../fixtures/privilege.js';

/**
 * The kafka sink against brokers that misbehave in their answers, through IdempotentBrokerProxy in
 * front of the mock cluster: answers out of order, answers dropped, answers slower than the
 * traffic. kcat reads each topic from the mock itself; records in it + the ledger's drops must be
 * the records fed, none twice.
 */

const NOT_ENOUGH_REPLICAS = 19;

describeWith({ commands: ['kcat'] }, 'kafka sink against misbehaving answers', () => {
  let cluster: KafkaMockCluster;
  const proxies: IdempotentBrokerProxy[] = [];

  beforeAll(async () => {
    cluster = await startKafkaMock();
  });

  afterAll(async () => {
    await Promise.all(proxies.map((p) => p.stop()));
    await cluster?.stop();
    await cleanup.dispose();
  });

  const proxy = async (): Promise<IdempotentBrokerProxy> => {
    const p = await IdempotentBrokerProxy.start(cluster.brokers);
    proxies.push(p);
    return p;
  };

  const config = (topic: string, brokers: string[]): KafkaSinkConfig => ({
    bootstrap_servers: brokers,
    topic,
    linger_ms: 2,
    batch_max_records: 200,
    max_in_flight: 5,
    request_timeout_ms: 500,
    retry_initial_ms: 50,
    retry_max_ms: 200,
  });

  /** Feeds `count` records in batches of 200, runs the sink to the end, and checks the topic. */
  const runAndCount = async (topic: string, sinkConfig: KafkaSinkConfig, count: number) => {
    const ledger = new Ledger();
    const sink = kafkaModule.build(sinkConfig, sinkContext('out', ledger));
    const input: FlowBatch[] = [];
    for (let i = 0; i < count; i += 200) input.push(faultRecords(i, 200));
    await sink.consume(from(input));
    await sink.close();
    const snapshot = ledger.stage('out', 'kafka').snapshot();
    expect(snapshot.inFlight).toBe(0);
    const { indexes: _indexes, ...account } = await topicAccount(cluster.bootstrap, topic, count, snapshot);
    return { account, snapshot };
  };

  for (const checkSequences of [false, true]) {
    const broker = checkSequences ? 'a broker that checks sequences' : 'the embedded broker';
    it.concurrent(
      `out-of-order acknowledgements, from ${broker}: a batch counts written by its own answer only`,
      async () => {
        const topic = `answers-reordered-${checkSequences}`;
        await cluster.createTopic(topic, 1);
        const p = await proxy();
        p.checkSequences = checkSequences;
        p.reorderProduceAnswers = true;
        // Requests 3 and 8 are refused with an error worth retrying; the answer to the request after
        // each comes back first, saying written.
        p.faults = [
          { at: 3, fault: { refuse: NOT_ENOUGH_REPLICAS } },
          { at: 8, fault: { refuse: NOT_ENOUGH_REPLICAS } },
        ];
        const { account } = await runAndCount(topic, config(topic, p.brokers), 4000);
        expect(account).toEqual(balanced(4000, 0));
        expect(p.refusedRecords).toBeGreaterThan(0);
        expect(p.reordered).toBeGreaterThan(0);
        expect(p.faults).toEqual([]);
        expect(p.problems).toEqual([]);
      },
      60_000,
    );
  }

  it.concurrent(
    'requests lost before the embedded broker saw them, no answer ever: each is resent and written once',
    async () => {
      const topic = 'answers-vanished';
      await cluster.createTopic(topic, 1);
      const p = await proxy();
      p.checkSequences = false;
      // Request 3 never reaches the broker and its connection stays open: it times out after 500 ms,
      // while the requests after it are written and acknowledged. Request 9 is lost with its
      // connection.
      p.faults = [
        { at: 3, fault: 'vanish' },
        { at: 9, fault: 'cut' },
      ];
      const { account } = await runAndCount(topic, config(topic, p.brokers), 4000);
      expect(account).toEqual(balanced(4000, 0));
      expect(p.vanishedRecords).toBeGreaterThan(0);
      expect(p.faults).toEqual([]);
      expect(p.problems).toEqual([]);
    },
    60_000,
  );

  it.concurrent(
    'answers dropped after a Kafka broker wrote the batches (closed with the connection, or swallowed on an open one): the resends are answered as duplicates, every record once',
    async () => {
      const topic = 'answers-dropped';
      await cluster.createTopic(topic, 3);
      const p = await proxy();
      p.faults = [
        { at: 2, fault: 'lose' },
        { at: 5, fault: 'swallow' },
        { at: 9, fault: 'swallow' },
        { at: 14, fault: 'lose' },
      ];
      const { account } = await runAndCount(topic, config(topic, p.brokers), 6000);
      expect(account).toEqual(balanced(6000, 0));
      expect(p.lostRecords).toBeGreaterThan(0);
      expect(p.model.counts.duplicates).toBeGreaterThan(0);
      expect(p.faults).toEqual([]);
      expect(p.problems).toEqual([]);
    },
    60_000,
  );
  it.concurrent(
    'a broker slower than the traffic: the buffer fills, the excess is counted sink_buffer_full, the rest is written',
    async () => {
      const topic = 'answers-slow';
      await cluster.createTopic(topic, 1);
      const p = await proxy();
      // One request of 100 records in flight, answered 300 ms after the broker wrote it: about
      // 330 records/s against 1,000 fed.
      p.produceDelayMs = 300;
      const ledger = new Ledger();
      const sink = kafkaModule.build(
        {
          ...config(topic, p.brokers),
          batch_max_records: 100,
          max_in_flight: 1,
          request_timeout_ms: 5000,
          buffer_max_records: 1500,
        },
        sinkContext('out', ledger),
      );
      const input = new Subject<FlowBatch>();
      const consumed = sink.consume(input);
      const feeder = feedSteady(input);
      try {
        await pause(4000);
      } finally {
        feeder.stop();
      }
      const snapshot = await settleAndBalance(
        { input, consumed, sink, ledger },
        cluster.bootstrap,
        topic,
        feeder.fed,
      );
      expect(Object.keys(snapshot.dropped)).toEqual(['sink_buffer_full']);
      expect(droppedFor(snapshot, 'sink_buffer_full')).toBeGreaterThan(0);
      expect(p.problems).toEqual([]);
    },
    60_000,
  );
});
