/**
 * Secrets never leave the process: options that hold one (a password, a token, a secret) are
 * shown as REDACTED in errors, logs and status, and URLs are shown without their userinfo
 * (`nats://user:pass@host` as `nats://host`). Every layer uses these, so they sit beside the logger.
 */

export const REDACTED = '[redacted]';

/**
 * True for an option or field name that holds a secret: `password`, `sasl_password`, `token`,
 * `client_secret`, `passphrase`. Names of files holding one (`password_file`, `credentials_file`)
 * are paths, not secrets.
 */
export function isSecretKey(key: string): boolean {
  const k = key.toLowerCase();
  if (k.endsWith('_file') || k.endsWith('file')) return false;
  return /^pass$|password|passphrase|passwd|token|secret|credential|private_?key|api_?key/.test(k);
}

// scheme://userinfo@ ; userinfo has no '/', '@' or whitespace.
const USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)[^/@\s'"]*@/gi;

/** `nats://user:pass@host:4222` -> `nats://host:4222`, wherever URLs appear in the text. */
export function redactUrls(text: string): string {
  return text.replace(USERINFO, '$1');
}

/** A copy of a value with secret fields replaced by REDACTED and URLs stripped of userinfo, at any depth. */
export function redactValue(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redactUrls(value);
  if (value === null || typeof value !== 'object' || depth > 16) return value;
  if (value instanceof Error) return redactError(value, depth);
  if (Array.isArray(value)) return value.map((v) => redactValue(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    Object.defineProperty(out, k, {
      value: isSecretKey(k) && v !== undefined && v !== null ? REDACTED : redactValue(v, depth + 1),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

/** An error of the same class with message, stack, own fields and cause redacted. */
function redactError(err: Error, depth: number): Error {
  const copy = Object.create(Object.getPrototypeOf(err) as object) as Error;
  for (const [k, v] of Object.entries(err)) {
    Object.defineProperty(copy, k, {
      value: isSecretKey(k) && v !== undefined && v !== null ? REDACTED : redactValue(v, depth + 1),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  for (const k of ['message', 'stack'] as const) {
    const v = err[k];
    if (typeof v === 'string')
      Object.defineProperty(copy, k, { value: redactUrls(v), writable: true, configurable: true });
  }
  if (err.cause !== undefined) {
    Object.defineProperty(copy, 'cause', {
      value: redactValue(err.cause, depth + 1),
      writable: true,
      configurable: true,
    });
  }
  return copy;
}
