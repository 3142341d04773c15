/**
 * Detaching many links at stop does not hold the event loop: the kernel answers a TCX detach only
 * after an RCU grace period, so the source detaches each link on a worker thread, one after
 * another, and the pipeline's drain deadline bounds them. Ordering, not durations: the event loop
 * turns while some links are detached and others not yet, and a stop leaves no TCX link
 * (bpftool), no fd and no pin behind. A drain deadline that comes first lets go of the rest: the
 * warning says how many, the stop ends, and the kernel detaches them on its own (their programs go).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { silentLogger, type Logger } from '../../src/logger.js';
import { buildPipeline, type Pipeline } from '../../src/pipeline/build.js';
import { ComponentRegistry } from '../../src/pipeline/component-registry.js';
import { parsePipeline } from '../../src/pipeline/load.js';
import type { FlowBatch } from '../../src/records/flow.js';
import ebpfFlowsModule from '../../src/sources/ebpf_flows.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createNetns, type Netns } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { tcxLinkFds, tcxLinksRunning } from './datapath-helpers.js';
import { collectModule, until, type CollectStore } from '../unit/pipeline/components.js';

// 80 TC links: about a second of detaching, many turns of the event loop.
const LINKS = 40;

/** The kernel ids of the programs behind the TCX links this process holds. */
function programIdsOfHeldLinks(): Set<number> {
  const ids = new Set<number>();
  for (const fd of tcxLinkFds()) {
    const info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
    ids.add(Number(/^prog_id:\s*(\d+)/m.exec(info)![1]));
  }
  return ids;
}

/**
 * Which of `programs` the kernel still has: a TCX link holds its program until the kernel has
 * detached it, and nothing else holds these once the pipeline stopped.
 */
function programsAlive(programs: Set<number>): number[] {
  const progs = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show'], { encoding: 'utf8' })) as {
    id: number;
  }[];
  return progs.filter((p) => programs.has(p.id)).map((p) => p.id);
}

function pinCount(dir: string): number {
  return existsSync(dir) ? readdirSync(dir).length : 0;
}

kernelDescribe(
  'detaching many links at stop keeps the event loop running',
  () => {
    let ns: Netns;
    let pinRoot: string;

    beforeAll(async () => {
      ns = await createNetns({ prefix: 'rxdl' });
      execFileSync('ip', ['-n', ns.name, '-batch', '-'], {
        input: Array.from(
          { length: LINKS },
          (_, i) => `link add rxdl${i} type veth peer name rxdp${i}\n`,
        ).join(''),
      });
      pinRoot = makeBpffsDir('detlp');
    });
    afterAll(() => cleanup.dispose());

    async function started(
      instance: string,
      drain: string,
      logger: Logger,
      onBatch?: (batch: FlowBatch) => void,
    ): Promise<Pipeline> {
      const store: CollectStore = new Map();
      const registry = new ComponentRegistry([
        ebpfFlowsModule,
        collectModule(store, onBatch ? { onBatch } : {}),
      ]);
      const config = parsePipeline(
        `
drain_timeout_ms: ${drain}
sources:
  flows:
    type: ebpf_flows
    interfaces: ['rxdl*']
    netns: ${ns.name}
    instance: ${instance}
    pin_root: ${pinRoot}
    eviction_interval_ms: 1h
sinks:
  out:
    type: collect
    inputs: [flows]
`,
        `${instance}.yaml`,
        { registry },
      );
      const pipeline = await buildPipeline(config, { logger });
      await pipeline.start();
      return pipeline;
    }

    it('the event loop turns while the links are detached at stop, and the stop leaves none behind', async () => {
      const instance = `detachloop-${process.pid}-stop`;
      const linksDir = join(pinRoot, `rxflow-${instance}`, 'links');
      const pipeline = await started(instance, '20s', silentLogger());
      let stopped = false;
      try {
        expect(pinCount(linksDir)).toBe(2 * LINKS);
        expect(tcxLinkFds()).toHaveLength(2 * LINKS);
        const programs = programIdsOfHeldLinks();
        // How many links were still pinned at each turn of the event loop during the stop.
        const seen: number[] = [];
        const turn = (): void => {
          seen.push(pinCount(linksDir));
          if (!stopped) setImmediate(turn);
        };
        setImmediate(turn);
        await pipeline.stop();
        stopped = true;
        // Some turn came after the first link was detached and before the last one was.
        expect(seen.some((n) => n > 0 && n < 2 * LINKS)).toBe(true);
        expect(tcxLinksRunning(...programs)).toEqual([]);
        expect(tcxLinkFds()).toEqual([]);
        expect(existsSync(join(pinRoot, `rxflow-${instance}`))).toBe(false);
      } finally {
        stopped = true;
        await pipeline.stop().catch(() => undefined);
      }
    });

    it('the final read of the flow maps comes after the last link is detached: nothing counted is left unread', async () => {
      const instance = `detachloop-${process.pid}-order`;
      // How many TCX links of the flow programs the kernel runs when the final batch arrives.
      let programs = new Set<number>();
      let atFinal: number | undefined;
      const pipeline = await started(instance, '20s', silentLogger(), (batch) => {
        // The final eviction ends flows without FIN or RST as forced (flowEndReason 4).
        if (atFinal === undefined && batch.some((r) => r.flowEndReason === 4)) {
          atFinal = tcxLinksRunning(...programs).length;
        }
      });
      try {
        programs = programIdsOfHeldLinks();
        expect(tcxLinksRunning(...programs)).toHaveLength(2 * LINKS);
        // Traffic on one link, so the final read has a flow to hand over.
        execFileSync('ip', ['-n', ns.name, 'link', 'set', 'rxdl0', 'up']);
        execFileSync('ip', ['-n', ns.name, 'link', 'set', 'rxdp0', 'up']);
        execFileSync('ip', ['-n', ns.name, 'addr', 'add', '198.19.77.1/30', 'dev', 'rxdl0']);
        // Nobody answers: the ARP requests are the traffic (a layer-2 flow).
        await ns
          .exec('ping', ['-c', '2', '-i', '0.2', '-w', '1', '-I', 'rxdl0', '198.19.77.2'])
          .catch(() => undefined);
        await pipeline.stop();
        expect(atFinal).toBe(0);
      } finally {
        await pipeline.stop().catch(() => undefined);
        execFileSync('ip', ['-n', ns.name, 'addr', 'flush', 'dev', 'rxdl0']);
      }
    });

    it('a drain deadline before the last detach lets go of the rest, says how many, and the kernel detaches them', async () => {
      const instance = `detachloop-${process.pid}-deadline`;
      const warnings: { msg: string; links?: number; pin_dir?: string }[] = [];
      const logs = new Writable({
        write(chunk: Buffer, _enc, done) {
          for (const line of chunk.toString().split('\n')) {
            if (!line) continue;
            const entry = JSON.parse(line) as {
              level: number;
              msg: string;
              links?: number;
              pin_dir?: string;
            };
            if (entry.level === 40) warnings.push(entry);
          }
          done();
        },
      });
      // No time to drain: the deadline is there as soon as the stop begins.
      const pipeline = await started(instance, '0', pino({ level: 'warn' }, logs));
      try {
        const programs = programIdsOfHeldLinks();
        expect(tcxLinksRunning(...programs)).toHaveLength(2 * LINKS);
        await pipeline.stop();
        const left = warnings.find((w) => w.msg.startsWith('drain deadline reached before every link'));
        expect(left).toMatchObject({ pin_dir: join(pinRoot, `rxflow-${instance}`, 'links') });
        expect(left!.links).toBeGreaterThan(0);
        expect(left!.links).toBeLessThanOrEqual(2 * LINKS);
        // Nothing is held by the process nor pinned; the kernel detaches what was let go of.
        expect(tcxLinkFds()).toEqual([]);
        expect(existsSync(join(pinRoot, `rxflow-${instance}`))).toBe(false);
        await until(
          () => programsAlive(programs).length === 0,
          'the kernel detached the links let go of',
          20_000,
        );
      } finally {
        await pipeline.stop().catch(() => undefined);
      }
    });
  },
  ['bpftool'],
);
