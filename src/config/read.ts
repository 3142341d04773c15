/**
 * Reading a YAML config file (a pipeline, a firewall policy) from a path a user gave: only a
 * regular file, of bounded size, without NUL bytes.
 */
import { constants, type Stats } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { PipelineError } from './errors.js';

/**
 * The largest pipeline or policy file read, 1 MiB: such a file is a few kB, and a limit keeps a
 * wrong path (a log, a disk image) from being read into memory whole.
 */
export const MAX_CONFIG_BYTES = 1024 * 1024;

function fileKind(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a fifo';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

function notRegular(what: string, file: string, st: Stats): PipelineError {
  return new PipelineError(
    'ENOTFILE',
    `read ${lead(what)}${file}: ${fileKind(st)}, not a regular file; give the path of a ${what} YAML file`,
  );
}

function tooBig(what: string, file: string, size: number | string): PipelineError {
  return new PipelineError(
    'ETOOBIG',
    `read ${lead(what)}${file}: ${size} bytes, more than the ${MAX_CONFIG_BYTES} bytes (1 MiB) a ${what} file may have; check the path`,
  );
}

/** Pipeline messages name the file alone, as they always have; others say what the file is. */
function lead(what: string): string {
  return what === 'pipeline' ? '' : `${what} `;
}

/**
 * The text of a pipeline (or firewall policy) file. Only a regular file is read: a fifo with no writer would block for
 * ever and /dev/zero never ends, so the path is checked before it is opened, opened non-blocking,
 * and checked again on the open descriptor (the path may have changed in between).
 */
export async function readYamlFile(file: string, what = 'pipeline'): Promise<string> {
  let st: Stats;
  try {
    st = await stat(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'no such file; check the path' : (err as Error).message;
    throw new PipelineError('ENOFILE', `read ${lead(what)}${file}: ${reason}`, { cause: err });
  }
  if (!st.isFile()) throw notRegular(what, file, st);
  if (st.size > MAX_CONFIG_BYTES) throw tooBig(what, file, st.size);
  let bytes: Buffer;
  try {
    const handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
    try {
      const fst = await handle.stat();
      if (!fst.isFile()) throw notRegular(what, file, fst);
      const buffer = Buffer.alloc(MAX_CONFIG_BYTES + 1);
      let length = 0;
      for (;;) {
        const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
        if (bytesRead === 0) break;
        length += bytesRead;
        if (length > MAX_CONFIG_BYTES) throw tooBig(what, file, `over ${MAX_CONFIG_BYTES}`);
      }
      bytes = buffer.subarray(0, length);
    } finally {
      await handle.close();
    }
  } catch (err) {
    if (err instanceof PipelineError) throw err;
    throw new PipelineError('ENOFILE', `read ${lead(what)}${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (bytes.includes(0)) {
    throw new PipelineError(
      'ENOTTEXT',
      `read ${lead(what)}${file}: not a text file (it has NUL bytes); give the path of a ${what} YAML file`,
    );
  }
  return bytes.toString('utf8');
}
