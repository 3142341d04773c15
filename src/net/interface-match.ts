/**
 * Which interfaces a source attaches to: names, globs and regular expressions, as written in
 * `interfaces` and `exclude_interfaces`.
 *
 * - `eth0`: that name exactly.
 * - `veth*`, `tap?`, `eth[0-3]`: a shell glob (`*` any run, `?` one character, `[...]` a class,
 *   `[!...]` a negated one), matched against the whole name.
 * - `/^rxv/`, `/^(eth|ens)\d+$/i`: a JavaScript regular expression between slashes, with flags;
 *   it matches anywhere in the name unless anchored.
 */
import { InterfaceError } from './interfaces.js';

export type InterfacePatternKind = 'name' | 'glob' | 'regex';

export interface InterfacePattern {
  /** As written in the config. */
  readonly source: string;
  readonly kind: InterfacePatternKind;
  test(name: string): boolean;
}

const REGEX_LITERAL = /^\/(.+)\/([a-z]*)$/s;
const GLOB_CHARS = /[*?[]/;

/** Parses one entry of `interfaces` or `exclude_interfaces`; throws EPATTERN on a bad one. */
export function parseInterfacePattern(text: string, option = 'interfaces'): InterfacePattern {
  const literal = REGEX_LITERAL.exec(text);
  if (literal) {
    let re: RegExp;
    try {
      // No 'g' or 'y': a stateful regex would answer differently on every other test().
      re = new RegExp(literal[1]!, literal[2]!.replace(/[gy]/g, ''));
    } catch (err) {
      throw new InterfaceError(
        'EPATTERN',
        `${option}: '${text}' is not a valid regular expression (${(err as Error).message}); write it as /^veth/`,
        { cause: err },
      );
    }
    return { source: text, kind: 'regex', test: (name) => re.test(name) };
  }
  if (GLOB_CHARS.test(text)) {
    const re = globToRegExp(text, option);
    return { source: text, kind: 'glob', test: (name) => re.test(name) };
  }
  return { source: text, kind: 'name', test: (name) => name === text };
}

function globToRegExp(glob: string, option: string): RegExp {
  let out = '^';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') out += '.*';
    else if (c === '?') out += '.';
    else if (c === '[') {
      const end = glob.indexOf(']', i + 2);
      if (end < 0) {
        throw new InterfaceError(
          'EPATTERN',
          `${option}: '${glob}' has a '[' without its ']'; close the class, as in eth[0-3]`,
        );
      }
      let body = glob.slice(i + 1, end);
      if (body.startsWith('!')) body = `^${body.slice(1)}`;
      out += `[${body.replace(/\\/g, '\\\\')}]`;
      i = end;
    } else out += c.replace(/[.+^${}()|\\/\]]/g, '\\$&');
  }
  return new RegExp(`${out}$`);
}

/**
 * Whether an interface name is wanted: it matches an `include` pattern and no `exclude` one.
 *
 * @example
 * ```ts
 * const m = InterfaceMatcher.parse(['veth*', '/^tap\\d+$/'], ['veth-mgmt']);
 * m.matches('veth12'); // true
 * m.matches('veth-mgmt'); // false
 * ```
 */
export class InterfaceMatcher {
  private constructor(
    readonly include: readonly InterfacePattern[],
    readonly exclude: readonly InterfacePattern[],
  ) {}

  static parse(include: readonly string[], exclude: readonly string[] = []): InterfaceMatcher {
    return new InterfaceMatcher(
      include.map((p) => parseInterfacePattern(p, 'interfaces')),
      exclude.map((p) => parseInterfacePattern(p, 'exclude_interfaces')),
    );
  }

  matches(name: string): boolean {
    return this.include.some((p) => p.test(name)) && !this.exclude.some((p) => p.test(name));
  }

  /** The plain names of `include` (no glob, no regex): interfaces the user named one by one. */
  get names(): string[] {
    return this.include.filter((p) => p.kind === 'name').map((p) => p.source);
  }
}
