import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RxflowError } from '../errors.js';

/** An error of a development tool (the Kafka mock, the traffic generator). */
export class DevtoolError extends RxflowError {
  override readonly name = 'DevtoolError';
}

let root: string | undefined;

/** The checkout's root: the nearest directory above this module with rxflow's package.json. */
export function repoRoot(): string {
  if (root !== undefined) {
    return root;
  }
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (
      fs.existsSync(pkg) &&
      (JSON.parse(fs.readFileSync(pkg, 'utf8')) as { name?: string }).name === 'rxflow'
    ) {
      root = dir;
      return dir;
    }
    const up = path.dirname(dir);
    if (up === dir) {
      throw new DevtoolError('ENOROOT', 'rxflow tools: package.json of rxflow not found above this module');
    }
    dir = up;
  }
}

/**
 * The path of a compiled C tool of tools/ (built into dist/tools/ by tools/build.sh), or of
 * `$RXFLOW_TOOLS_DIR/<name>` when that is set.
 */
export function toolPath(name: string): string {
  const dir = process.env.RXFLOW_TOOLS_DIR ?? path.join(repoRoot(), 'dist', 'tools');
  const file = path.join(dir, name);
  try {
    fs.accessSync(file, fs.constants.X_OK);
  } catch (error) {
    throw new DevtoolError(
      'ETOOLMISSING',
      `${name}: not built at ${file}; run 'bash scripts/setup.sh' to build it`,
      {
        cause: error,
      },
    );
  }
  return file;
}
