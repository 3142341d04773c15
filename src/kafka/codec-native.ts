/**
 * The native side of the Kafka codecs: loading the system's liblz4.so.1, libzstd.so.1 and
 * libsnappy.so.1 through koffi (a missing library becomes an error naming the package to install),
 * pools of codec contexts, and blocks of native memory that calls on koffi's worker threads read
 * and write. compress.ts and decompress.ts bind the functions they need.
 */
import koffi, { type LibraryHandle } from 'koffi';
import { messageOf } from '../errors.js';
import { KafkaError } from './errors.js';

/**
 * Up to this many bytes of input the native codecs run on the JS thread, straight from and
 * into Buffers: the event loop is then held for at most about 16 us (lz4) or 25 us (zstd) per
 * batch, and a worker thread would not finish sooner, since the copies and the hand-off cost as
 * much (bench/kafka.bench.ts, kafka.compress_*_at_sync_max.js_thread: 15.8 and 25.4 us against
 * *_above_sync_max.worker: 16.5 and 30.1 us, one record more).
 */
export const NATIVE_SYNC_MAX_BYTES = 16 << 10;

export type Ptr = bigint;
/** What a codec's compress call returns: a size, or an error code the library can name. */
export type SizeT = number | bigint;
export type Done = (err: unknown, result: SizeT) => void;

export interface CodecLibrary {
  file: string;
  debianPackage: string;
}

export const LZ4_LIBRARY: CodecLibrary = { file: 'liblz4.so.1', debianPackage: 'liblz4-1' };
export const ZSTD_LIBRARY: CodecLibrary = { file: 'libzstd.so.1', debianPackage: 'libzstd1' };
export const SNAPPY_LIBRARY: CodecLibrary = { file: 'libsnappy.so.1', debianPackage: 'libsnappy1v5' };

export type NativeFunction = ReturnType<LibraryHandle['func']>;

/** Opens a codec library for any user of it: `what` starts the message, `fail` makes the error. */
export function loadLibrary<T>(
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
export class ContextPool {
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

/**
 * Native memory for the async calls: input and output are copied through it, because a JS
 * buffer may be handed to C only while the call runs on the JS thread. Blocks are powers of two
 * from 64 KiB and are kept for reuse up to KEPT_BYTES: fresh multi-megabyte blocks would each
 * be mapped and faulted in page by page.
 */
export interface Block {
  ptr: Ptr;
  bytes: Uint8Array;
}

const KEPT_BYTES = 64 << 20;
const freeBlocks = new Map<number, Block[]>();
let keptBytes = 0;

export function acquireBlock(minBytes: number): Block {
  let size = 1 << 16;
  while (size < minBytes) size *= 2;
  const block = freeBlocks.get(size)?.pop();
  if (block !== undefined) {
    keptBytes -= size;
    return block;
  }
  const ptr = koffi.alloc('uint8_t', size) as Ptr | null;
  if (ptr === null) throw new KafkaError('ENOMEM', `kafka sink compression: cannot allocate ${size} bytes`);
  return { ptr, bytes: new Uint8Array(koffi.view(ptr, size)) };
}

export function releaseBlock(block: Block): void {
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

/** Errors pass through as they are; anything else a native call throws is wrapped. */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new KafkaError('ECALL', `kafka codec: ${String(err)}`, { cause: err });
}
