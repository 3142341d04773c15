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

/** Secrets this process was given, to scrub wherever a library echoes one (in an error, say). */
const known = new Set<string>();

/** Shorter values would scrub ordinary words; a secret that short is no secret. */
const MIN_KNOWN_LENGTH = 4;

/**
 * Remembers a secret the process holds (a password read from the pipeline, a file or the
 * environment), so redactText removes it from any text, even one whose field name says nothing.
 */
export function registerSecret(value: string): void {
  if (value.length >= MIN_KNOWN_LENGTH) known.add(value);
}

const URL_PASSWORD = /\b[a-z][a-z0-9+.-]*:\/\/[^/@\s:'"]*:([^/@\s'"]+)@/gi;

/** Registers the passwords of URLs with userinfo in `text` (`nats://user:pass@host`). */
export function registerUrlSecrets(text: string): void {
  for (const m of text.matchAll(URL_PASSWORD)) registerSecret(decodeURIComponent(m[1]!));
}

/** URLs without userinfo, and every registered secret replaced by REDACTED. */
export function redactText(text: string): string {
  let out = redactUrls(text);
  for (const secret of known) if (out.includes(secret)) out = out.split(secret).join(REDACTED);
  return out;
}

/** A copy of a value with secret fields replaced by REDACTED and texts as redactText makes them, at any depth. */
export function redactValue(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redactText(value);
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
      Object.defineProperty(copy, k, { value: redactText(v), writable: true, configurable: true });
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
