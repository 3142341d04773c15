import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import type { ComponentContext } from '../../../src/component.js';
import { Ledger } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import type { FlowRecord } from '../../../src/records/flow.js';
import { retriable } from '../../../src/sinks/kafka/sender.js';
import { ProduceError, kafkaErrorRetriable, produceVersion } from '../../../src/kafka/client.js';
import { NATIVE_SYNC_MAX_BYTES } from '../../../src/kafka/codec-native.js';
import {
  CODEC_GZIP,
  CODEC_LZ4,
  CODEC_NONE,
  CODEC_ZSTD,
  batchCodec,
  gzipBatch,
  lz4Batch,
  openCodecLibrary,
  requireProduceVersion,
  zstdBatch,
} from '../../../src/kafka/compress.js';
import {
  DECOMPRESSED_MAX_BYTES,
  DECOMPRESS_SYNC_MAX_BYTES,
  decompressor,
  lz4Decompress,
  snappyDecompress,
  zstdDecompress,
} from '../../../src/kafka/decompress.js';
import { crc32cJs } from '../../../src/kafka/crc32c.js';
import { RequestEncoder, type EncoderOptions } from '../../../src/sinks/kafka/encode.js';
import { BATCH_HEADER_BYTES, BufferPool, RecordBatchWriter } from '../../../src/kafka/record-batch.js';
import { cleanup, makeTempDir } from '../../fixtures/cleanup.js';
import { describeWith } from '../../fixtures/privilege.js';
import { crc32cBitwise, decodeBatches } from '../../fixtures/record-batches.js';

afterAll(() => cleanup.dispose());

/**
 * Record batch compression, checked with decoders that share nothing with the sink: the gzip, lz4
 * and zstd command-line tools decompress the records section, and kafkajs's batch decoder reads
 * the records back out of it.
 */

const NOW = 1_700_000_123_456;

/** Varied records (addresses, ports, counters, optional fields), so batches compress realistically. */
function record(i: number): FlowRecord {
  const r: FlowRecord = {
    ipVersion: 4,
    sourceIPv4Address: `10.${(i * 7) % 256}.${(i * 13) % 256}.${i % 251}`,
    destinationIPv4Address: `192.0.${(i * 3) % 256}.${(i * 11) % 256}`,
    sourceTransportPort: 1024 + ((i * 7919) % 60000),
    destinationTransportPort: [443, 53, 80, 8080][i % 4]!,
    protocolIdentifier: i % 5 === 0 ? 17 : 6,
    octetDeltaCount: (i * 104729) % 10_000_000,
    packetDeltaCount: 1 + ((i * 31) % 9000),
    flowStartMilliseconds: 1_700_000_000_000 + i * 17,
    flowEndMilliseconds: 1_700_000_000_000 + i * 17 + ((i * 97) % 60_000),
    tcpControlBits: (i * 5) % 64,
    ipDiffServCodePoint: i % 9 === 0 ? 46 : 0,
    ingressInterface: 2 + (i % 5),
    flowDirection: (i % 2) as 0 | 1,
    sourceMacAddress: `02:00:00:00:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`,
    destinationMacAddress: '02:00:00:00:00:01',
    ethernetType: 0x0800,
    interfaceName: `eth${i % 3}`,
  };
  if (i % 7 === 3) {
    r.encapsulationType = 'vxlan';
    r.virtualNetworkIdentifier = 4000 + (i % 100);
    r.tunnelSourceIPAddress = '198.51.100.1';
    r.tunnelDestinationIPAddress = `198.51.100.${2 + (i % 200)}`;
  }
  return r;
}

const range = (from: number, count: number): FlowRecord[] =>
  Array.from({ length: count }, (_, k) => record(from + k));

function encoder(options: Partial<EncoderOptions> = {}): RequestEncoder {
  return new RequestEncoder({
    encoding: 'json',
    recordsPerMessage: 1,
    key: 'none',
    compression: 'none',
    ...options,
  });
}

/** An uncompressed batch of `records` (one JSON message each) for one partition. */
async function plainBatch(records: FlowRecord[]): Promise<Buffer> {
  if (records.length === 0) return new RecordBatchWriter(new BufferPool(1 << 20), 1024).finish(NOW);
  const out = await encoder().encode(records, 1, 400, NOW);
  return Buffer.from(out.batches[0]!.data);
}

type Codec = 'gzip' | 'lz4' | 'zstd';

const compressors: Record<Codec, (batch: Buffer) => Promise<Buffer>> = {
  gzip: gzipBatch,
  lz4: lz4Batch,
  zstd: zstdBatch,
};
const codecBits: Record<Codec, number> = { gzip: CODEC_GZIP, lz4: CODEC_LZ4, zstd: CODEC_ZSTD };

/** The records section decompressed by the codec's own command-line tool. */
function decompressWithCli(codec: Codec, data: Uint8Array): Buffer {
  return execFileSync(codec, ['-d', '-c', '-q'], { input: data, maxBuffer: 256 << 20 });
}

/** The batch with its records decompressed and the header saying so, for kafkajs's decoder. */
function inflated(compressed: Buffer, records: Buffer): Buffer {
  const b = Buffer.concat([compressed.subarray(0, BATCH_HEADER_BYTES), records]);
  b.writeInt32BE(b.length - 12, 8);
  b.writeInt16BE(b.readInt16BE(21) & ~7, 21);
  return b;
}

/** The header fields compression rewrites, and the bytes it must leave alone. */
function header(b: Buffer) {
  return {
    length: b.readInt32BE(8),
    crc: b.readUInt32BE(17),
    attributes: b.readInt16BE(21),
    unchanged: Buffer.concat([b.subarray(0, 8), b.subarray(12, 17), b.subarray(23, BATCH_HEADER_BYTES)]),
  };
}

describeWith({ commands: ['gzip', 'lz4', 'zstd'] }, 'kafka record batch compression', () => {
  const sizes = { empty: 0, small: 3, large: 9000 } as const;

  for (const codec of ['gzip', 'lz4', 'zstd'] as const) {
    for (const [size, count] of Object.entries(sizes)) {
      it(`${codec}, ${size} batch: the header names the codec with the new length and CRC-32C; the ${codec} tool restores the records byte for byte`, async () => {
        const records = range(0, count);
        const plain = await plainBatch(records);
        if (size === 'large') expect(plain.length).toBeGreaterThan(4 << 20);
        const out = await compressors[codec](plain);

        expect(header(out)).toEqual({
          length: out.length - 12,
          crc: crc32cBitwise(out.subarray(21)),
          attributes: codecBits[codec],
          unchanged: header(plain).unchanged,
        });
        expect(crc32cJs(out, 21)).toBe(out.readUInt32BE(17));
        expect(batchCodec(out)).toBe(codecBits[codec]);
        expect(batchCodec(plain)).toBe(CODEC_NONE);

        const restored = decompressWithCli(codec, out.subarray(BATCH_HEADER_BYTES));
        expect(restored.equals(plain.subarray(BATCH_HEADER_BYTES))).toBe(true);
        expect(restored.length).toBe(plain.length - BATCH_HEADER_BYTES);
        const messages = await decodeBatches([{ partition: 0, data: inflated(out, restored) }]);
        expect(messages.map((m) => JSON.parse(m.value.toString()) as unknown)).toEqual(records);
        if (size === 'large') expect(out.length).toBeLessThan(plain.length / 3);
      });
    }
  }

  it("lz4 batches are LZ4 frames as Kafka's Java reader and librdkafka want them: independent 64 KiB blocks, no content size, no checksums but the header's", async () => {
    const plain = await plainBatch(range(0, 2000));
    const frame = (await lz4Batch(plain)).subarray(BATCH_HEADER_BYTES);
    expect(frame.readUInt32LE(0)).toBe(0x184d2204);
    // FLG: version 01, block independence; no block checksum, content size, content checksum or dict id.
    expect(frame[4]).toBe(0x60);
    // BD: block maximum size 64 KiB.
    expect(frame[5]).toBe(0x40);
    // Then blocks, each a 4-byte size (high bit: stored uncompressed) and its data, up to the end
    // mark; with no content checksum, the end mark is the frame's last 4 bytes.
    let pos = 7;
    let blocks = 0;
    for (;;) {
      const size = frame.readUInt32LE(pos);
      pos += 4;
      if (size === 0) break;
      expect(size & 0x7fffffff).toBeLessThanOrEqual(64 << 10);
      pos += size & 0x7fffffff;
      blocks++;
    }
    expect(pos).toBe(frame.length);
    expect(blocks).toBe(Math.ceil((plain.length - BATCH_HEADER_BYTES) / (64 << 10)));
  });

  it('zstd batches are one zstd frame that records the size of the records', async () => {
    const plain = await plainBatch(range(0, 2000));
    const frame = (await zstdBatch(plain)).subarray(BATCH_HEADER_BYTES);
    expect(frame.readUInt32LE(0)).toBe(0xfd2fb528);
    // zstd --list reads files only.
    const file = path.join(makeTempDir(), 'records.zst');
    fs.writeFileSync(file, frame);
    const listed = execFileSync('zstd', ['-l', '-v', file], {
      stdio: ['ignore', 'pipe', 'ignore'],
    }).toString();
    expect(listed).toContain('# Zstandard Frames: 1\n');
    expect(listed).toContain(`Decompressed Size: `);
    expect(listed).toContain(`(${plain.length - BATCH_HEADER_BYTES} B)\n`);
  });

  it('many batches compressed at once each come back intact (native memory and zstd contexts are not shared between calls)', async () => {
    const plains = await Promise.all(
      Array.from({ length: 12 }, (_, k) => plainBatch(range(k * 1000, 600 + k * 50))),
    );
    for (const codec of ['lz4', 'zstd'] as const) {
      const outs = await Promise.all(plains.map((p) => compressors[codec](p)));
      outs.forEach((out, k) => {
        const restored = decompressWithCli(codec, out.subarray(BATCH_HEADER_BYTES));
        expect({ codec, k, equal: restored.equals(plains[k]!.subarray(BATCH_HEADER_BYTES)) }).toEqual({
          codec,
          k,
          equal: true,
        });
        expect(out.readUInt32BE(17)).toBe(crc32cBitwise(out.subarray(21)));
      });
    }
  });

  it('the encoder compresses every partition batch of a keyed request, and each decodes to its records', async () => {
    const records = range(0, 800);
    for (const compression of ['lz4', 'zstd'] as const) {
      const out = await encoder({ compression, key: 'flow' }).encode(records, 4, 400, NOW);
      expect(out.batches.map((b) => b.partition)).toEqual([0, 1, 2, 3]);
      expect(out.bytes).toBe(out.batches.reduce((n, b) => n + b.data.length, 0));
      const seen: unknown[] = [];
      for (const b of out.batches) {
        expect(batchCodec(b.data)).toBe(codecBits[compression]);
        const restored = decompressWithCli(compression, b.data.subarray(BATCH_HEADER_BYTES));
        const messages = await decodeBatches([{ partition: b.partition, data: inflated(b.data, restored) }]);
        expect(messages).toHaveLength(b.records);
        for (const m of messages) seen.push(JSON.parse(m.value.toString()));
      }
      const order = (x: FlowRecord, y: FlowRecord): number =>
        x.flowStartMilliseconds - y.flowStartMilliseconds;
      expect((seen as FlowRecord[]).sort(order)).toEqual(records);
    }
  });
});

describe('where lz4 and zstd run', () => {
  /** Event loop turns (setImmediate rounds) before `work` settles. */
  async function turnsDuring(work: () => Promise<unknown>): Promise<number> {
    let turns = 0;
    let done = false;
    const spin = (): void => {
      if (done) return;
      turns++;
      setImmediate(spin);
    };
    setImmediate(spin);
    await work();
    done = true;
    return turns;
  }

  for (const [codec, compress] of [
    ['lz4', lz4Batch],
    ['zstd', zstdBatch],
  ] as const) {
    it(`${codec}: a multi-megabyte batch compresses on a worker thread while the event loop runs; a batch up to ${NATIVE_SYNC_MAX_BYTES} bytes of records on the JS thread`, async () => {
      const big = await plainBatch(range(0, 9000));
      expect(await turnsDuring(() => compress(big))).toBeGreaterThan(0);
      const small = await plainBatch(range(0, 20));
      expect(small.length - BATCH_HEADER_BYTES).toBeLessThanOrEqual(NATIVE_SYNC_MAX_BYTES);
      expect(await turnsDuring(() => compress(small))).toBe(0);
    });
  }
});

describe('codec libraries', () => {
  afterEach(() => {
    vi.doUnmock('koffi');
    vi.resetModules();
  });

  /** Fresh modules from here on, whose koffi cannot load `file`. */
  function withoutLibrary(file: string): void {
    vi.resetModules();
    vi.doMock('koffi', async (importOriginal) => {
      const actual = (await importOriginal<{ default: { load: (f: string) => unknown } }>()).default;
      const load = (f: string): unknown => {
        if (f === file) throw new Error(`${f}: cannot open shared object file: No such file or directory`);
        return actual.load(f);
      };
      return { default: Object.assign(Object.create(actual) as object, { load }) };
    });
  }

  function context(): ComponentContext {
    const ledger = new Ledger();
    return { id: 'out', logger: silentLogger(), ledger, counters: ledger.stage('out', 'kafka', 'sink') };
  }

  for (const [codec, file, pkg] of [
    ['zstd', 'libzstd.so.1', 'libzstd1'],
    ['lz4', 'liblz4.so.1', 'liblz4-1'],
  ] as const) {
    it(`building a sink with compression ${codec} without ${file} fails at once, naming the package to install`, async () => {
      withoutLibrary(file);
      const { default: kafka } = await import('../../../src/sinks/kafka.js');
      const config = { bootstrap_servers: ['127.0.0.1:9'], topic: 'flows', compression: codec };
      let thrown: unknown;
      try {
        kafka.build(config, context());
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toMatchObject({
        name: 'KafkaError',
        code: 'ENOCODEC',
        message: `kafka sink compression ${codec}: ${file} not found; install ${pkg} (bash scripts/setup.sh)`,
      });
      expect((thrown as Error).cause).toBeInstanceOf(Error);
      // The other codecs do not need that library.
      const other = codec === 'zstd' ? 'lz4' : 'zstd';
      for (const compression of ['none', 'gzip', other] as const) {
        await kafka.build({ ...config, compression }, context()).close();
      }
    });
  }

  for (const [codec, file, pkg] of [
    ['zstd', 'libzstd.so.1', 'libzstd1'],
    ['lz4', 'liblz4.so.1', 'liblz4-1'],
  ] as const) {
    it(`without ${file}, ${codec} decompression fails naming the package to install, and the other codec still works`, async () => {
      const other = codec === 'zstd' ? 'lz4' : 'zstd';
      const records = (await plainBatch(range(0, 30))).subarray(BATCH_HEADER_BYTES);
      const frames = {
        lz4: (await lz4Batch(await plainBatch(range(0, 30)))).subarray(BATCH_HEADER_BYTES),
        zstd: (await zstdBatch(await plainBatch(range(0, 30)))).subarray(BATCH_HEADER_BYTES),
      };
      withoutLibrary(file);
      const fresh = await import('../../../src/kafka/decompress.js');
      const expected = {
        name: 'KafkaError',
        code: 'ENOCODEC',
        message: `kafka consumer decompression ${codec}: ${file} not found; install ${pkg} (bash scripts/setup.sh)`,
      };
      let thrown: unknown;
      try {
        fresh.decompressor(codec);
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toMatchObject(expected);
      expect((thrown as Error).cause).toBeInstanceOf(Error);
      const decompress = codec === 'lz4' ? fresh.lz4Decompress : fresh.zstdDecompress;
      await expect(decompress(frames[codec])).rejects.toMatchObject(expected);
      // Looked for again on every call, not remembered as missing.
      await expect(decompress(frames[codec])).rejects.toMatchObject(expected);
      const restored = await fresh.decompressor(other)(frames[other]);
      expect(restored.equals(records)).toBe(true);
    });
  }

  it('a library without a function the codec needs is refused the same way', () => {
    expect(() =>
      openCodecLibrary('lz4', 'liblz4.so.1', 'liblz4-1', (lib) => lib.func('int LZ4_no_such_function(void)')),
    ).toThrow(
      /^kafka sink compression lz4: liblz4\.so\.1 cannot be used \(.*LZ4_no_such_function.*\); install liblz4-1 \(bash scripts\/setup\.sh\)$/,
    );
  });
});

describe('zstd and the Produce version', () => {
  const batchWith = (codec: number): { data: Buffer } => {
    const data = Buffer.alloc(BATCH_HEADER_BYTES);
    data.writeInt16BE(codec, 21);
    return { data };
  };
  const message =
    'kafka sink compression zstd: the broker speaks Produce up to v5, zstd batches need v7 (Kafka 2.1); upgrade the brokers or set compression to lz4, gzip or none';

  it('zstd batches to a broker below Produce v7 fail at once, not retriable, saying what to do', () => {
    const version = produceVersion({ versions: { 0: { minVersion: 0, maxVersion: 5 } } });
    expect(version).toBe(5);
    let thrown: unknown;
    try {
      requireProduceVersion([batchWith(CODEC_LZ4), batchWith(CODEC_ZSTD)], version);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toMatchObject({ name: 'KafkaError', code: 'ECODECVERSION', message, retriable: false });
    // As the transport reports it: a partition failure no retry can mend, so the sink drops it.
    const failure = new ProduceError('flows', [{ partition: 2, error: thrown as Error }]);
    expect(failure.message).toBe(
      `kafka sink topic flows: 1 partition(s) not written, partition 2: ${message}`,
    );
    expect(kafkaErrorRetriable(failure)).toBe(false);
    expect(retriable(failure)).toBe(false);
  });

  it('zstd goes from Produce v7; lz4, gzip and uncompressed batches with any version from v3', () => {
    const v7 = produceVersion({ versions: { 0: { minVersion: 0, maxVersion: 9 } } });
    expect(v7).toBe(7);
    expect(() => requireProduceVersion([batchWith(CODEC_ZSTD)], v7)).not.toThrow();
    for (const version of [3, 4, 5, 6])
      expect(() =>
        requireProduceVersion([batchWith(CODEC_NONE), batchWith(CODEC_GZIP), batchWith(CODEC_LZ4)], version),
      ).not.toThrow();
    expect(() => requireProduceVersion([batchWith(CODEC_ZSTD)], 6)).toThrow(/zstd batches need v7/);
  });
});

// --------------------------------------------------------------------------------------------
// Decompression (the kafka_consumer source)

const decompressors = { lz4: lz4Decompress, zstd: zstdDecompress } as const;

/** `data` compressed by the codec's command-line tool with `args`. */
function compressWithCli(codec: 'lz4' | 'zstd', args: readonly string[], data: Uint8Array): Buffer {
  return execFileSync(codec, [...args, '-c', '-q'], {
    input: data,
    maxBuffer: 256 << 20,
    stdio: ['pipe', 'pipe', 'ignore'],
  });
}

/** Made once, on first use: encoding 9000 records takes a while. */
function once<T>(make: () => Promise<T>): () => Promise<T> {
  let made: Promise<T> | undefined;
  return () => (made ??= make());
}

const smallRecords = once(async () => (await plainBatch(range(0, 3))).subarray(BATCH_HEADER_BYTES));
const largeRecords = once(async () => (await plainBatch(range(0, 9000))).subarray(BATCH_HEADER_BYTES));

/** What a decompression rejects with. */
async function failure(work: Promise<unknown>): Promise<unknown> {
  try {
    await work;
  } catch (err) {
    return err;
  }
  throw new Error('it did not fail');
}

const corrupt = (codec: string, what: string) => ({
  name: 'KafkaError',
  code: 'ECORRUPT',
  message: `kafka consumer decompression ${codec}: ${what}; check the producer that wrote it`,
});

describeWith({ commands: ['lz4', 'zstd'] }, 'kafka record batch decompression', () => {
  for (const codec of ['lz4', 'zstd'] as const) {
    for (const [size, count] of Object.entries({ empty: 0, small: 3, large: 9000 })) {
      it(`${codec}, ${size} batch: what the sink compressed decompresses to its records byte for byte`, async () => {
        const plain = await plainBatch(range(0, count));
        const records = plain.subarray(BATCH_HEADER_BYTES);
        if (size === 'large') expect(records.length).toBeGreaterThan(4 << 20);
        const frame = (await compressors[codec](plain)).subarray(BATCH_HEADER_BYTES);
        const restored = await decompressors[codec](frame);
        expect(restored.length).toBe(records.length);
        expect(restored.equals(records)).toBe(true);
        expect((await decompressor(codec)(frame)).equals(records)).toBe(true);
      });
    }
  }

  const cliFrames = [
    ['lz4', 'the defaults (content checksum)', []],
    ['lz4', 'linked blocks', ['-BD']],
    ['lz4', 'block checksums and the content size', ['-BX', '--content-size']],
    ['lz4', '4 MiB blocks', ['-B7']],
    ['zstd', 'the defaults (content size, checksum)', []],
    ['zstd', 'no content size, as streaming producers such as librdkafka write', ['--no-content-size']],
    ['zstd', 'level 9, no checksum', ['-9', '--no-check']],
  ] as const;

  for (const [codec, label, args] of cliFrames) {
    it(`${codec}: frames the ${codec} tool makes with ${label} decompress byte for byte, small and multi-megabyte`, async () => {
      for (const records of [await smallRecords(), await largeRecords()]) {
        const restored = await decompressors[codec](compressWithCli(codec, args, records));
        expect(restored.length).toBe(records.length);
        expect(restored.equals(records)).toBe(true);
      }
    });
  }

  it('lz4: frames back to back (several producers, or one that wrote several) decompress to their data in order', async () => {
    const small = await smallRecords();
    const large = await largeRecords();
    const frames = Buffer.concat([
      compressWithCli('lz4', [], small),
      compressWithCli('lz4', ['-BD', '--content-size'], large),
      (await lz4Batch(await plainBatch(range(0, 3)))).subarray(BATCH_HEADER_BYTES),
    ]);
    const restored = await lz4Decompress(frames);
    expect(restored.equals(Buffer.concat([small, large, small]))).toBe(true);
  });

  it('zstd: frames back to back, with and without content size and with a skippable frame between, decompress to their data in order', async () => {
    const small = await smallRecords();
    const large = await largeRecords();
    // A skippable frame: magic 0x184D2A50-5F, a 4-byte length, that many bytes the decoder passes over.
    const skippable = Buffer.concat([
      Buffer.from([0x50, 0x2a, 0x4d, 0x18, 5, 0, 0, 0]),
      Buffer.from('xxxxx'),
    ]);
    const sized = Buffer.concat([
      compressWithCli('zstd', [], small),
      skippable,
      compressWithCli('zstd', [], large),
    ]);
    expect((await zstdDecompress(sized)).equals(Buffer.concat([small, large]))).toBe(true);
    const mixed = Buffer.concat([
      compressWithCli('zstd', [], large),
      compressWithCli('zstd', ['--no-content-size'], small),
      skippable,
      (await zstdBatch(await plainBatch(range(0, 3)))).subarray(BATCH_HEADER_BYTES),
    ]);
    expect((await zstdDecompress(mixed)).equals(Buffer.concat([large, small, small]))).toBe(true);
  });

  it('lz4: input that is not whole LZ4 frames fails with the reason', async () => {
    const frame = compressWithCli('lz4', [], await largeRecords());
    const badChecksum = Buffer.from(frame);
    badChecksum[badChecksum.length - 1]! ^= 0xff;
    const cases: [Uint8Array, ReturnType<typeof corrupt>][] = [
      [Buffer.alloc(0), corrupt('lz4', 'empty input, no LZ4 frame')],
      [Buffer.from('not an lz4 frame'), corrupt('lz4', 'invalid LZ4 data (ERROR_frameType_unknown)')],
      [
        frame.subarray(0, frame.length - 100),
        corrupt('lz4', 'truncated LZ4 data, the last frame ends early'),
      ],
      [badChecksum, corrupt('lz4', 'invalid LZ4 data (ERROR_contentChecksum_invalid)')],
      [
        Buffer.concat([frame, Buffer.from('trailing bytes')]),
        corrupt('lz4', 'invalid LZ4 data (ERROR_frameType_unknown)'),
      ],
    ];
    for (const [input, expected] of cases)
      expect(await failure(lz4Decompress(input))).toMatchObject(expected);
  });

  it('zstd: input that is not whole zstd frames fails with the reason, with content size or without', async () => {
    const large = await largeRecords();
    for (const args of [[], ['--no-content-size']]) {
      const frame = compressWithCli('zstd', args, large);
      const badChecksum = Buffer.from(frame);
      badChecksum[badChecksum.length - 1]! ^= 0xff;
      const cases: [Uint8Array, ReturnType<typeof corrupt>][] = [
        [Buffer.alloc(0), corrupt('zstd', 'empty input, no zstd frame')],
        [Buffer.from('not a zstd frame'), corrupt('zstd', 'invalid zstd data (Unknown frame descriptor)')],
        [
          frame.subarray(0, frame.length - 100),
          corrupt('zstd', 'truncated zstd data, the last frame ends early'),
        ],
        [badChecksum, corrupt('zstd', "invalid zstd data (Restored data doesn't match checksum)")],
        [
          Buffer.concat([frame, Buffer.from('trailing bytes')]),
          corrupt('zstd', 'invalid zstd data (Unknown frame descriptor)'),
        ],
      ];
      for (const [input, expected] of cases)
        expect({ args, error: await failure(zstdDecompress(input)) }).toMatchObject({
          args,
          error: expected,
        });
    }
  });

  it(`zstd: more than DECOMPRESSED_MAX_BYTES of output is refused, whether the frame records its size or not`, async () => {
    const zeros = Buffer.alloc(DECOMPRESSED_MAX_BYTES + (1 << 20));
    const expected = {
      name: 'KafkaError',
      code: 'ETOOBIG',
      message: `kafka consumer decompression zstd: more than ${DECOMPRESSED_MAX_BYTES} bytes once decompressed, refused; lower the producer's batch size`,
    };
    for (const args of [[], ['--no-content-size']]) {
      const bomb = compressWithCli('zstd', args, zeros);
      expect(bomb.length).toBeLessThan(64 << 10);
      expect({ args, error: await failure(zstdDecompress(bomb)) }).toMatchObject({ args, error: expected });
    }
    // Exactly the limit is still taken.
    const limit = compressWithCli('zstd', ['--no-content-size'], zeros.subarray(0, DECOMPRESSED_MAX_BYTES));
    expect((await zstdDecompress(limit)).length).toBe(DECOMPRESSED_MAX_BYTES);
  });

  it('many decompressions at once each come back intact (contexts and native memory are not shared between calls)', async () => {
    const plains = await Promise.all(
      Array.from({ length: 12 }, (_, k) => plainBatch(range(k * 1000, 600 + k * 50))),
    );
    const inputs = await Promise.all(
      plains.flatMap((p, k) => [
        lz4Batch(p).then((b) => ({ k, codec: 'lz4' as const, frame: b.subarray(BATCH_HEADER_BYTES) })),
        zstdBatch(p).then((b) => ({ k, codec: 'zstd' as const, frame: b.subarray(BATCH_HEADER_BYTES) })),
        Promise.resolve({
          k,
          codec: 'zstd' as const,
          frame: compressWithCli('zstd', ['--no-content-size'], p.subarray(BATCH_HEADER_BYTES)),
        }),
      ]),
    );
    const outs = await Promise.all(inputs.map(({ codec, frame }) => decompressors[codec](frame)));
    outs.forEach((out, i) => {
      const { k, codec } = inputs[i]!;
      expect({ k, codec, equal: out.equals(plains[k]!.subarray(BATCH_HEADER_BYTES)) }).toEqual({
        k,
        codec,
        equal: true,
      });
    });
  });

  /** Event loop turns (setImmediate rounds) before `work` settles. */
  async function turnsDuring(work: () => Promise<unknown>): Promise<number> {
    let turns = 0;
    let done = false;
    const spin = (): void => {
      if (done) return;
      turns++;
      setImmediate(spin);
    };
    setImmediate(spin);
    await work();
    done = true;
    return turns;
  }

  for (const [label, codec, make] of [
    ['lz4', 'lz4', (records: Buffer) => compressWithCli('lz4', [], records)],
    ['zstd with content size', 'zstd', (records: Buffer) => compressWithCli('zstd', [], records)],
    [
      'zstd without content size',
      'zstd',
      (records: Buffer) => compressWithCli('zstd', ['--no-content-size'], records),
    ],
  ] as const) {
    it(`${label}: a multi-megabyte batch decompresses on worker threads while the event loop runs; up to ${DECOMPRESS_SYNC_MAX_BYTES} bytes of records on the JS thread`, async () => {
      const large = make(await largeRecords());
      expect(await turnsDuring(() => decompressors[codec](large))).toBeGreaterThan(0);
      const records = (await plainBatch(range(0, 110))).subarray(BATCH_HEADER_BYTES);
      expect(records.length).toBeGreaterThan(DECOMPRESS_SYNC_MAX_BYTES / 2);
      expect(records.length).toBeLessThanOrEqual(DECOMPRESS_SYNC_MAX_BYTES);
      const small = make(records);
      expect(small.length).toBeLessThanOrEqual(NATIVE_SYNC_MAX_BYTES);
      expect(await turnsDuring(() => decompressors[codec](small))).toBe(0);
    });
  }
});

// --------------------------------------------------------------------------------------------
// snappy (read only: the consumer)

/** One raw snappy block of `data`, by libsnappy's own compressor. */
function snappyBlock(data: Uint8Array): Buffer {
  const lib = koffi.load('libsnappy.so.1');
  const bound = lib.func('size_t snappy_max_compressed_length(size_t n)');
  const compress = lib.func(
    'int snappy_compress(const void *input, size_t n, void *compressed, _Inout_ size_t *length)',
  );
  const out = Buffer.alloc(Number(bound(data.length)));
  const length = [out.length];
  expect(compress(data, data.length, out, length)).toBe(0);
  return out.subarray(0, Number(length[0]));
}

/** The xerial snappy-java stream Kafka's Java producer writes: header, then 32 KiB chunks. */
function xerialStream(data: Uint8Array, chunkBytes = 32 << 10): Buffer {
  const header = Buffer.from([0x82, 0x53, 0x4e, 0x41, 0x50, 0x50, 0x59, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
  const parts: Buffer[] = [header];
  for (let at = 0; at < data.length; at += chunkBytes) {
    const block = snappyBlock(data.subarray(at, at + chunkBytes));
    const length = Buffer.alloc(4);
    length.writeInt32BE(block.length);
    parts.push(length, block);
  }
  return Buffer.concat(parts);
}

describe('kafka record batch decompression: snappy', () => {
  it('reads a raw snappy block (librdkafka) and a xerial stream of several chunks (the Java producer) exactly', async () => {
    const large = await largeRecords();
    const small = await smallRecords();
    expect((await snappyDecompress(snappyBlock(small))).equals(small)).toBe(true);
    expect((await snappyDecompress(snappyBlock(large))).equals(large)).toBe(true);
    const stream = xerialStream(large);
    expect(large.length).toBeGreaterThan(3 * (32 << 10));
    expect((await snappyDecompress(stream)).equals(large)).toBe(true);
    expect((await decompressor('snappy')(xerialStream(small))).equals(small)).toBe(true);
  });

  it('refuses data that is not snappy, and a xerial stream cut short, with ECORRUPT', async () => {
    const large = await largeRecords();
    const stream = xerialStream(large);
    expect(await failure(snappyDecompress(Buffer.alloc(0)))).toMatchObject(
      corrupt('snappy', 'empty input, no snappy data'),
    );
    expect(await failure(snappyDecompress(Buffer.alloc(12, 0xff)))).toMatchObject(
      corrupt('snappy', 'invalid snappy data (no block length)'),
    );
    const cut = stream.subarray(0, stream.length - 10);
    const lastChunk = stream.length - cut.length;
    expect(lastChunk).toBe(10);
    expect(await failure(snappyDecompress(cut))).toMatchObject({
      name: 'KafkaError',
      code: 'ECORRUPT',
      message: expect.stringMatching(
        /^kafka consumer decompression snappy: truncated xerial snappy stream, a chunk of \d+ bytes ends early; check the producer that wrote it$/,
      ) as unknown,
    });
    // A raw block cut short: its length says more than it holds.
    const block = snappyBlock(large);
    expect(await failure(snappyDecompress(block.subarray(0, block.length - 10)))).toMatchObject(
      corrupt('snappy', 'invalid snappy data'),
    );
  });
});
