import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ESLint } from 'eslint';
import tseslint from 'typescript-eslint';
import { describe, expect, it } from 'vitest';
import floors from '../../eslint/floors.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/**
 * Lints `code` in place of the existing file `file`, with the repository's own eslint.config.js
 * (the one `npm test` runs; its type-aware rules need a file the TypeScript project knows).
 */
async function floorsProblems(
  file: string,
  code: string,
  eslint = new ESLint({ cwd: repo }),
): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath: path.join(repo, file) });
  const fatal = result?.messages.find((m) => m.fatal);
  if (fatal) throw new Error(fatal.message);
  return (result?.messages ?? [])
    .filter((m) => m.ruleId === 'floors/floors')
    .map((m) => `${m.line}: ${m.message}`);
}

describe('the floors lint rule (eslint/floors.js, part of npm test)', () => {
  it('fails on an upward import planted in the datapath', async () => {
    const code = "import { buildPipeline } from '../pipeline/build.js';\nexport const x = buildPipeline;\n";
    expect(await floorsProblems('src/datapath/libbpf.ts', code)).toEqual([
      '1: datapath (floor 3) must not import pipeline (floor 7): move what both need down to floor 3 or below, or move this code up',
    ]);
  });

  it('fails on a type-only import and a re-export from above', async () => {
    const code =
      "import type { Sink } from '../component.js';\nexport { messageOf } from '../sinks/errors.js';\nexport type S = Sink;\n";
    expect(await floorsProblems('src/ha/kv.ts', code)).toEqual([
      '1: ha (floor 4) must not import component (floor 5): move what both need down to floor 4 or below, or move this code up',
      '2: ha (floor 4) must not import sinks (floor 6): move what both need down to floor 4 or below, or move this code up',
    ]);
  });

  it('fails when a source reaches into a sink on its own floor', async () => {
    const code = "import { fileSink } from '../sinks/file.js';\nexport const f = fileSink;\n";
    expect(await floorsProblems('src/sources/ipfix.ts', code)).toEqual([
      '1: sources and sinks are apart on floor 6: move what both need to a lower floor',
    ]);
  });

  it('fails on a folder without a floor', async () => {
    // Only the rule here: a file in a folder that does not exist is unknown to the TypeScript project.
    const ruleOnly = new ESLint({
      cwd: repo,
      overrideConfigFile: true,
      overrideConfig: [
        {
          files: ['**/*.ts'],
          languageOptions: { parser: tseslint.parser },
          plugins: { floors },
          rules: { 'floors/floors': 'error' },
        },
      ],
    });
    const code = "export { messageOf } from '../errors.js';\n";
    expect(await floorsProblems('src/newthing/planted.ts', code, ruleOnly)).toEqual([
      '1: src/newthing has no floor: add it to FLOORS in eslint/floors.js and to the README layout',
    ]);
  });

  it('lets a module import its own floor and those below', async () => {
    const code =
      "import { messageOf } from '../errors.js';\nimport { ipv4ToUint32 } from '../net/address.js';\nimport { pin } from './libbpf.js';\nexport const all = [messageOf, ipv4ToUint32, pin];\n";
    expect(await floorsProblems('src/datapath/map.ts', code)).toEqual([]);
  });
});
