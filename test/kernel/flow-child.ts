/**
 * A separate process for the flow kernel tests (transpiled by buildChild() of test/fixtures/child.ts).
 * Prints one JSON line per report:
 *   open <FlowDatapathOptions as JSON>
 *     opens a FlowDatapath, reports {ok, pinDir, links} and stays alive until killed; on a line
 *     `swap` on stdin it moves the programs to the other flow map without draining the one they
 *     left (an agent killed between the two halves of an eviction) and reports {ok, active};
 *   pipeline <pipeline YAML>
 *     builds the pipeline (${VAR}s from the environment) with the ebpf_flows, dedupe, decorate and
 *     account modules and a `collect` sink, starts it and reports {ok, started}; on a line `stop`
 *     on stdin it drains the pipeline and reports {ok, beforeStop, records, totals}, then exits.
 */
import { createInterface } from 'node:readline';
import type { ComponentModule } from '../../src/component.js';
import accountModule from '../../src/operators/account.js';
import decorateModule from '../../src/operators/decorate.js';
import dedupeModule from '../../src/operators/dedupe.js';
import { buildPipeline } from '../../src/pipeline/build.js';
import { ComponentRegistry } from '../../src/pipeline/component-registry.js';
import { parsePipeline } from '../../src/pipeline/load.js';
import ebpfFlowsModule from '../../src/sources/ebpf_flows.js';
import { FlowDatapath, type FlowDatapathOptions } from '../../src/datapath/flow/datapath.js';
import { collectModule, type CollectStore } from '../unit/pipeline/components.js';

function report(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

function failure(err: unknown): Record<string, unknown> {
  return {
    ok: false,
    code: (err as { code?: unknown }).code ?? 'UNEXPECTED',
    message: err instanceof Error ? err.message : String(err),
  };
}

async function runPipeline(yaml: string): Promise<void> {
  const store: CollectStore = new Map();
  const modules: ComponentModule[] = [
    ebpfFlowsModule,
    accountModule,
    dedupeModule,
    decorateModule,
    collectModule(store),
  ];
  const config = parsePipeline(yaml, 'flow-pipeline.yaml', { registry: new ComponentRegistry(modules) });
  const pipeline = await buildPipeline(config);
  await pipeline.start();
  report({ ok: true, started: true });
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) if (line.trim() === 'stop') break;
  lines.close();
  const collected = () => [...store.values()].flatMap((c) => c.batches.flat());
  const beforeStop = collected().length;
  await pipeline.stop();
  report({ ok: true, beforeStop, records: collected(), totals: pipeline.totals() });
}

const [command, arg] = process.argv.slice(2);
try {
  if (command === 'open') {
    const dp = FlowDatapath.open(JSON.parse(arg!) as FlowDatapathOptions);
    report({
      ok: true,
      pinDir: dp.pinDir,
      links: dp.links.map((l) => ({
        ifname: l.ifname,
        direction: l.direction,
        mode: l.mode,
        programId: l.programId,
      })),
    });
    const lines = createInterface({ input: process.stdin });
    lines.on('line', (line) => {
      if (line.trim() !== 'swap') return;
      dp.flowMaps.swap();
      report({ ok: true, active: dp.flowMaps.active.name });
    });
    setInterval(() => undefined, 60_000);
  } else if (command === 'pipeline') {
    await runPipeline(arg!);
    process.exit(0);
  } else {
    report({ ok: false, code: 'USAGE', message: `unknown command ${command}` });
    process.exitCode = 2;
  }
} catch (err) {
  report(failure(err));
  process.exit(1);
}
