import {
  LineCounter,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  parseDocument,
  visit,
  type Document,
  type Node as YamlNode,
} from 'yaml';
import type { ConfigProblem } from './errors.js';
import { isSecretKey } from '../redact.js';
import { interpolate, resolvePlainScalar, type Env } from './interpolate.js';

/**
 * Values an alias may expand to, all aliases of a file together. The file itself is bounded
 * (1 MiB), but aliases of aliases multiply: nine levels of ten ("billion laughs") make 10^9 values
 * from a few hundred bytes. A pipeline needs a few aliases of a few values; the count stops the
 * expansion as soon as it is passed, before the memory is spent.
 */
export const MAX_ALIAS_VALUES = 10_000;

/** Nesting of maps and lists: a pipeline needs a handful; the check keeps recursion bounded. */
export const MAX_DEPTH = 64;

/** Columns of indentation (spaces and compact `- ` or `? ` indicators) a line may have. */
export const MAX_INDENT = 256;

/** A step into a value: a map key or a list index. */
export type Segment = string | number;
export type Path = readonly Segment[];

/** `transforms.acct.inputs[0]` */
export function renderPath(path: Path): string {
  let out = '';
  for (const s of path) out += typeof s === 'number' ? `[${s}]` : out === '' ? s : `.${s}`;
  return out;
}

interface Place {
  /** Offset of the key naming this value in its map, if it has one. */
  key?: number;
  value: number;
}

/**
 * A pipeline file read into plain data, with the offset of every key and value so that a problem
 * found later, at a path, can be reported at its line and column.
 */
export class SourceDocument {
  private readonly places = new Map<string, Place>();
  private readonly lines = new LineCounter();
  private readonly poisoned: string[] = [];
  private readonly quotedInterpolations = new Set<string>();
  /** The text of every unquoted scalar that YAML read as a number or boolean, after interpolation. */
  private readonly plainTexts = new Map<string, string>();
  private readonly found: { offset: number; problem: ConfigProblem }[] = [];
  /** Values made by expanding aliases so far, and how many aliases are being expanded now. */
  private expanded = 0;
  private aliasDepth = 0;
  /** Set when a limit stopped the conversion; the value is then unusable. */
  private stopped = false;
  /** Nodes with an anchor, by anchor name, in file order. */
  private readonly anchors = new Map<string, { offset: number; node: YamlNode }[]>();
  /** The file's content as data; undefined when the YAML has syntax errors. */
  value: unknown;
  /** Offset of the document's content (past leading comments). */
  start = 0;

  private constructor(
    readonly file: string,
    readonly text: string,
    private readonly env: Env,
  ) {}

  /** Parses YAML and interpolates `${VAR}` in scalar values; problems land in `problems`. */
  static parse(text: string, file: string, env: Env): SourceDocument {
    const source = new SourceDocument(file, text, env);
    // The parser recurses per level of [ and {: half a million of them (1 MiB of '[') exhaust it
    // slowly and then the heap. Counted first, they are refused before it starts.
    const deep = flowNestingPast(text, MAX_DEPTH);
    if (deep >= 0) {
      source.countLines();
      source.report(deep, [], `yaml: nested more than ${MAX_DEPTH} levels deep; a pipeline needs a few`);
      return source;
    }
    // Block nesting needs indentation, by spaces or by the compact `- - -` and `? ? ?` forms.
    const indent = /^[ \t?:-]{257,}/m.exec(text);
    if (indent) {
      source.countLines();
      source.report(
        indent.index + 256,
        [],
        `yaml: indented more than ${MAX_INDENT} columns; a pipeline needs a few levels`,
      );
      return source;
    }
    let doc: Document;
    try {
      // The library keeps aliases as nodes here: convert expands them, counting (its own
      // maxAliasCount applies only to toJS, which is not used).
      doc = parseDocument(text, { lineCounter: source.lines, prettyErrors: false, uniqueKeys: false });
    } catch (err) {
      // Deep nesting can exhaust the parser's stack: a file no pipeline looks like.
      if (!(err instanceof RangeError)) throw err;
      source.report(0, [], 'yaml: the file is nested too deeply to read; a pipeline has a few levels');
      return source;
    }
    // Only the first: after a syntax error the parser's recovery reports every later token too.
    const syntax = doc.errors[0];
    if (syntax) {
      // `{size: ${N}}` is the usual way to get here: in flow style `{` and `}` are YAML syntax.
      const line = text.slice(text.lastIndexOf('\n', syntax.pos[0] - 1) + 1).split('\n')[0] ?? '';
      const hint = line.includes('${')
        ? '; inside {...} and [...] quote values that use ${VAR}: "${VAR}"'
        : '';
      source.report(syntax.pos[0], [], `yaml: ${yamlMessage(syntax.message)}${hint}`);
      return source;
    }
    source.start = doc.contents?.range?.[0] ?? 0;
    // yaml's Alias.resolve searches the whole document for every alias: 50,000 aliases in a large
    // file take hours. One pass here, then a binary search per alias.
    visit(doc, {
      Node: (_key, node) => {
        if (isAlias(node) || !node.anchor) return;
        const list = source.anchors.get(node.anchor) ?? [];
        list.push({ offset: node.range?.[0] ?? 0, node });
        source.anchors.set(node.anchor, list);
      },
    });
    const value = source.convert(doc, doc.contents, [], undefined, new Set());
    if (!source.stopped) source.value = value;
    return source;
  }

  /**
   * Offset of the key (`side: 'key'`) or value at `path`; for a path the file does not have (a
   * missing key), the key of its nearest ancestor.
   */
  offset(path: Path, side: 'key' | 'value' = 'value'): number {
    for (let n = path.length; n >= 0; n--) {
      const place = this.places.get(renderPath(path.slice(0, n)));
      if (place) return side === 'key' && place.key !== undefined ? place.key : place.value;
      side = 'key';
    }
    return this.start;
  }

  /** 1-based line and column of the key or value at `path`. */
  position(path: Path, side: 'key' | 'value' = 'value'): { line: number; column: number } {
    const { line, col } = this.lines.linePos(this.offset(path, side));
    return { line, column: col };
  }

  /** Records a problem at an offset of the file. */
  report(offset: number, path: Path, message: string): void {
    const { line, col } = this.lines.linePos(offset);
    this.found.push({
      offset,
      problem: { file: this.file, line, column: col, path: renderPath(path), message },
    });
  }

  /** Every problem so far, in the order they appear in the file. */
  problems(): ConfigProblem[] {
    return [...this.found].sort((a, b) => a.offset - b.offset).map((p) => p.problem);
  }

  /**
   * True for a quoted scalar that had `${VAR}` in it. Inside `{...}` and `[...]` YAML needs the quotes
   * around `${VAR}`, so such a value is converted to the number or boolean its option expects.
   */
  isQuotedInterpolation(path: Path): boolean {
    return this.quotedInterpolations.has(renderPath(path));
  }

  /**
   * The text of an unquoted value at `path` that YAML (or `${VAR}` in it) made a number or boolean:
   * an option that takes a string gets the text as written (`password: ${PASS}` with PASS=0123 is
   * "0123", not 123).
   */
  plainText(path: Path): string | undefined {
    return this.plainTexts.get(renderPath(path));
  }

  /** Line starts for positions when the parser, which counts them, is not run. */
  private countLines(): void {
    this.lines.addNewLine(0);
    for (let i = this.text.indexOf('\n'); i >= 0; i = this.text.indexOf('\n', i + 1)) {
      this.lines.addNewLine(i + 1);
    }
  }

  /** The node an alias at `offset` names: the last one anchored `name` before it. */
  private anchorBefore(name: string, offset: number): YamlNode | undefined {
    const list = this.anchors.get(name);
    if (!list) return undefined;
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid]!.offset < offset) lo = mid + 1;
      else hi = mid;
    }
    return lo > 0 ? list[lo - 1]!.node : undefined;
  }

  /** A later problem at or below `path` would only repeat one already reported there. */
  poison(path: Path): void {
    this.poisoned.push(renderPath(path));
  }

  isPoisoned(path: Path): boolean {
    const p = renderPath(path);
    return this.poisoned.some((q) => p === q || p.startsWith(`${q}.`) || p.startsWith(`${q}[`));
  }

  private convert(
    doc: Document,
    node: YamlNode | null | undefined,
    path: Segment[],
    keyOffset: number | undefined,
    resolving: Set<YamlNode>,
  ): unknown {
    if (this.stopped) return null;
    if (this.aliasDepth > 0 && ++this.expanded > MAX_ALIAS_VALUES) {
      this.stopped = true;
      return null;
    }
    if (path.length > MAX_DEPTH) {
      this.report(
        node?.range?.[0] ?? keyOffset ?? 0,
        path,
        `nested more than ${MAX_DEPTH} levels deep; a pipeline needs a few`,
      );
      this.stopped = true;
      return null;
    }
    if (node === null || node === undefined) {
      this.places.set(renderPath(path), { key: keyOffset, value: keyOffset ?? this.start });
      return null;
    }
    const [start, end] = node.range ?? [keyOffset ?? 0, keyOffset ?? 0];
    // `key:` with nothing after it has an empty value range just past the colon; the key is a
    // better place to point at.
    const valueOffset = start === end && keyOffset !== undefined ? keyOffset : start;
    this.places.set(renderPath(path), { key: keyOffset, value: valueOffset });

    if (isAlias(node)) {
      const target = this.anchorBefore(node.source, start);
      if (!target || resolving.has(target)) return null;
      resolving.add(target);
      this.aliasDepth++;
      const value = this.convert(doc, target, path, keyOffset, resolving);
      this.aliasDepth--;
      resolving.delete(target);
      if (this.stopped && this.aliasDepth === 0 && this.expanded > MAX_ALIAS_VALUES) {
        this.report(
          start,
          path,
          `yaml: aliases expand to more than ${MAX_ALIAS_VALUES} values (aliases of aliases multiply); write the values out, or use fewer aliases`,
        );
      }
      // Keep pointing at the alias, where the user wrote this value.
      this.places.set(renderPath(path), { key: keyOffset, value: valueOffset });
      return value;
    }
    if (isScalar(node)) {
      if (typeof node.value !== 'string') {
        if (node.type === 'PLAIN' && (typeof node.value === 'number' || typeof node.value === 'boolean')) {
          this.plainTexts.set(renderPath(path), this.text.slice(start, node.range?.[1] ?? end));
        }
        return node.value;
      }
      const last = path[path.length - 1];
      const secret = typeof last === 'string' && isSecretKey(last);
      const result = interpolate(node.value, this.env, { secret });
      if (!result.ok) {
        const raw = this.text.slice(start, end);
        for (const e of result.errors) {
          const at = raw.indexOf(e.token);
          this.report(at >= 0 ? start + at : start, path, e.message);
        }
        this.poison(path);
        return node.value;
      }
      if (result.changed && node.type === 'PLAIN') {
        const resolved = resolvePlainScalar(result.value);
        if (typeof resolved === 'number' || typeof resolved === 'boolean') {
          this.plainTexts.set(renderPath(path), result.value);
        }
        return resolved;
      }
      if (result.changed) this.quotedInterpolations.add(renderPath(path));
      return result.value;
    }
    if (isSeq(node)) {
      return node.items.map((item, i) =>
        this.convert(doc, item as YamlNode, [...path, i], undefined, resolving),
      );
    }
    if (isMap(node)) {
      const out: Record<string, unknown> = {};
      // The parser's own check of duplicate keys compares every key with every other: a map of
      // 60,000 keys takes minutes. Here it is a set.
      const seen = new Set<string>();
      for (const pair of node.items) {
        const key = pair.key as YamlNode | null;
        const keyStart = key?.range?.[0] ?? valueOffset;
        if (!isScalar(key) || (typeof key.value !== 'string' && typeof key.value !== 'number')) {
          this.report(keyStart, path, 'keys must be plain names');
          continue;
        }
        const name = String(key.value);
        if (seen.has(name)) {
          this.report(keyStart, [], 'yaml: map keys must be unique');
          this.stopped = true;
          return null;
        }
        seen.add(name);
        // defineProperty, so a key named __proto__ is data and not the object's prototype.
        Object.defineProperty(out, name, {
          value: this.convert(doc, pair.value as YamlNode | null, [...path, name], keyStart, resolving),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      return out;
    }
    return null;
  }
}

/** The first line of a yaml error, without the position it repeats. */
function yamlMessage(message: string): string {
  const first = message.split('\n')[0] ?? message;
  return first.replace(/ at line \d+, column \d+:?$/, '').replace(/^./, (c) => c.toLowerCase());
}

/**
 * Offset of the first `[` or `{` that opens level `limit + 1` of flow nesting, or -1. Quoted text
 * and comments are skipped; a stray quote in a plain value can only make the count lower, so a
 * file the parser would take is never refused here.
 */
function flowNestingPast(text: string, limit: number): number {
  let depth = 0;
  let quote = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote !== '') {
      if (quote === '"' && c === '\\') i++;
      else if (c === quote) quote = '';
      continue;
    }
    if (c === '#' && (i === 0 || text[i - 1] === ' ' || text[i - 1] === '\t' || text[i - 1] === '\n')) {
      const end = text.indexOf('\n', i);
      if (end < 0) break;
      i = end;
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if (c === '[' || c === '{') {
      if (++depth > limit) return i;
    } else if ((c === ']' || c === '}') && depth > 0) {
      depth--;
    }
  }
  return -1;
}
