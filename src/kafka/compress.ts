/**
 * Compression of the kafka sink's record batches: gzip (Node's zlib), lz4 and zstd (the system's
 * liblz4.so.1 and libzstd.so.1 through koffi). As Kafka wants it, only the records section (after
 * the 61-byte header) is compressed; the header keeps its fields, names the codec in attributes
 * bits 0-2 and gets the new length and CRC-32C.
 *
 * - lz4 is an LZ4 frame (LZ4F_compressFrame) with independent 64 KiB blocks and no content size,
 *   block checksum or content checksum: what Kafka's Java producer and librdkafka write. Kafka's
 *   Java reader refuses linked blocks ("Dependent block stream is unsupported"), which is the
 *   frame library's default, so the preferences are always passed.
 * - zstd is one plain zstd frame at the library's default level. Brokers take zstd batches only
 *   in Produce v7 or newer (Kafka 2.1); requireProduceVersion() checks that before a request goes.
 *
 * Every codec runs off the event loop: zlib on libuv's thread pool, the native codecs through
 * koffi's `.async` on its worker threads, except batches small enough that the call costs less
 * than handing it to a thread (NATIVE_SYNC_MAX_BYTES).
 *
 * Decompression is in decompress.ts; the libraries, context pools and native memory in
 * codec-native.ts.
 */
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import koffi, { type LibraryHandle } from 'koffi';
import { messageOf } from '../errors.js';
import {
  LZ4_LIBRARY,
  NATIVE_SYNC_MAX_BYTES,
  ZSTD_LIBRARY,
  ContextPool,
  acquireBlock,
  loadLibrary,
  releaseBlock,
  type Block,
  type Done,
  type Ptr,
  type SizeT,
} from './codec-native.js';
import { crc32c } from './crc32c.js';
import { KafkaError } from './errors.js';
import { BATCH_HEADER_BYTES } from './record-batch.js';

export type Compression = 'none' | 'gzip' | 'lz4' | 'zstd';

/** attributes bits 0-2 of a record batch: its compression codec (snappy is only read, by the consumer). */
export const CODEC_NONE = 0;
export const CODEC_GZIP = 1;
export const CODEC_SNAPPY = 2;
export const CODEC_LZ4 = 3;
export const CODEC_ZSTD = 4;
const CODEC_MASK = 7;

/** The first Produce version that may carry zstd batches (KIP-110). */
export const ZSTD_MIN_PRODUCE_VERSION = 7;

// Header fields rewritten here; record-batch.ts has the whole layout.
const OFF_BATCH_LENGTH = 8;
const OFF_CRC = 17;
const OFF_ATTRIBUTES = 21;

export type BatchCompressor = (batch: Buffer) => Promise<Buffer>;

/** The codec named in a record batch's attributes. */
export function batchCodec(batch: Uint8Array): number {
  return (batch[OFF_ATTRIBUTES + 1]! & CODEC_MASK) >>> 0;
}

/**
 * The compressor of `compression`, or undefined for none. Loads the codec's library now, so a
 * sink built with a codec the machine lacks fails at once (KafkaError ENOCODEC), never later.
 */
export function batchCompressor(compression: Compression): BatchCompressor | undefined {
  switch (compression) {
    case 'none':
      return undefined;
    case 'gzip':
      return gzipBatch;
    case 'lz4': {
      const codec = lz4();
      return (batch) => nativeBatch(codec, batch);
    }
    case 'zstd': {
      const codec = zstd();
      return (batch) => nativeBatch(codec, batch);
    }
  }
}

/**
 * Throws when a request's batches use a codec the Produce version negotiated with the broker
 * cannot carry: a zstd batch needs v7. An older broker would refuse each batch
 * (UNSUPPORTED_COMPRESSION_TYPE, or a corrupt message before Kafka 2.1) and no retry makes it
 * accept them, so the error says `retriable: false` and names the fix.
 */
export function requireProduceVersion(batches: readonly { data: Uint8Array }[], version: number): void {
  if (version >= ZSTD_MIN_PRODUCE_VERSION) return;
  for (const b of batches) {
    if (batchCodec(b.data) !== CODEC_ZSTD) continue;
    throw new KafkaError(
      'ECODECVERSION',
      `kafka sink compression zstd: the broker speaks Produce up to v${version}, zstd batches need v${ZSTD_MIN_PRODUCE_VERSION} (Kafka 2.1); upgrade the brokers or set compression to lz4, gzip or none`,
      { retriable: false },
    );
  }
}

/** A batch header from `batch` in front of `size` bytes of compressed records, in a new buffer. */
function compressedBatch(batch: Buffer, size: number): Buffer {
  const out = Buffer.allocUnsafe(BATCH_HEADER_BYTES + size);
  batch.copy(out, 0, 0, BATCH_HEADER_BYTES);
  return out;
}

/** Fills in the length, codec and CRC of a batch whose records are compressed in place. */
function sealBatch(out: Buffer, codec: number): Buffer {
  out.writeInt32BE(out.length - 12, OFF_BATCH_LENGTH);
  out.writeInt16BE((out.readInt16BE(OFF_ATTRIBUTES) & ~CODEC_MASK) | codec, OFF_ATTRIBUTES);
  out.writeUInt32BE(crc32c(out, OFF_ATTRIBUTES, out.length), OFF_CRC);
  return out;
}

const gzip = promisify(zlib.gzip);

/** A gzip-compressed copy of a finished batch; zlib runs on libuv's thread pool. */
export async function gzipBatch(batch: Buffer): Promise<Buffer> {
  const compressed = await gzip(batch.subarray(BATCH_HEADER_BYTES));
  const out = compressedBatch(batch, compressed.length);
  compressed.copy(out, BATCH_HEADER_BYTES);
  return sealBatch(out, CODEC_GZIP);
}

/** An lz4-compressed copy of a finished batch. Throws KafkaError ENOCODEC without liblz4.so.1. */
export function lz4Batch(batch: Buffer): Promise<Buffer> {
  return nativeBatch(lz4(), batch);
}

/** A zstd-compressed copy of a finished batch. Throws KafkaError ENOCODEC without libzstd.so.1. */
export function zstdBatch(batch: Buffer): Promise<Buffer> {
  return nativeBatch(zstd(), batch);
}

interface NativeCodec {
  name: 'lz4' | 'zstd';
  codec: number;
  /** The most bytes compressing `n` bytes can take. */
  bound(n: number): number;
  /** Compresses on the JS thread; `dst` and `src` may be Buffers. */
  compress(dst: Uint8Array, capacity: number, src: Uint8Array, n: number): SizeT;
  /** Compresses on a koffi worker thread; `dst` and `src` point into native memory. */
  compressAsync(dst: Ptr, capacity: number, src: Ptr, n: number, done: Done): void;
  /** The library's name of an error result, or undefined when `result` is a size. */
  error(result: SizeT): string | undefined;
}

/**
 * Opens a codec's shared library and binds its functions with `bind`; any failure, a missing
 * file or a missing symbol of an old version, becomes KafkaError ENOCODEC naming the package.
 */
export function openCodecLibrary<T>(
  codec: 'lz4' | 'zstd',
  file: string,
  debianPackage: string,
  bind: (lib: LibraryHandle) => T,
): T {
  return loadLibrary(
    `kafka sink compression ${codec}`,
    { file, debianPackage },
    bind,
    (message, cause) => new KafkaError('ENOCODEC', message, { cause }),
  );
}

/** LZ4F_preferences_t (56 bytes, the same layout since lz4 1.7): 64 KiB independent blocks. */
const LZ4F_PREFERENCES_BYTES = 56;
const LZ4F_MAX64KB = 4;
const LZ4F_BLOCK_INDEPENDENT = 1;

function lz4Preferences(): Buffer {
  const prefs = Buffer.alloc(LZ4F_PREFERENCES_BYTES);
  prefs.writeUInt32LE(LZ4F_MAX64KB, 0); // frameInfo.blockSizeID
  prefs.writeUInt32LE(LZ4F_BLOCK_INDEPENDENT, 4); // frameInfo.blockMode
  return prefs; // no checksums, no content size, compression level 0 (fast)
}

let lz4Codec: NativeCodec | undefined;

function lz4(): NativeCodec {
  lz4Codec ??= openCodecLibrary('lz4', LZ4_LIBRARY.file, LZ4_LIBRARY.debianPackage, (lib) => {
    const bound = lib.func('size_t LZ4F_compressFrameBound(size_t n, const void *prefs)');
    const compress = lib.func(
      'size_t LZ4F_compressFrame(void *dst, size_t capacity, const void *src, size_t n, const void *prefs)',
    );
    const isError = lib.func('unsigned int LZ4F_isError(size_t code)');
    const errorName = lib.func('const char *LZ4F_getErrorName(size_t code)');
    const prefs = lz4Preferences();
    // The async calls need the preferences in memory that no garbage collection can touch.
    const nativePrefs = koffi.alloc('uint8_t', LZ4F_PREFERENCES_BYTES) as Ptr;
    new Uint8Array(koffi.view(nativePrefs, LZ4F_PREFERENCES_BYTES)).set(prefs);
    return {
      name: 'lz4',
      codec: CODEC_LZ4,
      bound: (n) => Number(bound(n, prefs)),
      compress: (dst, capacity, src, n) => compress(dst, capacity, src, n, prefs) as SizeT,
      compressAsync: (dst, capacity, src, n, done) => {
        compress.async(dst, capacity, src, n, nativePrefs, done);
      },
      error: (r) => ((isError(r) as number) !== 0 ? (errorName(r) as string) : undefined),
    };
  });
  return lz4Codec;
}

/** 0 asks libzstd for its default level (3, as Kafka's and librdkafka's producers use). */
const ZSTD_DEFAULT_LEVEL = 0;

let zstdCodec: NativeCodec | undefined;

function zstd(): NativeCodec {
  zstdCodec ??= openCodecLibrary('zstd', ZSTD_LIBRARY.file, ZSTD_LIBRARY.debianPackage, (lib) => {
    const bound = lib.func('size_t ZSTD_compressBound(size_t n)');
    const createCCtx = lib.func('void *ZSTD_createCCtx(void)');
    const freeCCtx = lib.func('size_t ZSTD_freeCCtx(void *cctx)');
    const compress = lib.func(
      'size_t ZSTD_compressCCtx(void *cctx, void *dst, size_t capacity, const void *src, size_t n, int level)',
    );
    const isError = lib.func('unsigned int ZSTD_isError(size_t code)');
    const errorName = lib.func('const char *ZSTD_getErrorName(size_t code)');
    const contexts = new ContextPool(
      () => createCCtx() as Ptr | null,
      (cctx) => void freeCCtx(cctx),
      () => new KafkaError('ENOMEM', 'kafka sink compression zstd: ZSTD_createCCtx failed; out of memory'),
    );
    return {
      name: 'zstd',
      codec: CODEC_ZSTD,
      bound: (n) => Number(bound(n)),
      compress: (dst, capacity, src, n) => {
        const cctx = contexts.acquire();
        try {
          return compress(cctx, dst, capacity, src, n, ZSTD_DEFAULT_LEVEL) as SizeT;
        } finally {
          contexts.release(cctx);
        }
      },
      compressAsync: (dst, capacity, src, n, done) => {
        const cctx = contexts.acquire();
        try {
          compress.async(cctx, dst, capacity, src, n, ZSTD_DEFAULT_LEVEL, (err: unknown, r: SizeT) => {
            contexts.release(cctx);
            done(err, r);
          });
        } catch (err) {
          contexts.release(cctx);
          throw err;
        }
      },
      error: (r) => ((isError(r) as number) !== 0 ? (errorName(r) as string) : undefined),
    };
  });
  return zstdCodec;
}

function codecFailed(codec: NativeCodec, what: string, cause?: unknown): KafkaError {
  return new KafkaError(
    'ECOMPRESS',
    `kafka sink compression ${codec.name}: ${what}; report this as a bug`,
    cause === undefined ? undefined : { cause },
  );
}

function nativeBatch(codec: NativeCodec, batch: Buffer): Promise<Buffer> {
  const records = batch.subarray(BATCH_HEADER_BYTES);
  const n = records.length;
  const capacity = codec.bound(n);
  if (n <= NATIVE_SYNC_MAX_BYTES) {
    try {
      const out = compressedBatch(batch, capacity);
      const r = codec.compress(out.subarray(BATCH_HEADER_BYTES), capacity, records, n);
      const error = codec.error(r);
      if (error !== undefined) return Promise.reject(codecFailed(codec, error));
      return Promise.resolve(sealBatch(out.subarray(0, BATCH_HEADER_BYTES + Number(r)), codec.codec));
    } catch (err) {
      return Promise.reject(err instanceof KafkaError ? err : codecFailed(codec, messageOf(err), err));
    }
  }
  return new Promise<Buffer>((resolve, reject) => {
    let block: Block;
    try {
      block = acquireBlock(n + capacity);
    } catch (err) {
      reject(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    const src = block.ptr;
    const dst = block.ptr + BigInt(n);
    const done: Done = (err, r) => {
      try {
        if (err) throw codecFailed(codec, `the call on a worker thread failed (${messageOf(err)})`, err);
        const error = codec.error(r);
        if (error !== undefined) throw codecFailed(codec, error);
        const size = Number(r);
        const out = compressedBatch(batch, size);
        out.set(block.bytes.subarray(n, n + size), BATCH_HEADER_BYTES);
        resolve(sealBatch(out, codec.codec));
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      } finally {
        releaseBlock(block);
      }
    };
    try {
      block.bytes.set(records, 0);
      codec.compressAsync(dst, capacity, src, n, done);
    } catch (err) {
      // koffi throws at once when its queue of async calls is full; nothing runs then.
      releaseBlock(block);
      if (err instanceof KafkaError) {
        reject(err);
        return;
      }
      reject(
        new KafkaError(
          'ECOMPRESS',
          `kafka sink compression ${codec.name}: koffi could not start the call (${messageOf(err)}); lower max_in_flight`,
          { cause: err },
        ),
      );
    }
  });
}
