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
 * The kafka_consumer source decompresses with the same libraries (lz4Decompress, zstdDecompress):
 * whatever frames any producer writes, several back to back included; and snappy with the
 * system's libsnappy.so.1 (snappyDecompress), which the sink does not write. zstd frames that record
 * their size are decompressed in one call into a buffer of that size; LZ4 frames and zstd frames
 * without it (librdkafka's) are streamed into output blocks that double as they fill.
 */
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import koffi, { type LibraryHandle } from 'koffi';
import { SourceError } from '../../sources/errors.js';
import { messageOf } from '../../errors.js';
import { SinkError, asError } from '../errors.js';
import { crc32c } from './crc32c.js';
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

/**
 * Up to this many bytes of records the native codecs compress on the JS thread, straight from and
 * into Buffers: the event loop is then held for at most about 16 us (lz4) or 25 us (zstd) per
 * batch, and a worker thread would not finish sooner, since the copies and the hand-off cost as
 * much (bench/kafka.bench.ts, kafka.compress_*_at_sync_max.js_thread: 15.8 and 25.4 us against
 * *_above_sync_max.worker: 16.5 and 30.1 us, one record more).
 */
export const NATIVE_SYNC_MAX_BYTES = 16 << 10;

export type BatchCompressor = (batch: Buffer) => Promise<Buffer>;

/** The codec named in a record batch's attributes. */
export function batchCodec(batch: Uint8Array): number {
  return (batch[OFF_ATTRIBUTES + 1]! & CODEC_MASK) >>> 0;
}

/**
 * The compressor of `compression`, or undefined for none. Loads the codec's library now, so a
 * sink built with a codec the machine lacks fails at once (SinkError ENOCODEC), never later.
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
    const error = new SinkError(
      'ECODECVERSION',
      `kafka sink compression zstd: the broker speaks Produce up to v${version}, zstd batches need v${ZSTD_MIN_PRODUCE_VERSION} (Kafka 2.1); upgrade the brokers or set compression to lz4, gzip or none`,
    );
    throw Object.assign(error, { retriable: false });
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

/** An lz4-compressed copy of a finished batch. Throws SinkError ENOCODEC without liblz4.so.1. */
export function lz4Batch(batch: Buffer): Promise<Buffer> {
  return nativeBatch(lz4(), batch);
}

/** A zstd-compressed copy of a finished batch. Throws SinkError ENOCODEC without libzstd.so.1. */
export function zstdBatch(batch: Buffer): Promise<Buffer> {
  return nativeBatch(zstd(), batch);
}

// --------------------------------------------------------------------------------------------
// Native codecs

type Ptr = bigint;
/** What a codec's compress call returns: a size, or an error code the library can name. */
type SizeT = number | bigint;
type Done = (err: unknown, result: SizeT) => void;

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
 * file or a missing symbol of an old version, becomes SinkError ENOCODEC naming the package.
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
    (message, cause) => new SinkError('ENOCODEC', message, { cause }),
  );
}

interface CodecLibrary {
  file: string;
  debianPackage: string;
}

const LZ4_LIBRARY: CodecLibrary = { file: 'liblz4.so.1', debianPackage: 'liblz4-1' };
const ZSTD_LIBRARY: CodecLibrary = { file: 'libzstd.so.1', debianPackage: 'libzstd1' };

/** openCodecLibrary() for any user of a codec: `what` starts the message, `fail` makes the error. */
function loadLibrary<T>(
  what: string,
  { file, debianPackage }: CodecLibrary,
  bind: (lib: LibraryHandle) => T,
  fail: (message: string, cause: unknown) => Error,
): T {
  let lib: LibraryHandle;
  try {
    lib = koffi.load(file);
  } catch (err) {
    throw fail(`${what}: ${file} not found; install ${debianPackage} (bash scripts/setup.sh)`, err);
  }
  try {
    return bind(lib);
  } catch (err) {
    throw fail(
      `${what}: ${file} cannot be used (${messageOf(err)}); install ${debianPackage} (bash scripts/setup.sh)`,
      err,
    );
  }
}

/** Contexts a pool keeps: as many as calls usually run at once, with room to spare. */
const CONTEXTS_KEPT = 8;

/**
 * Native codec contexts kept for reuse: creating one per call costs its workspace allocation. A
 * context serves one call at a time; the JS thread hands them out and takes them back.
 */
class ContextPool {
  private readonly kept: Ptr[] = [];

  constructor(
    private readonly create: () => Ptr | null,
    private readonly free: (ctx: Ptr) => void,
    private readonly outOfMemory: () => Error,
  ) {}

  acquire(): Ptr {
    const ctx = this.kept.pop() ?? this.create();
    if (ctx === null) throw this.outOfMemory();
    return ctx;
  }

  release(ctx: Ptr): void {
    if (this.kept.length < CONTEXTS_KEPT) this.kept.push(ctx);
    else this.free(ctx);
  }
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
      () => new SinkError('ENOMEM', 'kafka sink compression zstd: ZSTD_createCCtx failed; out of memory'),
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

/**
 * Native memory for the async calls: input and output are copied through it, because a JS
 * buffer may be handed to C only while the call runs on the JS thread. Blocks are powers of two
 * from 64 KiB and are kept for reuse up to KEPT_BYTES: fresh multi-megabyte blocks would each
 * be mapped and faulted in page by page.
 */
interface Block {
  ptr: Ptr;
  bytes: Uint8Array;
}

const KEPT_BYTES = 64 << 20;
const freeBlocks = new Map<number, Block[]>();
let keptBytes = 0;

function acquireBlock(minBytes: number): Block {
  let size = 1 << 16;
  while (size < minBytes) size *= 2;
  const block = freeBlocks.get(size)?.pop();
  if (block !== undefined) {
    keptBytes -= size;
    return block;
  }
  const ptr = koffi.alloc('uint8_t', size) as Ptr | null;
  if (ptr === null) throw new SinkError('ENOMEM', `kafka sink compression: cannot allocate ${size} bytes`);
  return { ptr, bytes: new Uint8Array(koffi.view(ptr, size)) };
}

function releaseBlock(block: Block): void {
  const size = block.bytes.length;
  if (keptBytes + size > KEPT_BYTES) {
    koffi.free(block.ptr);
    return;
  }
  let list = freeBlocks.get(size);
  if (list === undefined) freeBlocks.set(size, (list = []));
  list.push(block);
  keptBytes += size;
}

function codecFailed(codec: NativeCodec, what: string, cause?: unknown): SinkError {
  return new SinkError(
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
      return Promise.reject(err instanceof SinkError ? err : codecFailed(codec, messageOf(err), err));
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
      if (err instanceof SinkError) {
        reject(err);
        return;
      }
      reject(
        new SinkError(
          'ECOMPRESS',
          `kafka sink compression ${codec.name}: koffi could not start the call (${messageOf(err)}); lower max_in_flight`,
          { cause: err },
        ),
      );
    }
  });
}

// --------------------------------------------------------------------------------------------
// Decompression, for the kafka_consumer source

/** Decompresses a records section: LZ4 or zstd frames, one or several back to back. */
export type Decompressor = (data: Uint8Array) => Promise<Buffer>;

/**
 * Decompressed output beyond this is refused (SourceError ETOOBIG): a corrupt or hostile frame
 * could otherwise claim or expand to gigabytes. A Kafka batch is at most a few MiB compressed
 * (message.max.bytes, 1 MiB by default), so this leaves room for ratios far above what flow
 * records reach.
 */
export const DECOMPRESSED_MAX_BYTES = 256 << 20;

/**
 * A decompression call runs on the JS thread when its input is at most NATIVE_SYNC_MAX_BYTES and
 * it writes at most this many bytes: it then holds the event loop about as long as the sink's
 * compression does at most (about 20 us for lz4, 30 us for zstd with flow records here), while a
 * hand-off to a worker thread takes 45 to 75 us in all for the same batch.
 */
export const DECOMPRESS_SYNC_MAX_BYTES = 64 << 10;

/**
 * The decompressor of `codec`. Loads the codec's library now, so a missing one is known at once:
 * throws SourceError ENOCODEC naming the package to install.
 */
export function decompressor(codec: 'lz4' | 'zstd' | 'snappy'): Decompressor {
  if (codec === 'snappy') {
    const snappy = loadSnappy();
    return (data) => {
      try {
        return Promise.resolve(snappyWith(snappy, data));
      } catch (err) {
        return Promise.reject(asError(err));
      }
    };
  }
  const decoder = nativeDecoder(codec);
  return (data) => decompressWith(decoder, data);
}

// --------------------------------------------------------------------------------------------
// snappy

const SNAPPY_LIBRARY: CodecLibrary = { file: 'libsnappy.so.1', debianPackage: 'libsnappy1v5' };

/** snappy-c.h's snappy_status: SNAPPY_OK. */
const SNAPPY_OK = 0;

/**
 * The start of the xerial snappy-java stream that Kafka's Java producer writes: magic (8 bytes),
 * version and compatible version (int32 each), then chunks of int32 length + one raw snappy block.
 */
const XERIAL_MAGIC = Buffer.from([0x82, 0x53, 0x4e, 0x41, 0x50, 0x50, 0x59, 0x00]);
const XERIAL_HEADER_BYTES = 16;

interface SnappyLibrary {
  uncompressedLength: NativeFunction;
  uncompress: NativeFunction;
}

let snappyLibrary: SnappyLibrary | undefined;

/** Kept once loaded; a library that failed to load is looked for again on the next call. */
function loadSnappy(): SnappyLibrary {
  return (snappyLibrary ??= loadLibrary(
    'kafka consumer decompression snappy',
    SNAPPY_LIBRARY,
    (lib) => ({
      uncompressedLength: lib.func(
        'int snappy_uncompressed_length(const void *compressed, size_t n, _Out_ size_t *result)',
      ),
      uncompress: lib.func(
        'int snappy_uncompress(const void *compressed, size_t n, void *uncompressed, _Inout_ size_t *length)',
      ),
    }),
    (message, cause) => new SourceError('ENOCODEC', message, { cause }),
  ));
}

/**
 * The data of a snappy records section, in either framing Kafka's producers write: the xerial
 * stream of the Java producer (see XERIAL_MAGIC), or one raw snappy block (librdkafka's). Rejects
 * with SourceError ENOCODEC without libsnappy.so.1 (looked for again on the next call), ECORRUPT
 * for data that is neither, ETOOBIG past DECOMPRESSED_MAX_BYTES.
 *
 * The blocks are decompressed on the JS thread, one call each, straight into the output: snappy
 * decompresses at well over 1 GB/s, so a fetch of max_bytes_per_partition (1 MiB by default)
 * holds the event loop about a millisecond, less than decoding its records does.
 */
export function snappyDecompress(data: Uint8Array): Promise<Buffer> {
  try {
    return Promise.resolve(snappyWith(loadSnappy(), data));
  } catch (err) {
    return Promise.reject(asError(err));
  }
}

const snappyCorrupt = (what: string): SourceError =>
  new SourceError(
    'ECORRUPT',
    `kafka consumer decompression snappy: ${what}; check the producer that wrote it`,
  );

/** The raw snappy blocks of `data`: [start, end) pairs. */
function snappyBlocks(data: Uint8Array): number[] {
  const isXerial =
    data.length >= XERIAL_HEADER_BYTES && XERIAL_MAGIC.compare(data, 0, XERIAL_MAGIC.length) === 0;
  if (!isXerial) return [0, data.length];
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const blocks: number[] = [];
  for (let at = XERIAL_HEADER_BYTES; at < data.length;) {
    if (at + 4 > data.length) throw snappyCorrupt('truncated xerial snappy stream, a chunk length is cut');
    const n = view.getInt32(at);
    at += 4;
    if (n < 0 || at + n > data.length)
      throw snappyCorrupt(`truncated xerial snappy stream, a chunk of ${n} bytes ends early`);
    blocks.push(at, at + n);
    at += n;
  }
  return blocks;
}

function snappyWith(snappy: SnappyLibrary, data: Uint8Array): Buffer {
  if (data.length === 0) throw snappyCorrupt('empty input, no snappy data');
  const blocks = snappyBlocks(data);
  const sizes: number[] = [];
  const size: [number] = [0];
  let total = 0;
  for (let i = 0; i < blocks.length; i += 2) {
    const block = data.subarray(blocks[i], blocks[i + 1]);
    if ((snappy.uncompressedLength(block, block.length, size) as number) !== SNAPPY_OK)
      throw snappyCorrupt('invalid snappy data (no block length)');
    const n = Number(size[0]);
    total += n;
    if (total > DECOMPRESSED_MAX_BYTES) {
      throw new SourceError(
        'ETOOBIG',
        `kafka consumer decompression snappy: more than ${DECOMPRESSED_MAX_BYTES} bytes once decompressed, refused; lower the producer's batch size`,
      );
    }
    sizes.push(n);
  }
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (let i = 0; i < blocks.length; i += 2) {
    const block = data.subarray(blocks[i], blocks[i + 1]);
    const n = sizes[i / 2]!;
    size[0] = n;
    const status = snappy.uncompress(block, block.length, out.subarray(at, at + n), size) as number;
    if (status !== SNAPPY_OK || Number(size[0]) !== n) throw snappyCorrupt('invalid snappy data');
    at += n;
  }
  return out;
}

/**
 * The data of LZ4 frames (the standard frame format, independent or linked blocks, with or without
 * content size and checksums). Rejects with SourceError ENOCODEC without liblz4.so.1 (looked for
 * again on the next call), ECORRUPT for data that is not whole LZ4 frames, ETOOBIG past
 * DECOMPRESSED_MAX_BYTES.
 */
export function lz4Decompress(data: Uint8Array): Promise<Buffer> {
  try {
    return decompressWith(nativeDecoder('lz4'), data);
  } catch (err) {
    return Promise.reject(asError(err));
  }
}

/**
 * The data of zstd frames, with or without content size, skippable frames included. Rejects as
 * lz4Decompress() does, without libzstd.so.1 with ENOCODEC.
 */
export function zstdDecompress(data: Uint8Array): Promise<Buffer> {
  try {
    return decompressWith(nativeDecoder('zstd'), data);
  } catch (err) {
    return Promise.reject(asError(err));
  }
}

type NativeFunction = ReturnType<LibraryHandle['func']>;

/** size_t words in front of a streaming call's input: the call's in/out sizes or buffers. */
const STATE_WORDS = 8;
const STATE_BYTES = STATE_WORDS * 8;

interface NativeDecoder {
  name: 'lz4' | 'zstd';
  /** The format's name in messages. */
  format: string;
  contexts: ContextPool;
  /** Readies a context for new input: one whose last input failed may hold half a frame. */
  reset(ctx: Ptr): void;
  /** Decompresses part of a stream; takes the arguments streamArgs() returns. */
  stream: NativeFunction;
  /**
   * Arguments of one `stream` call reading up to `srcSize` bytes at `src` and writing up to
   * `dstSize` at `dst`; `state` (native memory at `statePtr`) carries what the call read and wrote.
   */
  streamArgs(
    ctx: Ptr,
    state: BigUint64Array,
    statePtr: Ptr,
    src: Ptr,
    srcSize: number,
    dst: Ptr,
    dstSize: number,
  ): unknown[];
  /** Bytes the last `stream` call read and wrote. */
  progress(state: BigUint64Array): [read: number, written: number];
  /**
   * When every frame of `data` records its content size: their total, decompressed then in one
   * call by `oneShot(ctx, dst, capacity, src, n)`. Undefined otherwise, or when `data` is invalid
   * (the stream then says why).
   */
  contentSize(data: Uint8Array): number | undefined;
  oneShot: NativeFunction | undefined;
  error(result: SizeT): string | undefined;
}

let lz4Decoder: NativeDecoder | undefined;
let zstdDecoder: NativeDecoder | undefined;

/** Kept once loaded; a library that failed to load is looked for again on the next call. */
function nativeDecoder(codec: 'lz4' | 'zstd'): NativeDecoder {
  if (codec === 'lz4') return (lz4Decoder ??= loadLz4Decoder());
  return (zstdDecoder ??= loadZstdDecoder());
}

const decompressionLibrary = <T>(codec: 'lz4' | 'zstd', bind: (lib: LibraryHandle) => T): T =>
  loadLibrary(
    `kafka consumer decompression ${codec}`,
    codec === 'lz4' ? LZ4_LIBRARY : ZSTD_LIBRARY,
    bind,
    (message, cause) => new SourceError('ENOCODEC', message, { cause }),
  );

const outOfMemory = (codec: string, what: string) => (): SourceError =>
  new SourceError('ENOMEM', `kafka consumer decompression ${codec}: ${what} failed; out of memory`);

/** LZ4F_VERSION: the frame API version the context is made for. */
const LZ4F_VERSION = 100;

function loadLz4Decoder(): NativeDecoder {
  return decompressionLibrary('lz4', (lib) => {
    const create = lib.func(
      'size_t LZ4F_createDecompressionContext(_Out_ void **dctx, unsigned int version)',
    );
    const free = lib.func('size_t LZ4F_freeDecompressionContext(void *dctx)');
    const reset = lib.func('void LZ4F_resetDecompressionContext(void *dctx)');
    // Sizes go in and out through size_t pointers: in, the room; out, what was used.
    const decompress = lib.func(
      'size_t LZ4F_decompress(void *dctx, void *dst, void *dstSize, const void *src, void *srcSize, const void *options)',
    );
    const isError = lib.func('unsigned int LZ4F_isError(size_t code)');
    const errorName = lib.func('const char *LZ4F_getErrorName(size_t code)');
    const error = (r: SizeT): string | undefined =>
      (isError(r) as number) !== 0 ? (errorName(r) as string) : undefined;
    return {
      name: 'lz4',
      format: 'LZ4',
      contexts: new ContextPool(
        () => {
          const out: (Ptr | null)[] = [null];
          return error(create(out, LZ4F_VERSION) as SizeT) === undefined ? out[0]! : null;
        },
        (dctx) => void free(dctx),
        outOfMemory('lz4', 'LZ4F_createDecompressionContext'),
      ),
      reset: (dctx) => void reset(dctx),
      stream: decompress,
      streamArgs: (dctx, state, statePtr, src, srcSize, dst, dstSize) => {
        state[0] = BigInt(dstSize);
        state[1] = BigInt(srcSize);
        return [dctx, dst, statePtr, src, statePtr + 8n, null];
      },
      progress: (state) => [Number(state[1]), Number(state[0])],
      // Kafka's producers leave the content size out of LZ4 frames: always streamed.
      contentSize: () => undefined,
      oneShot: undefined,
      error,
    };
  });
}

/** ZSTD_getFrameContentSize() results from here up are no sizes: 2^64 - 2 (error), 2^64 - 1 (unknown). */
const ZSTD_CONTENTSIZE_ERROR = 2n ** 64n - 2n;
/** ZSTD_DCtx_reset()'s ZSTD_reset_session_only. */
const ZSTD_RESET_SESSION_ONLY = 1;

function loadZstdDecoder(): NativeDecoder {
  return decompressionLibrary('zstd', (lib) => {
    const create = lib.func('void *ZSTD_createDCtx(void)');
    const free = lib.func('size_t ZSTD_freeDCtx(void *dctx)');
    const reset = lib.func('size_t ZSTD_DCtx_reset(void *dctx, int directive)');
    const frameSize = lib.func('size_t ZSTD_findFrameCompressedSize(const void *src, size_t n)');
    const contentSize = lib.func('unsigned long long ZSTD_getFrameContentSize(const void *src, size_t n)');
    const oneShot = lib.func(
      'size_t ZSTD_decompressDCtx(void *dctx, void *dst, size_t capacity, const void *src, size_t n)',
    );
    // ZSTD_outBuffer and ZSTD_inBuffer: { pointer, size, pos }, each in three size_t words.
    const stream = lib.func('size_t ZSTD_decompressStream(void *dctx, void *output, void *input)');
    const isError = lib.func('unsigned int ZSTD_isError(size_t code)');
    const errorName = lib.func('const char *ZSTD_getErrorName(size_t code)');
    const error = (r: SizeT): string | undefined =>
      (isError(r) as number) !== 0 ? (errorName(r) as string) : undefined;
    return {
      name: 'zstd',
      format: 'zstd',
      contexts: new ContextPool(
        () => create() as Ptr | null,
        (dctx) => void free(dctx),
        outOfMemory('zstd', 'ZSTD_createDCtx'),
      ),
      reset: (dctx) => void reset(dctx, ZSTD_RESET_SESSION_ONLY),
      stream,
      streamArgs: (dctx, state, statePtr, src, srcSize, dst, dstSize) => {
        state.set([dst, BigInt(dstSize), 0n, src, BigInt(srcSize), 0n]);
        return [dctx, statePtr, statePtr + 24n];
      },
      progress: (state) => [Number(state[5]), Number(state[2])],
      contentSize: (data) => {
        // Frames from other producers may be several back to back, and may omit their size
        // (librdkafka streams its frames), so every frame is looked at.
        let total = 0;
        for (let at = 0; at < data.length;) {
          const rest = data.subarray(at);
          const frame = frameSize(rest, rest.length) as SizeT;
          if (error(frame) !== undefined) return undefined;
          const size = BigInt(contentSize(rest, rest.length) as SizeT);
          if (size >= ZSTD_CONTENTSIZE_ERROR) return undefined;
          total += Number(size);
          at += Number(frame);
        }
        return total;
      },
      oneShot,
      error,
    };
  });
}

function decodeFailed(decoder: NativeDecoder, code: string, what: string, cause?: unknown): SourceError {
  return new SourceError(
    code,
    `kafka consumer decompression ${decoder.name}: ${what}`,
    cause === undefined ? undefined : { cause },
  );
}

const corrupt = (decoder: NativeDecoder, what: string): SourceError =>
  decodeFailed(decoder, 'ECORRUPT', `${what}; check the producer that wrote it`);

const tooBig = (decoder: NativeDecoder): SourceError =>
  decodeFailed(
    decoder,
    'ETOOBIG',
    `more than ${DECOMPRESSED_MAX_BYTES} bytes once decompressed, refused; lower the producer's batch size`,
  );

/** A native call on the JS thread, or on a koffi worker thread when `async`. */
function callNative(
  decoder: NativeDecoder,
  fn: NativeFunction,
  args: unknown[],
  async: boolean,
): Promise<SizeT> {
  if (!async) return Promise.resolve(fn(...args) as SizeT);
  return new Promise<SizeT>((resolve, reject) => {
    const done: Done = (err, r) => {
      if (err)
        reject(decodeFailed(decoder, 'ECALL', `the call on a worker thread failed (${messageOf(err)})`, err));
      else resolve(r);
    };
    try {
      fn.async(...args, done);
    } catch (err) {
      // koffi throws at once when its queue of async calls is full; nothing runs then.
      reject(
        decodeFailed(
          decoder,
          'EBUSY',
          `koffi could not start the call (${messageOf(err)}); retry later`,
          err,
        ),
      );
    }
  });
}

function decompressWith(decoder: NativeDecoder, data: Uint8Array): Promise<Buffer> {
  try {
    if (data.length === 0) throw corrupt(decoder, `empty input, no ${decoder.format} frame`);
    const size = decoder.contentSize(data);
    if (size === undefined) return streamed(decoder, data);
    if (size > DECOMPRESSED_MAX_BYTES) throw tooBig(decoder);
    return inOneCall(decoder, data, size);
  } catch (err) {
    return Promise.reject(asError(err));
  }
}

/** Frames whose total size is known: one call straight into a buffer of that size. */
async function inOneCall(decoder: NativeDecoder, data: Uint8Array, size: number): Promise<Buffer> {
  const oneShot = decoder.oneShot!;
  const n = data.length;
  const ctx = decoder.contexts.acquire();
  try {
    if (n <= NATIVE_SYNC_MAX_BYTES && size <= DECOMPRESS_SYNC_MAX_BYTES) {
      const out = Buffer.allocUnsafe(size);
      checkSize(decoder, oneShot(ctx, out, size, data, n) as SizeT, size);
      return out;
    }
    const block = acquireBlock(n + size);
    try {
      block.bytes.set(data, 0);
      const r = await callNative(decoder, oneShot, [ctx, block.ptr + BigInt(n), size, block.ptr, n], true);
      checkSize(decoder, r, size);
      return Buffer.from(block.bytes.subarray(n, n + size));
    } finally {
      releaseBlock(block);
    }
  } finally {
    decoder.contexts.release(ctx);
  }
}

/** Throws unless a one-shot call's result `r` is the `size` the frames record. */
function checkSize(decoder: NativeDecoder, r: SizeT, size: number): void {
  const error = decoder.error(r);
  if (error !== undefined) throw corrupt(decoder, `invalid ${decoder.format} data (${error})`);
  if (Number(r) !== size)
    throw corrupt(
      decoder,
      `invalid ${decoder.format} data (${Number(r)} bytes where the frames record ${size})`,
    );
}

/** The first output block of a streamed input of `n` bytes: flow records compress about 4 to 1. */
const firstChunkBytes = (n: number): number => Math.min(Math.max(n * 4, 1), 4 << 20);
/** Output blocks double up to this size. */
const CHUNK_MAX_BYTES = 16 << 20;

/**
 * Frames of unknown total size: streaming calls, each writing into the rest of an output block,
 * the next block twice as large when it is full. The first call runs on the JS thread for a small
 * input, with at most DECOMPRESS_SYNC_MAX_BYTES of room; the rest on worker threads.
 */
async function streamed(decoder: NativeDecoder, data: Uint8Array): Promise<Buffer> {
  const n = data.length;
  const input = acquireBlock(STATE_BYTES + n);
  const chunks: Block[] = [];
  const ctx = decoder.contexts.acquire();
  try {
    decoder.reset(ctx);
    input.bytes.set(data, STATE_BYTES);
    const state = new BigUint64Array(input.bytes.buffer, input.bytes.byteOffset, STATE_WORDS);
    const src = input.ptr + BigInt(STATE_BYTES);
    let sync = n <= NATIVE_SYNC_MAX_BYTES;
    let next = firstChunkBytes(n);
    let chunk: Block | undefined;
    let used = 0;
    let read = 0;
    let total = 0;
    for (;;) {
      if (chunk === undefined || used === chunk.bytes.length) {
        chunk = acquireBlock(next);
        chunks.push(chunk);
        used = 0;
        next = Math.min(chunk.bytes.length * 2, CHUNK_MAX_BYTES);
      }
      let room = chunk.bytes.length - used;
      if (sync) room = Math.min(room, DECOMPRESS_SYNC_MAX_BYTES);
      const args = decoder.streamArgs(
        ctx,
        state,
        input.ptr,
        src + BigInt(read),
        n - read,
        chunk.ptr + BigInt(used),
        room,
      );
      const r = await callNative(decoder, decoder.stream, args, !sync);
      sync = false;
      const error = decoder.error(r);
      if (error !== undefined) throw corrupt(decoder, `invalid ${decoder.format} data (${error})`);
      const [didRead, wrote] = decoder.progress(state);
      read += didRead;
      used += wrote;
      total += wrote;
      if (total > DECOMPRESSED_MAX_BYTES) throw tooBig(decoder);
      // 0: the frame is whole and flushed; then the input is done, or the next frame starts.
      if (Number(r) === 0 && read === n) break;
      if (didRead === 0 && wrote === 0) {
        throw corrupt(
          decoder,
          read === n
            ? `truncated ${decoder.format} data, the last frame ends early`
            : `invalid ${decoder.format} data (no progress)`,
        );
      }
    }
    const out = Buffer.allocUnsafe(total);
    let at = 0;
    for (const c of chunks) {
      const len = Math.min(c.bytes.length, total - at);
      out.set(c.bytes.subarray(0, len), at);
      at += len;
    }
    return out;
  } finally {
    decoder.contexts.release(ctx);
    releaseBlock(input);
    for (const c of chunks) releaseBlock(c);
  }
}
