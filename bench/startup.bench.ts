/**
 * Start-up of `rxflow run` on a pipeline shaped like pipelines/demo.yaml (ebpf_flows in a network
 * namespace -> decorate -> kafka + top): wall-clock time from spawning the process to its 'ready'
 * log line (programs attached, first eviction scheduled), the median of several runs. The same-run
 * baseline is a bare `node -e ''`, the part of the figure no code of rxflow can remove. Needs root
 * and the built tree (npx tsc -p .).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KafkaMockCluster } from '../src/devtools/kafka-mock.js';
import { Netns, addNetns, addVethPair, setUpVethEnds } from '../src/devtools/netns.js';
import { deleteNetnsSync } from '../src/devtools/system.js';
import type { BenchContext } from './lib.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const TARGET_MS = 2000;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * Spawns node with `args`; resolves, once the process has exited, with the ms until a stderr line
 * matched `ready` (then it was sent SIGTERM), or until it exited 0 when `ready` is undefined.
 */
function timeUntil(args: string[], ready: RegExp | undefined, env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const elapsed = () => Number(process.hrtime.bigint() - start) / 1e6;
    const child = spawn(process.execPath, args, {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    let readyMs: number | undefined;
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
      if (readyMs === undefined && ready?.test(stderr)) {
        readyMs = elapsed();
        child.kill('SIGTERM');
      }
    });
    child.once('exit', (code) => {
      if (readyMs !== undefined && code === 0) resolve(readyMs);
      else if (ready === undefined && code === 0) resolve(elapsed());
      else reject(new Error(`startup bench: ${args.join(' ')} exited ${code}: ${stderr.trim()}`));
    });
  });
}

export default async function startup(ctx: BenchContext): Promise<void> {
  const runs = ctx.quick ? 3 : 7;
  const tag = `rxbs${process.pid}`;
  const client = `${tag}c`;
  const server = `${tag}s`;
  const dir = mkdtempSync(join(tmpdir(), 'rxflow-startup-'));
  let kafka: KafkaMockCluster | undefined;
  try {
    await addNetns(client);
    await addNetns(server);
    await addVethPair(`${tag}a`, { ns: new Netns(client) }, `${tag}b`, { ns: new Netns(server) });
    await setUpVethEnds(`${tag}a`, { ns: new Netns(client) }, `${tag}b`, { ns: new Netns(server) });
    kafka = await KafkaMockCluster.start();
    const file = join(dir, 'startup.yaml');
    writeFileSync(
      file,
      `sources:
  flows:
    type: ebpf_flows
    netns: ${server}
    interfaces: [${tag}b]
    instance: ${tag}
    eviction_interval_ms: 1s
    cache_max_flows: 4096
    ringbuf_size_bytes: 1048576
transforms:
  named: {type: decorate, inputs: [flows], netns: ${server}}
sinks:
  kafka: {type: kafka, inputs: [named], bootstrap_servers: ["${kafka.bootstrap}"], topic: flows}
  top: {type: top, inputs: [named]}
`,
    );
    const env = { RXFLOW_RUN_DIR: dir, RXFLOW_LOG_LEVEL: 'info' };
    const bare: number[] = [];
    const ready: number[] = [];
    for (let i = 0; i < runs; i++) {
      bare.push(await timeUntil(['-e', ''], undefined, {}));
      // Each run drains, exits 0 and unpins before the next one attaches.
      ready.push(await timeUntil([MAIN, 'run', file], /"msg":"ready"/, env));
    }
    const baseline = { name: 'startup.node_bare', value: median(bare) };
    ctx.report({ name: baseline.name, value: baseline.value, unit: 'ms', note: `median of ${runs}` });
    ctx.report({
      name: 'startup.run_demo_pipeline_ready',
      value: median(ready),
      unit: 'ms',
      baseline,
      target: { value: TARGET_MS, better: 'lower' },
      note: `spawn to 'ready', median of ${runs}; min ${Math.round(Math.min(...ready))} max ${Math.round(Math.max(...ready))}`,
    });
  } finally {
    await kafka?.stop();
    deleteNetnsSync(client);
    deleteNetnsSync(server);
    rmSync(dir, { recursive: true, force: true });
    rmSync(join('/sys/fs/bpf', `rxflow-${tag}`), { recursive: true, force: true });
  }
}
