import { Kafka, Partitioners, logLevel, type Producer } from 'kafkajs';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { KafkaApiKey, KafkaErrorCode, type KafkaMockCluster } from '../../src/devtools/kafka-mock.js';
import { cleanup, isAlive } from '../fixtures/cleanup.js';
import { readWithKafkajs, readWithKcat, startKafkaMock } from '../fixtures/kafka.js';
import { describeWith } from '../fixtures/privilege.js';

function producer(kafka: KafkaMockCluster, retries: number): Producer {
  return new Kafka({
    clientId: 'rxflow-test',
    brokers: kafka.brokers,
    logLevel: logLevel.NOTHING,
    retry: { retries, initialRetryTime: 50, maxRetryTime: 200 },
    connectionTimeout: 500,
  }).producer({ allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
}

const records = (from: number, to: number) =>
  Array.from({ length: to - from }, (_, i) => ({ key: `k${from + i}`, value: `flow-${from + i}` }));

describeWith({ commands: ['kcat'] }, 'kafka mock cluster: a Kafka-protocol broker in its own process', () => {
  let kafka: KafkaMockCluster;
  const producers: Producer[] = [];
  beforeAll(async () => {
    kafka = await startKafkaMock();
  });
  afterEach(async () => {
    await Promise.all(producers.splice(0).map((p) => p.disconnect()));
  });
  afterAll(() => cleanup.dispose());

  it('reports a loopback bootstrap address', () => {
    expect(kafka.bootstrap).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(kafka.brokers).toEqual([kafka.bootstrap]);
  });

  it('stores exactly the records kafkajs produced, as kcat and a kafkajs consumer read them back', async () => {
    await kafka.createTopic('rxt-flows', 1);
    const p = producer(kafka, 2);
    producers.push(p);
    await p.connect();
    await p.send({ topic: 'rxt-flows', messages: records(0, 500) });
    await p.send({ topic: 'rxt-flows', messages: records(500, 1000) });

    const expected = records(0, 1000).map((r, i) => ({
      partition: 0,
      offset: i,
      key: r.key,
      value: r.value,
    }));
    expect(await readWithKcat(kafka.bootstrap, 'rxt-flows')).toEqual(expected);
    expect(await readWithKafkajs(kafka.brokers, 'rxt-flows', 1000)).toEqual(expected);
  });

  it('fails a produce while the broker is down and succeeds once it is up again', async () => {
    await kafka.createTopic('rxt-down', 1);
    const p = producer(kafka, 1);
    producers.push(p);
    await p.connect();
    await p.send({ topic: 'rxt-down', messages: records(0, 1) });

    await kafka.brokerDown(1);
    try {
      await expect(p.send({ topic: 'rxt-down', messages: records(1, 2) })).rejects.toThrow(
        `Connection error: connect ECONNREFUSED ${kafka.bootstrap}`,
      );
    } finally {
      await kafka.brokerUp(1);
    }
    await p.send({ topic: 'rxt-down', messages: records(2, 3) });

    const got = await readWithKcat(kafka.bootstrap, 'rxt-down');
    expect(got.map((r) => r.key)).toEqual(['k0', 'k2']);
  });

  it('surfaces an injected non-retriable produce error, and retries through retriable ones', async () => {
    await kafka.createTopic('rxt-errors', 1);
    const p = producer(kafka, 3);
    producers.push(p);
    await p.connect();

    await kafka.pushRequestErrors(KafkaApiKey.Produce, 1, KafkaErrorCode.TOPIC_AUTHORIZATION_FAILED);
    await expect(p.send({ topic: 'rxt-errors', messages: records(0, 1) })).rejects.toMatchObject({
      type: 'TOPIC_AUTHORIZATION_FAILED',
    });

    // Without retries, a retriable error surfaces too.
    const once = producer(kafka, 0);
    producers.push(once);
    await once.connect();
    await kafka.pushRequestErrors(KafkaApiKey.Produce, 1, KafkaErrorCode.NOT_ENOUGH_REPLICAS);
    await expect(once.send({ topic: 'rxt-errors', messages: records(1, 2) })).rejects.toThrow(
      'Messages are rejected since there are fewer in-sync replicas than required',
    );

    // With retries, two injected errors are absorbed; the retry-less producer then finds none left.
    await kafka.pushRequestErrors(KafkaApiKey.Produce, 2, KafkaErrorCode.NOT_ENOUGH_REPLICAS);
    await p.send({ topic: 'rxt-errors', messages: records(2, 3) });
    await once.send({ topic: 'rxt-errors', messages: records(3, 4) });

    const got = await readWithKcat(kafka.bootstrap, 'rxt-errors');
    expect(got).toEqual([
      { partition: 0, offset: 0, key: 'k2', value: 'flow-2' },
      { partition: 0, offset: 1, key: 'k3', value: 'flow-3' },
    ]);
  });

  it('answers a bad command with the reason', async () => {
    await expect(kafka.createTopic('bad topic')).rejects.toThrow(
      "kafka mock: topic name 'bad topic': use 1 to 249 of [A-Za-z0-9._-]",
    );
    await expect(kafka.brokerDown(7)).rejects.toThrow(/^kafka mock: down 7: BROKER_NOT_AVAILABLE: /);
  });

  it('stops: the process is gone and further commands say so', async () => {
    const other = await startKafkaMock();
    const pid = other.pid;
    expect(isAlive(pid)).toBe(true);
    await other.stop();
    expect(isAlive(pid)).toBe(false);
    expect(await other.exited).toEqual({ code: 0, signal: null });
    await expect(other.createTopic('late')).rejects.toThrow('kafka mock: exited (code 0)');
  });
});
