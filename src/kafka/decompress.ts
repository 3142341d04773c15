/**
 * Decompression of record batches' records sections, for the kafka_consumer source, with the
 * libraries the sink compresses with (lz4Decompress, zstdDecompress): whatever frames any producer
 * writes, several back to back included; and snappy with the system's libsnappy.so.1
 * (snappyDecompress), which the sink does not write. zstd frames that record their size are
 * decompressed in one call into a buffer of that size; LZ4 frames and zstd frames without it
 * (librdkafka's) are streamed into output blocks that double as they fill.
 */
import type { LibraryHandle } from 'koffi';
import { callOnWorker } from '../native.js';
import { messageOf } from '../errors.js';
import {
  LZ4_LIBRARY,
  NATIVE_SYNC_MAX_BYTES,
  SNAPPY_LIBRARY,
  ZSTD_LIBRARY,
  ContextPool,
  acquireBlock,
  asError,
  loadLibrary,
  releaseBlock,
  type Block,
  type NativeFunction,
  type Ptr,
  type SizeT,
} from './codec-native.js';
import { KafkaError } from './errors.js';

/** Decompresses a records section: LZ4 or zstd frames, one or several back to back. */
export type Decompressor = (data: Uint8Array) => Promise<Buffer>;

/**
 * Decompressed output beyond this is refused (KafkaError ETOOBIG): a corrupt or hostile frame
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
 * throws KafkaError ENOCODEC naming the package to install.
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
    (message, cause) => new KafkaError('ENOCODEC', message, { cause }),
  ));
}

/**
 * The data of a snappy records section, in either framing Kafka's producers write: the xerial
 * stream of the Java producer (see XERIAL_MAGIC), or one raw snappy block (librdkafka's). Rejects
 * with KafkaError ENOCODEC without libsnappy.so.1 (looked for again on the next call), ECORRUPT
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

const snappyCorrupt = (what: string): KafkaError =>
  new KafkaError(
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
      throw new KafkaError(
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
 * content size and checksums). Rejects with KafkaError ENOCODEC without liblz4.so.1 (looked for
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
    (message, cause) => new KafkaError('ENOCODEC', message, { cause }),
  );

const outOfMemory = (codec: string, what: string) => (): KafkaError =>
  new KafkaError('ENOMEM', `kafka consumer decompression ${codec}: ${what} failed; out of memory`);

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

function decodeFailed(decoder: NativeDecoder, code: string, what: string, cause?: unknown): KafkaError {
  return new KafkaError(
    code,
    `kafka consumer decompression ${decoder.name}: ${what}`,
    cause === undefined ? undefined : { cause },
  );
}

const corrupt = (decoder: NativeDecoder, what: string): KafkaError =>
  decodeFailed(decoder, 'ECORRUPT', `${what}; check the producer that wrote it`);

const tooBig = (decoder: NativeDecoder): KafkaError =>
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
  return callOnWorker<SizeT>(fn, args, (err, started) =>
    started
      ? decodeFailed(decoder, 'ECALL', `the call on a worker thread failed (${messageOf(err)})`, err)
      : decodeFailed(
          decoder,
          'EBUSY',
          `koffi could not start the call (${messageOf(err)}); retry later`,
          err,
        ),
  );
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
