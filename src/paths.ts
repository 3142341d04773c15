import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

/** The package root (the directory of package.json), whether running from src/ or dist/src/. */
export function packageRoot(): string {
  if (root) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`rxflow: package.json not found above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
  root = dir;
  return dir;
}

/** A BPF object built by bpf/build.sh, e.g. bpfObjectPath('flow'). */
export function bpfObjectPath(name: string): string {
  return join(packageRoot(), 'bpf', `${name}.o`);
}

/** The version in the package's package.json, read at run time: the one npm installed. */
export function packageVersion(): string {
  const file = join(packageRoot(), 'package.json');
  const { version } = JSON.parse(readFileSync(file, 'utf8')) as { version?: unknown };
  if (typeof version !== 'string') throw new Error(`rxflow: ${file} has no version`);
  return version;
}
