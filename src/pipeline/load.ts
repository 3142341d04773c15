import type { ComponentKind, ComponentModule } from '../component.js';
import type { ComponentRegistry } from './component-registry.js';
import { SourceDocument, type Path } from '../config/document.js';
import { DURATION_HINT, isDurationKey, parseDuration } from '../config/duration.js';
import { PipelineConfigError, type ConfigProblem } from '../config/errors.js';
import { findCycles, topologicalOrder, unconsumed } from './graph.js';
import { resolvePlainScalar, type Env } from '../config/interpolate.js';
import { readYamlFile } from '../config/read.js';
import { defaultRegistry } from './registry.js';
import { registerSecrets, resolveSecretFiles } from './secrets.js';
import { checkResources, locksMemory, machineMemory, type MachineMemory } from './resources.js';
import { describe, translateErrors } from './schema-errors.js';
import { SETTING_NAMES, checkSettings, type PipelineSettings } from './settings.js';
import { didYouMean, listOf } from '../config/suggest.js';

/** Types pipeline files used to name, and what to write instead. */
const REPLACED_TYPES: Readonly<Record<string, string>> = {
  limit_capacity:
    'every sink has a buffer in front of it now; remove this transform, read its input from the sinks it fed, and set buffer_max_records and when_full on them',
};

/** One component of a checked pipeline. */
export interface ComponentSpec {
  /** The key the user gave it in its section. */
  id: string;
  kind: ComponentKind;
  type: string;
  module: ComponentModule;
  /** The options, validated, durations in ms, the schema's defaults filled in. */
  config: Record<string, unknown>;
  /** Ids this component reads from, as written; empty for sources. */
  inputs: readonly string[];
  /** Ids that read from this component, in declaration order; empty for sinks. */
  outputs: readonly string[];
  /** Where the component is declared. */
  line: number;
  column: number;
}

/** A pipeline file after every check passed. */
export interface PipelineConfig {
  file: string;
  /** Every component by id, sources first, then transforms, then sinks, each in file order. */
  components: ReadonlyMap<string, ComponentSpec>;
  /** Every component, each after all of its inputs. */
  order: readonly ComponentSpec[];
  sources: readonly ComponentSpec[];
  transforms: readonly ComponentSpec[];
  sinks: readonly ComponentSpec[];
  /** Pipeline-wide settings (settings.ts); defaults when absent. */
  settings?: PipelineSettings;
}

export interface LoadOptions {
  /** Where `${VAR}` values come from; process.env by default. */
  env?: Env;
  /** The component types allowed; src/pipeline/registry.ts by default. */
  registry?: ComponentRegistry;
  /** The memory that size options are checked against; this machine's by default. */
  machine?: MachineMemory;
}

export interface CheckResult {
  /** Set when there are no problems. */
  config?: PipelineConfig;
  problems: ConfigProblem[];
}

export const SECTIONS = [
  ['sources', 'source'],
  ['transforms', 'transform'],
  ['sinks', 'sink'],
] as const satisfies readonly (readonly [string, ComponentKind])[];

type Section = (typeof SECTIONS)[number][0];

const SECTION_NAMES: readonly string[] = SECTIONS.map(([s]) => s);

/** Ids end up in logs, metric labels and ledger lines, so they stay simple. */
export const ID_PATTERN = '^[A-Za-z_][A-Za-z0-9_-]*$';
const ID = new RegExp(ID_PATTERN);

const EMPTY_PIPELINE =
  "empty pipeline: define 'sources', 'transforms' and 'sinks'; 'rxflow schema' prints the format";

type Report = (path: Path, message: string, side?: 'key' | 'value', at?: Path) => void;

interface Draft {
  id: string;
  section: Section;
  kind: ComponentKind;
  entry?: Record<string, unknown>;
  type?: string;
  module?: ComponentModule;
  config?: Record<string, unknown>;
  /** Inputs that name a source or transform. */
  inputs: string[];
}

function isMap(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

export { MAX_CONFIG_BYTES as MAX_PIPELINE_BYTES } from '../config/read.js';

/** Reads and checks a pipeline file; throws PipelineConfigError listing every problem. */
export async function loadPipeline(file: string, options: LoadOptions = {}): Promise<PipelineConfig> {
  return parsePipeline(await readYamlFile(file), file, options);
}

/** Checks pipeline text; throws PipelineConfigError listing every problem. */
export function parsePipeline(text: string, file: string, options: LoadOptions = {}): PipelineConfig {
  const result = checkPipeline(text, file, options);
  if (!result.config) throw new PipelineConfigError(result.problems);
  return result.config;
}

/** Checks pipeline text and returns every problem found, in file order, or the checked config. */
export function checkPipeline(text: string, file: string, options: LoadOptions = {}): CheckResult {
  const registry = options.registry ?? defaultRegistry();
  const doc = SourceDocument.parse(text, file, options.env ?? process.env);
  const report: Report = (path, message, side = 'value', at = path) => {
    if (!doc.isPoisoned(at)) doc.report(doc.offset(at, side), path, message);
  };
  const done = (): CheckResult => ({ problems: doc.problems() });

  const root = doc.value;
  if (root === undefined) return done();
  if (root === null || (isMap(root) && Object.keys(root).length === 0)) {
    report([], EMPTY_PIPELINE);
    return done();
  }
  if (!isMap(root)) {
    report([], `a pipeline is a map with keys sources, transforms, sinks; got ${describe(root)}`);
    return done();
  }
  let misspeltSection = false;
  const topKeys = [...SECTION_NAMES, ...SETTING_NAMES];
  for (const key of Object.keys(root)) {
    if (!topKeys.includes(key)) {
      misspeltSection = true;
      report([], `unknown key '${key}'${didYouMean(key, topKeys)}; allowed: ${listOf(topKeys)}`, 'key', [
        key,
      ]);
    }
  }
  const settings = checkSettings(root, report);

  const drafts = new Map<string, Draft>();
  for (const [section, kind] of SECTIONS) {
    const entries = root[section];
    if (entries === undefined || entries === null) continue;
    if (!isMap(entries)) {
      report([section], `must be a map of id -> ${kind}; got ${describe(entries)}`);
      continue;
    }
    for (const [id, entry] of Object.entries(entries)) {
      const path = [section, id];
      if (!ID.test(id)) {
        report(
          path,
          `bad id '${id}'; ids use letters, digits, '_' and '-' and start with a letter or '_'`,
          'key',
        );
      }
      const other = drafts.get(id);
      if (other) {
        report(
          path,
          `id '${id}' is already used by ${other.section}.${id}; ids must be unique across sources, transforms and sinks`,
          'key',
        );
        continue;
      }
      const draft: Draft = { id, section, kind, inputs: [] };
      drafts.set(id, draft);
      checkEntry(draft, entry, registry, doc, report, () => options.machine ?? machineMemory());
    }
  }

  const all = [...drafts.values()];
  const readable = all.filter((d) => d.kind !== 'sink').map((d) => d.id);
  let inputsWrong = false;
  for (const draft of all) {
    if (draft.kind === 'source' || !draft.entry) continue;
    if (!checkInputs(draft, drafts, readable, doc, report)) inputsWrong = true;
  }

  const count = (kind: ComponentKind): number => all.filter((d) => d.kind === kind).length;
  // A misspelt section name already explains why a section looks empty.
  if (!misspeltSection && all.length === 0) report([], EMPTY_PIPELINE);
  if (!misspeltSection && all.length > 0 && count('source') === 0) {
    report(
      [],
      `no sources: define at least one under 'sources'; source types: ${listOf(registry.types('source'))}`,
    );
  }
  if (!misspeltSection && all.length > 0 && count('sink') === 0) {
    report([], `no sinks: define at least one under 'sinks'; sink types: ${listOf(registry.types('sink'))}`);
  }

  for (const cycle of findCycles(all)) {
    const first = drafts.get(cycle[0]!)!;
    const closing = cycle[cycle.length - 2]!;
    const index = (first.entry?.inputs as unknown[]).indexOf(closing);
    report(
      [first.section, first.id, 'inputs', index],
      `cycle: ${cycle.join(' -> ')}; data must flow from sources to sinks without loops`,
    );
  }

  // A wrong input already explains why something looks unread; say it once.
  if (!inputsWrong && count('sink') > 0) {
    for (const id of unconsumed(all)) {
      const draft = drafts.get(id)!;
      if (draft.kind === 'sink') continue;
      report(
        [draft.section, id],
        `nothing reads from this ${draft.kind}; add '${id}' to the inputs of a transform or sink, or remove it`,
        'key',
      );
    }
  }

  const problems = doc.problems();
  if (problems.length > 0) return { problems };
  return { config: { ...assemble(file, all, doc), settings }, problems };
}

/** Checks the inputs of a transform or sink; false when one is wrong (and reported). */
function checkInputs(
  draft: Draft,
  drafts: ReadonlyMap<string, Draft>,
  readable: readonly string[],
  doc: SourceDocument,
  report: Report,
): boolean {
  let ok = true;
  const path = [draft.section, draft.id];
  const others = readable.filter((id) => id !== draft.id);
  const inputs = draft.entry!.inputs;
  if (doc.isPoisoned([...path, 'inputs'])) {
    return false;
  }
  if (inputs === undefined) {
    report(
      path,
      `missing key 'inputs'; list the ids this ${draft.kind} reads from: ${listOf(others)}`,
      'key',
    );
    return false;
  }
  if (!Array.isArray(inputs)) {
    const example = typeof inputs === 'string' ? `; write inputs: [${inputs}]` : `, got ${describe(inputs)}`;
    report([...path, 'inputs'], `must be a list of ids${example}`);
    return false;
  }
  if (inputs.length === 0) {
    report([...path, 'inputs'], `must list at least one id; ids that exist: ${listOf(others)}`);
    return false;
  }
  const seen = new Set<string>();
  inputs.forEach((input: unknown, i) => {
    const at = [...path, 'inputs', i];
    if (doc.isPoisoned(at)) {
      ok = false;
    } else if (typeof input !== 'string') {
      report(at, `must be an id, got ${describe(input)}; ids that exist: ${listOf(others)}`);
      ok = false;
    } else if (seen.has(input)) {
      report(at, `'${input}' is listed twice`);
    } else if (drafts.get(input)?.kind === 'sink') {
      report(
        at,
        `'${input}' is a sink and has no output; inputs are sources or transforms: ${listOf(others)}`,
      );
      ok = false;
    } else if (!drafts.has(input)) {
      report(at, `unknown input '${input}'${didYouMean(input, others)}; ids that exist: ${listOf(others)}`);
      ok = false;
    } else {
      seen.add(input);
      draft.inputs.push(input);
    }
  });
  return ok;
}

function checkEntry(
  draft: Draft,
  entry: unknown,
  registry: ComponentRegistry,
  doc: SourceDocument,
  report: Report,
  machine: () => MachineMemory,
): void {
  const { kind, id, section } = draft;
  const path = [section, id];
  const types = registry.types(kind);
  if (!isMap(entry)) {
    report(
      path,
      entry === null
        ? `empty ${kind}; give at least its 'type' (${kind} types: ${listOf(types)})`
        : `must be a map with 'type' and options, got ${describe(entry)}`,
    );
    return;
  }
  draft.entry = entry;

  const type = entry.type;
  if (type === undefined) {
    report(path, `missing key 'type'; ${kind} types: ${listOf(types)}`, 'key');
  } else if (doc.isPoisoned([...path, 'type'])) {
    // already reported
  } else if (typeof type !== 'string') {
    report(
      [...path, 'type'],
      `must be the name of a ${kind} type, got ${describe(type)}; ${kind} types: ${listOf(types)}`,
    );
  } else {
    draft.type = type;
    draft.module = registry.find(kind, type);
    if (!draft.module) {
      const replaced = Object.hasOwn(REPLACED_TYPES, type) ? REPLACED_TYPES[type] : undefined;
      report(
        [...path, 'type'],
        replaced !== undefined
          ? `${kind} type '${type}' was removed: ${replaced}`
          : `unknown ${kind} type '${type}'${didYouMean(type, types)}; ${kind} types: ${listOf(types)}`,
      );
    }
  }
  if (kind === 'source' && 'inputs' in entry) {
    report(
      [...path, 'inputs'],
      `a source takes no inputs; remove 'inputs', or move '${id}' under transforms`,
      'key',
    );
  }

  const options: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(entry)) {
    if (key === 'type' || key === 'inputs') continue;
    Object.defineProperty(options, key, { value, enumerable: true, writable: true, configurable: true });
  }
  convertDurations(options, path, doc, report);
  const module = draft.module;
  if (!module) return;
  coerceInterpolated(options, module.schema, path, doc);
  const result = registry.validate(module, options);
  if (result.ok) {
    draft.config = result.config;
    resolveSecretFiles(result.config, module.schema, path, report);
    registerSecrets(result.config);
    if (locksMemory(kind, module.type)) {
      for (const p of checkResources(kind, module.type, result.config, machine())) {
        report([...path, p.option], p.message);
      }
    }
    for (const p of module.check?.(result.config) ?? []) report([...path, p.option], p.message);
    return;
  }
  const reserved = kind === 'source' ? ['type'] : ['type', 'inputs'];
  for (const p of translateErrors(result.errors, options, path, reserved)) {
    report(p.shown, p.message, p.side, p.at);
  }
}

/** Replaces duration strings under `*_ms` keys, at any depth, with milliseconds. */
function convertDurations(
  value: unknown,
  path: Path,
  doc: SourceDocument,
  report: (path: Path, message: string) => void,
): void {
  if (Array.isArray(value)) {
    value.forEach((item, i) => convertDurations(item, [...path, i], doc, report));
    return;
  }
  if (!isMap(value)) return;
  for (const [key, child] of Object.entries(value)) {
    const at = [...path, key];
    if (isDurationKey(key)) {
      const list = Array.isArray(child);
      const items: unknown[] = list ? child : [child];
      items.forEach((item, i) => {
        if (typeof item !== 'string') return;
        const where = list ? [...at, i] : at;
        const ms = parseDuration(item);
        if (ms === undefined) {
          report(where, `bad duration '${item}'; ${DURATION_HINT}`);
          doc.poison(where);
        } else {
          items[i] = ms;
        }
      });
      if (!list) value[key] = items[0];
    } else {
      convertDurations(child, at, doc, report);
    }
  }
}

/** The JSON types an option's schema names, or [] when it names none (an enum, say). */
function typesOf(schema: unknown): unknown[] {
  if (schema === null || typeof schema !== 'object') return [];
  const declared = (schema as { type?: unknown }).type;
  return Array.isArray(declared) ? declared : declared === undefined ? [] : [declared];
}

/**
 * Makes each interpolated or unquoted value the type its option asks for: a quoted `"${VAR}"` the
 * number or boolean a numeric or boolean option needs, and an unquoted value that YAML read as a
 * number or boolean the text as written when the option takes only text (`password: ${PASS}` with
 * PASS=31415926535 is the string "31415926535", and is never echoed in a type error).
 */
function coerceInterpolated(value: unknown, schema: unknown, path: Path, doc: SourceDocument): void {
  if (schema === null || typeof schema !== 'object') return;
  const s = schema as {
    properties?: Record<string, unknown>;
    additionalProperties?: unknown;
    items?: unknown;
  };
  const entries: [string | number, unknown, unknown][] = Array.isArray(value)
    ? value.map((v, i) => [i, v, s.items])
    : isMap(value)
      ? Object.entries(value).map(([k, v]) => [
          k,
          v,
          s.properties?.[k] ??
            (typeof s.additionalProperties === 'object' ? s.additionalProperties : undefined),
        ])
      : [];
  for (const [key, child, childSchema] of entries) {
    const at = [...path, key];
    if (typeof child === 'number' || typeof child === 'boolean') {
      const types = typesOf(childSchema);
      const text = doc.plainText(at);
      const fits = types.includes(typeof child) || (typeof child === 'number' && types.includes('integer'));
      if (text !== undefined && types.includes('string') && !fits) {
        (value as Record<string | number, unknown>)[key] = text;
      }
      continue;
    }
    if (typeof child !== 'string') {
      coerceInterpolated(child, childSchema, at, doc);
      continue;
    }
    if (!doc.isQuotedInterpolation(at) || childSchema === null || typeof childSchema !== 'object') continue;
    const declared = (childSchema as { type?: unknown }).type;
    const types: unknown[] = Array.isArray(declared) ? declared : [declared];
    if (types.includes('string')) continue;
    const resolved = resolvePlainScalar(child.trim());
    const fits =
      (typeof resolved === 'number' &&
        (types.includes('number') || (types.includes('integer') && Number.isInteger(resolved)))) ||
      (typeof resolved === 'boolean' && types.includes('boolean'));
    if (fits) (value as Record<string | number, unknown>)[key] = resolved;
  }
}

function assemble(file: string, drafts: readonly Draft[], doc: SourceDocument): PipelineConfig {
  const outputs = new Map<string, string[]>(drafts.map((d) => [d.id, []]));
  for (const d of drafts) for (const input of d.inputs) outputs.get(input)!.push(d.id);
  const components = new Map<string, ComponentSpec>();
  for (const d of drafts) {
    const where = doc.position([d.section, d.id], 'key');
    components.set(d.id, {
      id: d.id,
      kind: d.kind,
      type: d.type!,
      module: d.module!,
      config: d.config!,
      inputs: d.inputs,
      outputs: outputs.get(d.id)!,
      line: where.line,
      column: where.column,
    });
  }
  const specs = [...components.values()];
  return {
    file,
    components,
    order: topologicalOrder(drafts).map((id) => components.get(id)!),
    sources: specs.filter((s) => s.kind === 'source'),
    transforms: specs.filter((s) => s.kind === 'transform'),
    sinks: specs.filter((s) => s.kind === 'sink'),
  };
}
