import type { ComponentRegistry } from '../pipeline/component-registry.js';
import { formatProblem, PipelineConfigError } from '../config/errors.js';
import { SECTIONS, loadPipeline } from '../pipeline/load.js';
import type { CliIo } from './io.js';

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** Checks pipeline files without touching the kernel; 0 when every file is fine, else 1. */
export async function validateFiles(
  files: readonly string[],
  registry: ComponentRegistry,
  io: CliIo,
): Promise<number> {
  let code = 0;
  for (const file of files) {
    try {
      const config = await loadPipeline(file, { env: io.env, registry });
      io.out(
        `${file}: ok (${plural(config.sources.length, 'source')}, ${plural(config.transforms.length, 'transform')}, ${plural(config.sinks.length, 'sink')})\n`,
      );
    } catch (err) {
      code = 1;
      if (err instanceof PipelineConfigError) {
        for (const problem of err.problems) io.err(`${formatProblem(problem)}\n`);
      } else {
        io.err(`${(err as Error).message}\n`);
      }
    }
  }
  return code;
}

/** The component types a pipeline may use, by section, with their one-line descriptions. */
export function listTypes(registry: ComponentRegistry, io: CliIo): void {
  for (const [section, kind] of SECTIONS) {
    io.out(`${section}:\n`);
    const types = registry.types(kind);
    if (types.length === 0) io.out('  (none registered)\n');
    const width = Math.max(0, ...types.map((t) => t.length));
    for (const type of types) {
      io.out(`  ${type.padEnd(width)}  ${registry.find(kind, type)!.description}\n`);
    }
  }
}
