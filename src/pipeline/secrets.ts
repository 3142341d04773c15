/**
 * Secrets from files: an option `<secret>_file` (e.g. `password_file`) beside a secret option
 * (`password`) names a file whose content is the secret, so it need not sit in the pipeline file
 * or the environment (a Kubernetes or systemd credential, a file only the agent's user reads).
 * The loader reads it once the config is valid and hands the component the secret option.
 */
import { closeSync, constants, fstatSync, openSync, readSync, statSync, type Stats } from 'node:fs';
import { isSecretKey, registerSecret, registerUrlSecrets } from '../redact.js';
import type { Path } from '../config/document.js';
import { PipelineError } from '../config/errors.js';

/** A secret file is a line or a few: anything larger is the wrong file. */
export const MAX_SECRET_BYTES = 64 * 1024;

const SUFFIX = '_file';

function isMap(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function regular(file: string, st: Stats): void {
  if (!st.isFile())
    throw new PipelineError('ENOTFILE', `read ${file}: not a regular file; give a file holding the secret`);
  if (st.size > MAX_SECRET_BYTES) {
    throw new PipelineError(
      'ETOOBIG',
      `read ${file}: ${st.size} bytes, more than the ${MAX_SECRET_BYTES} a secret file may have; check the path`,
    );
  }
}

/**
 * The secret in `file`, without one trailing newline (editors and `echo` add one). Only a regular
 * file is read, checked before it is opened and again once open (non-blocking, so a fifo cannot
 * hold the loader).
 */
export function readSecretFile(file: string): string {
  let fd: number | undefined;
  try {
    regular(file, statSync(file));
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
    regular(file, fstatSync(fd));
    const buffer = Buffer.alloc(MAX_SECRET_BYTES + 1);
    let length = 0;
    for (;;) {
      const n = readSync(fd, buffer, length, buffer.length - length, null);
      if (n === 0) break;
      length += n;
      if (length > MAX_SECRET_BYTES) {
        throw new PipelineError(
          'ETOOBIG',
          `read ${file}: more than the ${MAX_SECRET_BYTES} bytes a secret file may have; check the path`,
        );
      }
    }
    const text = buffer
      .subarray(0, length)
      .toString('utf8')
      .replace(/\r?\n$/, '');
    if (text === '')
      throw new PipelineError('EEMPTY', `read ${file}: the file is empty; write the secret into it`);
    return text;
  } catch (err) {
    if (err instanceof PipelineError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    const reason =
      code === 'ENOENT'
        ? 'no such file; check the path'
        : code === 'EACCES'
          ? 'permission denied; let the user rxflow runs as read it'
          : (err as Error).message;
    throw new PipelineError('ENOFILE', `read ${file}: ${reason}`, { cause: err });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Replaces each `<secret>_file` option of `config` (at any depth) whose schema also has `<secret>`
 * with `<secret>` set to the file's content; reports a file that cannot be read, or both options
 * given, at the `_file` option.
 */
export function resolveSecretFiles(
  config: unknown,
  schema: unknown,
  path: Path,
  report: (path: Path, message: string, side?: 'key' | 'value') => void,
): void {
  if (!isMap(config) || !isMap(schema)) return;
  const properties = isMap(schema.properties) ? schema.properties : {};
  for (const [key, value] of Object.entries(config)) {
    const child = properties[key];
    if (isMap(value)) {
      resolveSecretFiles(value, child, [...path, key], report);
      continue;
    }
    if (!key.endsWith(SUFFIX) || typeof value !== 'string') continue;
    const secret = key.slice(0, -SUFFIX.length);
    if (!isSecretKey(secret) || !(secret in properties)) continue;
    if (config[secret] !== undefined) {
      report([...path, key], `give ${secret} or ${key}, not both`, 'key');
      continue;
    }
    try {
      config[secret] = readSecretFile(value);
      delete config[key];
    } catch (err) {
      report([...path, key], (err as Error).message);
    }
  }
}

/**
 * Registers every secret of a checked config (secret options, passwords in URLs), so that logs and
 * messages scrub them even where a library echoes one under another name.
 */
export function registerSecrets(value: unknown, key?: string): void {
  if (typeof value === 'string') {
    if (key !== undefined && isSecretKey(key)) registerSecret(value);
    else registerUrlSecrets(value);
  } else if (Array.isArray(value)) {
    for (const v of value) registerSecrets(v, key);
  } else if (isMap(value)) {
    for (const [k, v] of Object.entries(value)) registerSecrets(v, k);
  }
}
