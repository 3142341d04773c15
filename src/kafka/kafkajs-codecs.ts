/**
 * lz4, zstd and snappy record batches for kafkajs consumers. kafkajs reads uncompressed and gzip
 * batches itself; the others are decompressed by codecs registered here (decompress.ts). kafkajs
 * decompresses inside the decoding of a fetch response, so what a codec throws fails the whole
 * fetch, and kafkajs fetches the same offsets again, forever. Hence:
 * - a batch that does not decompress (corrupt, truncated, more than DECOMPRESSED_MAX_BYTES) is
 *   skipped: the codec hands kafkajs one placeholder record per record of the batch, whose value
 *   unreadableReason() recognises, so the consumer counts each as dropped with the reason (a
 *   legacy, pre-0.11 message set has no header to count its records by: one that does not
 *   decompress is retried like a missing library);
 * - a missing library blocks instead: registerCodecs() logs one warning naming the package, and a
 *   fetch holding a batch of that codec fails with the same hint (decompressionError() finds it).
 */
import { randomBytes } from 'node:crypto';
// Not named exports Node's ESM loader can see in kafkajs's CommonJS: taken from its default export.
import kafkajs from 'kafkajs';
import { messageOf } from '../errors.js';
import type { Logger } from '../logger.js';
import { CODEC_LZ4, CODEC_SNAPPY, CODEC_ZSTD, batchCodec } from './compress.js';
import {
  decompressor,
  lz4Decompress,
  snappyDecompress,
  zstdDecompress,
  type Decompressor,
} from './decompress.js';
import { KafkaError } from './errors.js';
import { BATCH_HEADER_BYTES, batchRecordCount } from './record-batch.js';

const { CompressionCodecs, CompressionTypes } = kafkajs;

/**
 * The start of the value of every placeholder record (see the module comment), then the reason.
 * Random per process, so no producer's value starts with it.
 */
const UNREADABLE = randomBytes(16);

/** A batch header claiming more records than this is not believed, and nothing is skipped. */
const UNREADABLE_MAX_RECORDS = 1 << 20;

// Fields of a record batch header (src/kafka/record-batch.ts has the whole layout).
const OFF_BATCH_LENGTH = 8;
const OFF_MAGIC = 16;
const OFF_LAST_OFFSET_DELTA = 23;
/** batchLength counts the bytes after itself: all but baseOffset and batchLength. */
const BATCH_LENGTH_BIAS = 12;

interface BatchHeader {
  count: number;
  lastOffsetDelta: number;
}

/**
 * The header of the v2 record batch whose compressed records section is `records`, when it is one:
 * kafkajs hands a codec a view into the fetch response that starts right after the header. The
 * header must agree (magic 2, this codec, the length of `records`), else it is not taken for one:
 * a legacy message set's value, say, has no such header in front.
 */
function headerBefore(records: Buffer, codec: number): BatchHeader | undefined {
  if (records.byteOffset < BATCH_HEADER_BYTES) return undefined;
  const header = Buffer.from(records.buffer, records.byteOffset - BATCH_HEADER_BYTES, BATCH_HEADER_BYTES);
  if (
    header[OFF_MAGIC] !== 2 ||
    header.readInt32BE(OFF_BATCH_LENGTH) !== BATCH_HEADER_BYTES - BATCH_LENGTH_BIAS + records.length ||
    batchCodec(header) !== codec
  )
    return undefined;
  const count = batchRecordCount(header);
  const lastOffsetDelta = header.readInt32BE(OFF_LAST_OFFSET_DELTA);
  if (count < 1 || count > UNREADABLE_MAX_RECORDS || lastOffsetDelta < count - 1) return undefined;
  return { count, lastOffsetDelta };
}

/** Bytes of the zigzag varint of `n`. */
function varintBytes(n: number): number {
  let v = n >= 0 ? n * 2 : -n * 2 - 1;
  let bytes = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 0x80);
    bytes++;
  }
  return bytes;
}

function putVarint(out: Buffer, at: number, n: number): number {
  let v = n >= 0 ? n * 2 : -n * 2 - 1;
  while (v >= 0x80) {
    out[at++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  out[at++] = v;
  return at;
}

/**
 * Whether decompressed `data` is exactly `count` length-prefixed records, as kafkajs reads them:
 * a frame that decompresses to something else would make kafkajs throw while decoding, and the
 * fetch fail again and again.
 */
function holdsRecords(data: Buffer, count: number): boolean {
  let at = 0;
  for (let i = 0; i < count; i++) {
    let v = 0;
    let scale = 1;
    let byte: number;
    do {
      if (at >= data.length || scale > 2 ** 28) return false;
      byte = data[at++]!;
      v += (byte & 0x7f) * scale;
      scale *= 0x80;
    } while (byte & 0x80);
    // zigzag: an odd value is negative, which no record length is.
    if (v % 2 === 1) return false;
    at += v / 2;
    if (at > data.length) return false;
  }
  return at === data.length;
}

/**
 * The records section kafkajs gets for a batch that could not be decompressed: `count` records
 * whose values are UNREADABLE and the reason. The last one has the batch's last offset, so the
 * batch is resolved and committed as a whole; a batch whose offsets have gaps (compaction) has
 * its records counted, at offsets that may differ.
 */
function unreadableRecords({ count, lastOffsetDelta }: BatchHeader, reason: string): Buffer {
  const value = Buffer.concat([UNREADABLE, Buffer.from(reason)]);
  // Per record: length, attributes, timestamp delta, offset delta, null key, value, no headers.
  const out = Buffer.allocUnsafe(count * (value.length + 19));
  let at = 0;
  for (let i = 0; i < count; i++) {
    const offsetDelta = i === count - 1 ? lastOffsetDelta : i;
    const length = 3 + varintBytes(offsetDelta) + varintBytes(value.length) + value.length + 1;
    at = putVarint(out, at, length);
    out[at++] = 0;
    out[at++] = 0;
    at = putVarint(out, at, offsetDelta);
    at = putVarint(out, at, -1);
    at = putVarint(out, at, value.length);
    at += value.copy(out, at);
    out[at++] = 0;
  }
  return out.subarray(0, at);
}

/** The reason a placeholder record stands for, or undefined for a producer's record. */
export function unreadableReason(value: Buffer | null): string | undefined {
  if (value === null || value.length < UNREADABLE.length || value[0] !== UNREADABLE[0]) return undefined;
  if (UNREADABLE.compare(value, 0, UNREADABLE.length) !== 0) return undefined;
  return value.toString('utf8', UNREADABLE.length);
}

/** Codes of decompression errors that no retry mends: the batch is skipped. */
const UNREADABLE_CODES: ReadonlySet<string> = new Set(['ECORRUPT', 'ETOOBIG']);

type KafkajsCodec = () => {
  compress(encoder: { buffer: Buffer }): Promise<Buffer>;
  decompress(records: Buffer): Promise<Buffer>;
};

function kafkajsCodec(
  codec: 'lz4' | 'zstd' | 'snappy',
  bits: number,
  decompress: Decompressor,
): KafkajsCodec {
  const readBatch = async (records: Buffer): Promise<Buffer> => {
    const header = headerBefore(records, bits);
    let problem: unknown;
    try {
      const out = await decompress(records);
      if (header === undefined || holdsRecords(out, header.count)) return out;
      problem = new KafkaError(
        'ECORRUPT',
        `kafka consumer decompression ${codec}: the data is not the batch's ${header.count} records; check the producer that wrote it`,
      );
    } catch (err) {
      problem = err;
    }
    const code = (problem as { code?: unknown }).code;
    if (header !== undefined && typeof code === 'string' && UNREADABLE_CODES.has(code))
      return unreadableRecords(header, `record batch skipped: ${messageOf(problem)}`);
    // kafkajs keeps only the innermost cause of an error it gave up retrying: without a cause of
    // its own, this is the one the consumer finds and logs (see failing()).
    if (problem instanceof KafkaError) throw new KafkaError(problem.code, problem.message);
    throw problem;
  };
  const compress = (): Promise<Buffer> =>
    Promise.reject(
      new KafkaError(
        'ENOTSUP',
        `kafka consumer: kafkajs producers cannot compress with ${codec} here; write with the kafka sink`,
      ),
    );
  const impl = { compress, decompress: readBatch };
  return () => impl;
}

let codecsRegistered = false;

/**
 * Registers the lz4, zstd and snappy codecs with kafkajs, whose codec table is global: once per process.
 * A codec whose library is missing is registered all the same, and one warning names the
 * package; its batches then fail to read with that hint (see the module comment).
 */
export function registerCodecs(logger: Logger): void {
  if (codecsRegistered) return;
  codecsRegistered = true;
  const codecs = [
    ['lz4', CompressionTypes.LZ4, CODEC_LZ4, lz4Decompress],
    ['zstd', CompressionTypes.ZSTD, CODEC_ZSTD, zstdDecompress],
    ['snappy', CompressionTypes.Snappy, CODEC_SNAPPY, snappyDecompress],
  ] as const;
  for (const [codec, type, bits, decompress] of codecs) {
    try {
      decompressor(codec);
    } catch (err) {
      logger.warn(
        { err, codec },
        'kafka consumer: a codec library is missing; record batches it compressed cannot be read until it is installed',
      );
    }
    CompressionCodecs[type] = kafkajsCodec(codec, bits, decompress);
  }
}

/** The decompression error behind what kafkajs reports, if any. */
export function decompressionError(err: unknown): KafkaError | undefined {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e.name === 'KafkaError') return e as KafkaError;
  }
  return undefined;
}
