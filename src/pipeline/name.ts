import { basename, extname } from 'node:path';

/** The pipeline's name: its file name without the extension, e.g. `demo` for pipelines/demo.yaml. */
export function pipelineName(file: string): string {
  const name = basename(file, extname(file)).replace(/[^A-Za-z0-9._-]/g, '_');
  return name === '' ? 'pipeline' : name;
}
