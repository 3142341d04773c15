/**
 * `${VAR}` and `${VAR:-default}` in scalar values of a pipeline file, from the environment. The
 * default applies when VAR is unset or empty, as in the shell, and may hold references itself:
 * `${A:-${B:-x}}`. `$$` is a literal `$`; a `$` followed by anything else stays as written, so
 * regular expressions with `$` anchors need no escaping.
 */

export type Env = Readonly<Record<string, string | undefined>>;

export interface InterpolationError {
  message: string;
  /** The text of the faulty reference as written, to find its column in the file. */
  token: string;
}

export type InterpolationResult =
  { ok: true; value: string; changed: boolean } | { ok: false; errors: InterpolationError[] };

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Defaults inside defaults, `${A:-${B:-${C:-x}}}`, at most this deep. */
export const MAX_NESTING = 8;

export interface InterpolateOptions {
  /** The value is a secret: messages do not quote it. */
  secret?: boolean;
}

/**
 * Index of the `}` closing the reference whose body starts at `from`, or -1. A default may hold
 * references of its own (`${A:-${B:-x}}`), so braces of nested `${` are counted; `$$` is skipped.
 */
function closingBrace(text: string, from: number): number {
  let depth = 0;
  for (let i = from; i < text.length; i++) {
    const c = text[i];
    if (c === '$' && text[i + 1] === '$') {
      i++;
    } else if (c === '$' && text[i + 1] === '{') {
      depth++;
      i++;
    } else if (c === '}') {
      if (depth === 0) return i;
      depth--;
    }
  }
  return -1;
}

export function interpolate(text: string, env: Env, options: InterpolateOptions = {}): InterpolationResult {
  return expand(text, env, options, 0);
}

function expand(text: string, env: Env, options: InterpolateOptions, nesting: number): InterpolationResult {
  if (!text.includes('$')) return { ok: true, value: text, changed: false };
  const errors: InterpolationError[] = [];
  const quoted = (t: string): string => (options.secret ? 'the value (a secret, not shown)' : `'${t}'`);
  let out = '';
  let i = 0;
  while (i < text.length) {
    const dollar = text.indexOf('$', i);
    if (dollar < 0 || dollar === text.length - 1) {
      out += text.slice(i);
      break;
    }
    out += text.slice(i, dollar);
    const next = text[dollar + 1];
    if (next === '$') {
      out += '$';
      i = dollar + 2;
      continue;
    }
    if (next !== '{') {
      out += '$';
      i = dollar + 1;
      continue;
    }
    const close = closingBrace(text, dollar + 2);
    if (close < 0) {
      errors.push({
        message: `unterminated '\${' in ${quoted(text)}; close it with '}' or write '$$' for a literal '$'`,
        token: text.slice(dollar),
      });
      break;
    }
    const body = text.slice(dollar + 2, close);
    const token = text.slice(dollar, close + 1);
    i = close + 1;
    const sep = body.indexOf(':-');
    const name = sep < 0 ? body : body.slice(0, sep);
    if (!NAME.test(name)) {
      errors.push({
        message: options.secret
          ? "bad variable name in a reference of the value (a secret, not shown); names use letters, digits and '_' and do not start with a digit"
          : `bad variable name '${name}' in '${token}'; names use letters, digits and '_' and do not start with a digit`,
        token,
      });
      continue;
    }
    const value = env[name];
    if (sep >= 0) {
      if (value !== undefined && value !== '') {
        out += value;
        continue;
      }
      // The default is read only when it is used, as in the shell: `${A:-${B}}` needs B only
      // when A is unset.
      const fallback = body.slice(sep + 2);
      if (nesting >= MAX_NESTING && fallback.includes('${')) {
        errors.push({
          message: `defaults nested more than ${MAX_NESTING} deep in '${token}'; nest fewer`,
          token,
        });
        continue;
      }
      const inner = expand(fallback, env, options, nesting + 1);
      if (inner.ok) out += inner.value;
      else errors.push(...inner.errors);
    } else if (value === undefined) {
      errors.push({
        message: `environment variable ${name} is not set; set it, or give a default with \${${name}:-value}`,
        token,
      });
    } else {
      out += value;
    }
  }
  return errors.length > 0 ? { ok: false, errors } : { ok: true, value: out, changed: out !== text };
}

/**
 * What a plain (unquoted) YAML scalar means once interpolated, resolved like the YAML 1.2 core
 * schema does, so `max_entries: ${MAX:-5000}` is the number 5000 while `"${MAX}"` stays a string.
 */
export function resolvePlainScalar(text: string): string | number | boolean | null {
  if (/^(?:~|null|Null|NULL)?$/.test(text)) return null;
  if (/^(?:true|True|TRUE)$/.test(text)) return true;
  if (/^(?:false|False|FALSE)$/.test(text)) return false;
  if (/^[-+]?[0-9]+$/.test(text)) return Number(text);
  if (/^0o[0-7]+$/.test(text)) return parseInt(text.slice(2), 8);
  if (/^0x[0-9a-fA-F]+$/.test(text)) return parseInt(text.slice(2), 16);
  if (/^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$/.test(text)) return Number(text);
  if (/^[-+]?\.(?:inf|Inf|INF)$/.test(text)) return text.startsWith('-') ? -Infinity : Infinity;
  if (/^\.(?:nan|NaN|NAN)$/.test(text)) return NaN;
  return text;
}
