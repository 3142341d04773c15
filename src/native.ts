/**
 * Calls into C through koffi that more than one layer needs: the C library, loaded once, rxflow's
 * own library (native/*.c), and a call on a koffi worker thread as a promise.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import koffi, { type LibraryHandle } from 'koffi';

export type NativeFunction = ReturnType<LibraryHandle['func']>;

let libcHandle: LibraryHandle | undefined;

/** The C library (libc.so.6), loaded on first use. */
export function libcLibrary(): LibraryHandle {
  libcHandle ??= koffi.load('libc.so.6');
  return libcHandle;
}

let rxflowHandle: LibraryHandle | null | undefined;

/**
 * dist/native/librxflow.so (built by native/build.sh), found from src/ (tests) or dist/src/
 * (built); undefined when it was not built.
 */
export function rxflowLibrary(): LibraryHandle | undefined {
  if (rxflowHandle === undefined) {
    const file = ['../native/librxflow.so', '../dist/native/librxflow.so']
      .map((rel) => fileURLToPath(new URL(rel, import.meta.url)))
      .find((f) => existsSync(f));
    rxflowHandle = file === undefined ? null : koffi.load(file);
  }
  return rxflowHandle ?? undefined;
}

/**
 * Runs `fn(...args)` on a koffi worker thread, off the event loop. `failed` makes the rejection:
 * `started` is false when koffi refused to queue the call (its queue was full; nothing ran), true
 * when the call was made and failed. `after` runs once the call is over either way, e.g. to free
 * native memory the arguments point into.
 */
export function callOnWorker<T>(
  fn: NativeFunction,
  args: readonly unknown[],
  failed: (err: unknown, started: boolean) => Error,
  after?: () => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    try {
      fn.async(...args, (err: unknown, result: T) => {
        after?.();
        if (err) reject(failed(err, true));
        else resolve(result);
      });
    } catch (err) {
      after?.();
      reject(failed(err, false));
    }
  });
}
