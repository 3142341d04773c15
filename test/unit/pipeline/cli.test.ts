import { spawnSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Observable } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import type { CliIo } from '../../../src/cli/io.js';
import { runCli } from '../../../src/cli/program.js';
import type { SourceModule } from '../../../src/component.js';
import { silentLogger } from '../../../src/logger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import { defaultRegistry } from '../../../src/pipeline/registry.js';
import { formatJson, pipelineSchema } from '../../../src/pipeline/schema.js';
import type { FlowBatch } from '../../../src/records/flow.js';
import {
  collectModule,
  fixed,
  fixedBatch,
  hold,
  pass,
  type CollectHooks,
  type CollectStore,
  until,
} from './components.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'rxflow-pipeline-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

/** A source that says when it is subscribed, emits 2 batches of 2 and stays open. */
function announcing(onSubscribe: () => void): SourceModule<Record<string, never>> {
  return {
    type: 'announcing',
    kind: 'source',
    description: 'emits two batches and stays open',
    schema: { type: 'object', additionalProperties: false, properties: {} },
    example: {},
    build: (_config, context) =>
      new Observable<FlowBatch>((subscriber) => {
        for (const batch of [fixedBatch(0, 2), fixedBatch(1, 2)]) {
          context.counters.addReceived(batch.length);
          context.counters.addSent(batch.length);
          subscriber.next(batch);
        }
        onSubscribe();
      }),
  };
}

function fakeIo(options: { hooks?: CollectHooks; onSubscribe?: () => void } = {}) {
  const out: string[] = [];
  const err: string[] = [];
  const exits: number[] = [];
  const store: CollectStore = new Map();
  const signals = new EventEmitter();
  const registry = new ComponentRegistry([
    fixed,
    hold,
    pass,
    collectModule(store, options.hooks),
    announcing(options.onSubscribe ?? (() => undefined)),
  ]);
  const io: CliIo = {
    out: (s) => void out.push(s),
    err: (s) => void err.push(s),
    env: { SIZE: '3' },
    registry,
    signals,
    exit: (code) => void exits.push(code),
    logger: silentLogger(),
  };
  return {
    io,
    out,
    err,
    exits,
    store,
    signals,
    registry,
    text: () => ({ out: out.join(''), err: err.join('') }),
  };
}

/** Waits for a condition, failing after a deadline instead of sleeping a fixed time. */
const GOOD = `sources:
  flows: {type: fixed, size: "\${SIZE}"}
transforms:
  acct: {type: hold, inputs: [flows]}
sinks:
  out: {type: collect, inputs: [acct]}
`;

describe('rxflow validate', () => {
  it('prints ok with the counts of a good file and exits 0', async () => {
    const file = write('good.yaml', GOOD);
    const t = fakeIo();
    expect(await runCli(['validate', file], t.io)).toBe(0);
    expect(t.text()).toEqual({ out: `${file}: ok (1 source, 1 transform, 1 sink)\n`, err: '' });
  });

  it('prints every problem of every bad file and exits 1', async () => {
    const good = write(
      'good2.yaml',
      GOOD.replace('  out:', '  out2: {type: collect, inputs: [flows]}\n  out:'),
    );
    const bad = write('bad.yaml', GOOD.replace('type: hold', 'type: hodl').replace('[acct]', '[act]'));
    const t = fakeIo();
    expect(await runCli(['validate', bad, good], t.io)).toBe(1);
    expect(t.text()).toEqual({
      out: `${good}: ok (1 source, 1 transform, 2 sinks)\n`,
      err:
        `${bad}:4:16: transforms.acct.type: unknown transform type 'hodl' (did you mean 'hold'?); transform types: hold, pass\n` +
        `${bad}:6:33: sinks.out.inputs[0]: unknown input 'act' (did you mean 'acct'?); ids that exist: flows, acct\n`,
    });
  });

  it('says a file does not exist', async () => {
    const t = fakeIo();
    const file = join(dir, 'missing.yaml');
    expect(await runCli(['validate', file], t.io)).toBe(1);
    expect(t.text().err).toBe(`read ${file}: no such file; check the path\n`);
  });

  it('asks for a file when given none, and lists the types with --list', async () => {
    const t = fakeIo();
    expect(await runCli(['validate'], t.io)).toBe(2);
    expect(t.text().err).toBe(
      "validate: give one or more pipeline files, or --list; see 'rxflow validate --help'\n",
    );
    const l = fakeIo();
    expect(await runCli(['validate', '--list'], l.io)).toBe(0);
    expect(l.text().out).toBe(
      [
        'sources:',
        '  announcing  emits two batches and stays open',
        '  fixed       emits fixed batches',
        'transforms:',
        '  hold  holds records until the input completes',
        '  pass  passes batches through',
        'sinks:',
        '  collect  keeps every batch in memory',
        '',
      ].join('\n'),
    );
  });
});

describe('rxflow schema', () => {
  it('prints the pipeline JSON Schema of the registry', async () => {
    const t = fakeIo();
    expect(await runCli(['schema'], t.io)).toBe(0);
    expect(t.text().out).toBe(formatJson(pipelineSchema(t.registry)));
  });
});

describe('rxflow --help', () => {
  it.each([[[]], [['validate']], [['schema']], [['run']]])(
    'rxflow %j --help prints usage and exits 0',
    async (args) => {
      const t = fakeIo();
      expect(await runCli([...args, '--help'], t.io)).toBe(0);
      expect(t.text().out).toMatch(
        new RegExp(`^Usage: rxflow ${args.length ? args[0] + ' ' : ''}\\[options\\]`),
      );
    },
  );

  it('refuses an unknown command with exit 2', async () => {
    const t = fakeIo();
    expect(await runCli(['bogus'], t.io)).toBe(2);
    expect(t.text().err).toBe("error: unknown command 'bogus'\n(run with --help for usage)\n");
  });
});

describe('rxflow run', () => {
  it('runs a pipeline whose sources end, and exits 0', async () => {
    const file = write('run.yaml', GOOD);
    const t = fakeIo();
    expect(await runCli(['run', file], t.io)).toBe(0);
    expect(t.store.get('out')!.batches).toEqual([
      [...fixedBatch(0, 3), ...fixedBatch(1, 3), ...fixedBatch(2, 3)],
    ]);
    expect(t.store.get('out')!.events).toEqual(['complete', 'flush', 'close']);
    expect(t.signals.listenerCount('SIGTERM')).toBe(0);
  });

  it('drains on SIGTERM: held records reach the sink before it closes, exit 0', async () => {
    let subscribed = false;
    const t = fakeIo({ onSubscribe: () => (subscribed = true) });
    const file = write('signal.yaml', GOOD.replace('type: fixed, size: "${SIZE}"', 'type: announcing'));
    const code = runCli(['run', file], t.io);
    await until(() => subscribed, 'the source to be subscribed');
    expect(t.store.get('out')!.batches).toEqual([]);
    t.signals.emit('SIGTERM', 'SIGTERM');
    expect(await code).toBe(0);
    expect(t.store.get('out')!.batches).toEqual([[...fixedBatch(0, 2), ...fixedBatch(1, 2)]]);
    expect(t.store.get('out')!.events).toEqual(['complete', 'flush', 'close']);
    expect(t.exits).toEqual([]);
    expect(t.signals.listenerCount('SIGINT')).toBe(0);
  });

  it('exits at once on a second signal while draining', async () => {
    let subscribed = false;
    let release!: () => void;
    const closing = new Promise<void>((r) => (release = r));
    let closeStarted = false;
    const t = fakeIo({
      onSubscribe: () => (subscribed = true),
      hooks: {
        beforeClose: () => {
          closeStarted = true;
          return closing;
        },
      },
    });
    const file = write('twice.yaml', GOOD.replace('type: fixed, size: "${SIZE}"', 'type: announcing'));
    const code = runCli(['run', file], t.io);
    await until(() => subscribed, 'the source to be subscribed');
    t.signals.emit('SIGINT', 'SIGINT');
    await until(() => closeStarted, 'the sink to start closing');
    expect(t.exits).toEqual([]);
    t.signals.emit('SIGINT', 'SIGINT');
    expect(t.exits).toEqual([130]);
    release();
    expect(await code).toBe(0);
  });

  it('prints the problems of a bad file and exits 1 without running', async () => {
    const file = write('runbad.yaml', GOOD.replace('[acct]', '[]'));
    const t = fakeIo();
    expect(await runCli(['run', file], t.io)).toBe(1);
    expect(t.text().err).toBe(
      `${file}:6:32: sinks.out.inputs: must list at least one id; ids that exist: flows, acct\n`,
    );
    expect(t.store.size).toBe(0);
  });

  it('exits 1 naming the component that failed', async () => {
    const file = write('runfail.yaml', GOOD.replace('inputs: [acct]}', 'inputs: [acct], fail: true}'));
    const t = fakeIo();
    expect(await runCli(['run', file], t.io)).toBe(1);
    expect(t.text().err).toBe('run sinks.out (collect): broker unreachable\n');
    expect(t.store.get('out')!.events).toEqual(['flush', 'close']);
  });
});

describe('dist/src/cli/main.js', () => {
  const main = join(ROOT, 'dist/src/cli/main.js');
  const node = (...args: string[]) =>
    spawnSync(process.execPath, [main, ...args], { cwd: dir, encoding: 'utf8' });

  it('is built (npx tsc -p .) and starts with a node shebang', () => {
    expect(existsSync(main), `${main} is missing; build it with: npx tsc -p .`).toBe(true);
    expect(readFileSync(main, 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
  });

  it('runs as a process: help, schema, and a failing validate', () => {
    const help = node('--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage: rxflow \[options\] \[command\]/);

    const schema = node('schema');
    expect(schema.status).toBe(0);
    expect(schema.stdout, 'dist is older than src; rebuild with: npx tsc -p .').toBe(
      formatJson(pipelineSchema(defaultRegistry())),
    );

    const file = write('smoke.yaml', 'sourcs:\n  a: {type: x}\n');
    const validate = node('validate', file);
    expect(validate.status).toBe(1);
    expect(validate.stdout).toBe('');
    expect(validate.stderr).toBe(
      `${file}:1:1: unknown key 'sourcs' (did you mean 'sources'?); allowed: sources, transforms, sinks, drain_timeout_ms\n`,
    );
  });
});
