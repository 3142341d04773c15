/**
 * Attaching many links does not hold the event loop: the kernel answers a TCX attach only after
 * an RCU grace period, so the follower makes each attach on a worker thread, one after another.
 * Ordering, not durations: a callback scheduled when the follower opens runs before the last
 * link is attached, and the health endpoint answers a request sent while the source attaches
 * before its attaches end (/livez alive, /readyz not ready), then /readyz is ready. A link deleted
 * while the others are attached, and a close() while attaches are pending, leave no TCX link
 * (bpftool) and no pin behind.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { basename, join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { PipelineSession } from '../../src/cli/session.js';
import { FlowDatapath } from '../../src/datapath/flow/datapath.js';
import { silentLogger } from '../../src/logger.js';
import { InterfaceMatcher } from '../../src/net/interface-match.js';
import { buildPipeline } from '../../src/pipeline/build.js';
import { ComponentRegistry } from '../../src/pipeline/component-registry.js';
import { parsePipeline } from '../../src/pipeline/load.js';
import ebpfFlowsModule from '../../src/sources/ebpf_flows.js';
import { followLinks } from '../../src/sources/follow-links.js';
import type { LinkFollower } from '../../src/sources/link-follower.js';
import { cleanup, makeBpffsDir, makeTempDir } from '../fixtures/cleanup.js';
import { createNetns, type Netns } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { tcxLinkFds } from './datapath-helpers.js';
import { collectModule, until, type CollectStore } from '../unit/pipeline/components.js';

const LINKS = 12;
const FOLLOW = {
  netns_rescan_interval_ms: 1000,
  directions: ['ingress', 'egress'] as ('ingress' | 'egress')[],
  attach_mode: 'auto' as const,
};

interface LinkInfo {
  id: number;
  prog_id?: number;
}

/** The kernel id of one of the datapath's programs, from its fd's fdinfo. */
function programId(dp: FlowDatapath, direction: 'ingress' | 'egress'): number {
  const info = readFileSync(`/proc/self/fdinfo/${dp.program(direction).fd}`, 'utf8');
  return Number(/^prog_id:\s*(\d+)/m.exec(info)![1]);
}

/** The links in the kernel (bpftool) that run one of the datapath's two programs. */
function tcxLinksOf(dp: FlowDatapath): LinkInfo[] {
  const programs = new Set([programId(dp, 'ingress'), programId(dp, 'egress')]);
  const links = JSON.parse(
    execFileSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' }),
  ) as LinkInfo[];
  return links.filter((l) => programs.has(l.prog_id ?? -1));
}

function pins(dp: FlowDatapath): string[] {
  const dir = join(dp.pinDir, 'links');
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

kernelDescribe(
  'attaching many links keeps the event loop running',
  () => {
    let ns: Netns;
    let pinRoot: string;
    const names = Array.from({ length: LINKS }, (_, i) => `rxal${i}`);

    beforeAll(async () => {
      ns = await createNetns({ prefix: 'rxal' });
      // The links live in the test's namespace: their names cannot collide with anyone's.
      execFileSync('ip', ['-n', ns.name, '-batch', '-'], {
        input: names.map((n, i) => `link add ${n} type veth peer name rxap${i}\n`).join(''),
      });
      pinRoot = makeBpffsDir('rxatl');
    });
    afterAll(() => cleanup.dispose());

    let instance = 0;
    const open = () =>
      FlowDatapath.open({
        interfaces: [],
        instance: `attachloop-${process.pid}-${instance++}`,
        pinRoot,
        maxFlows: 1024,
        ringbufBytes: 65536,
      });

    it('a callback scheduled at open runs before the last link is attached; every link is attached once', async () => {
      const dp = open();
      let follower: LinkFollower | undefined;
      let attachedWhenLoopRan: number | undefined;
      try {
        // Scheduled before the follower opens: it runs at the event loop's next turn.
        setImmediate(() => (attachedWhenLoopRan = follower?.attached().length));
        follower = followLinks(
          dp,
          { ...FOLLOW, netns: ns.name },
          InterfaceMatcher.parse(['rxal*']),
          silentLogger(),
        );
        await until(
          () => attachedWhenLoopRan !== undefined && follower!.attached().length === LINKS,
          `${LINKS} links attached`,
          20_000,
        );
        // How many were attached when the callback ran: not all of them.
        expect(attachedWhenLoopRan).toBeLessThan(LINKS);
        expect(follower.attached().sort()).toEqual(names.map((n) => `${ns.name}/${n}`).sort());
        expect(tcxLinksOf(dp)).toHaveLength(2 * LINKS);
        expect(tcxLinkFds()).toHaveLength(2 * LINKS);
        expect(pins(dp)).toHaveLength(2 * LINKS);
      } finally {
        follower?.close();
        dp.close();
      }
    });

    it('a link deleted while the others are attached and a close() with attaches pending leave nothing behind', async () => {
      const dp = open();
      const deleted = 'rxal2';
      let follower: LinkFollower | undefined;
      try {
        follower = followLinks(
          dp,
          { ...FOLLOW, netns: ns.name },
          InterfaceMatcher.parse(['rxal*']),
          silentLogger(),
        );
        const attached: string[] = [];
        let closedAt: number | undefined;
        follower.events.subscribe((e) => {
          if (e.type !== 'attached') return;
          attached.push(e.ifname);
          // Deleted while queued (listed, not attached yet): never attached, nor left half done.
          if (attached.length === 1) execFileSync('ip', ['-n', ns.name, 'link', 'del', deleted]);
          // At the loop's next turn the next attach is on its worker thread: close() aborts it.
          if (attached.length === 5) {
            setImmediate(() => {
              closedAt = attached.length;
              follower!.close();
            });
          }
        });
        await until(() => closedAt !== undefined, 'closed', 20_000);
        await follower.idle();
        expect(closedAt).toBe(5);
        expect(attached).not.toContain(deleted);
        expect(attached).toHaveLength(5);
        // The attach running when close() came, and those queued, left no link and no pin.
        expect(tcxLinksOf(dp)).toEqual([]);
        expect(pins(dp)).toEqual([]);
      } finally {
        follower?.close();
        dp.close();
        execFileSync('ip', ['-n', ns.name, '-batch', '-'], {
          input: `link add ${deleted} type veth peer name rxap2\n`,
        });
      }
    });

    it('an attach that fails at start fails the start with its reason, and leaves no link attached', async () => {
      const instance = `attachloop-${process.pid}-fail`;
      // A map where the pin of rxal3's ingress link goes: the attach cannot take it over.
      const ino = statSync(`/run/netns/${ns.name}`).ino;
      const { ifindex } = (
        JSON.parse(
          execFileSync('ip', ['-n', ns.name, '-j', 'link', 'show', 'rxal3'], { encoding: 'utf8' }),
        ) as {
          ifindex: number;
        }[]
      )[0]!;
      const linksDir = join(pinRoot, `rxflow-${instance}`, 'links');
      const squatter = join(linksDir, `tc-ns${ino}-if${ifindex}-ingress`);
      mkdirSync(linksDir, { recursive: true });
      execFileSync('bpftool', [
        'map',
        'create',
        squatter,
        ...'type array key 4 value 4 entries 1 name squat'.split(' '),
      ]);
      const store: CollectStore = new Map();
      const registry = new ComponentRegistry([ebpfFlowsModule, collectModule(store)]);
      const config = parsePipeline(
        `
sources:
  flows:
    type: ebpf_flows
    interfaces: ['rxal*']
    netns: ${ns.name}
    instance: ${instance}
    pin_root: ${pinRoot}
sinks:
  out:
    type: collect
    inputs: [flows]
`,
        'attach-fail.yaml',
        { registry },
      );
      const pipeline = await buildPipeline(config, { logger: silentLogger() });
      try {
        await expect(pipeline.start()).rejects.toThrow(
          `attach tc ingress rxal3: ${squatter} holds a bpf object that is not a link; remove it with 'rm ${squatter}'`,
        );
      } finally {
        await pipeline.stop().catch(() => undefined);
      }
      // The links attached before and after the failure were detached with the source: no fd of
      // one is open, and no pin of one is left.
      expect(tcxLinkFds()).toEqual([]);
      const left = existsSync(linksDir) ? readdirSync(linksDir) : [];
      expect(left.filter((n) => n !== basename(squatter))).toEqual([]);
      rmSync(join(pinRoot, `rxflow-${instance}`), { recursive: true, force: true });
    });

    it('the health endpoint answers while the source attaches: alive and not ready, then ready', async () => {
      const dir = makeTempDir('rxatl');
      const file = join(dir, 'attach.yaml');
      writeFileSync(
        file,
        `
sources:
  flows:
    type: ebpf_flows
    interfaces: ['rxal*']
    netns: ${ns.name}
    instance: attachloop-${process.pid}-health
    pin_root: ${pinRoot}
sinks:
  out:
    type: collect
    inputs: [flows]
`,
      );
      const order: string[] = [];
      const answers: { path: string; code: number; status: string }[] = [];
      let address: string | undefined;
      const get = (path: string) =>
        new Promise<void>((resolve, reject) => {
          const [host, port] = address!.split(':');
          request({ host, port: Number(port), path }, (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c.toString()));
            res.on('end', () => {
              order.push(`answer ${path}`);
              answers.push({
                path,
                code: res.statusCode!,
                status: (JSON.parse(body) as { status: string }).status,
              });
              resolve();
            });
          })
            .on('error', reject)
            .end();
        });
      let asked: Promise<void>[] = [];
      const logs = new Writable({
        write(chunk: Buffer, _enc, done) {
          for (const line of chunk.toString().split('\n')) {
            if (!line) continue;
            const msg = (JSON.parse(line) as { msg: string }).msg;
            if (msg !== 'interface attached') continue;
            order.push('attached');
            // Asked once the first link is attached: the others are still to come.
            if (asked.length === 0) asked = [get('/livez'), get('/readyz')];
          }
          done();
        },
      });
      const store: CollectStore = new Map();
      const session = await PipelineSession.open(file, {
        env: {},
        registry: new ComponentRegistry([ebpfFlowsModule, collectModule(store)]),
        logger: pino({ level: 'info' }, logs),
      });
      try {
        await session.serveHealth('127.0.0.1:0');
        address = session.healthAddress;
        await session.start();
        order.push('started');
        await Promise.all(asked);
        // Both answers came before the last link was attached, and before the start ended.
        const lastAttached = order.lastIndexOf('attached');
        expect(order.filter((o) => o === 'attached')).toHaveLength(LINKS);
        expect(order.indexOf('answer /livez')).toBeLessThan(lastAttached);
        expect(order.indexOf('answer /readyz')).toBeLessThan(lastAttached);
        expect(answers).toEqual(
          expect.arrayContaining([
            { path: '/livez', code: 200, status: 'alive' },
            { path: '/readyz', code: 503, status: 'not ready' },
          ]),
        );
        answers.length = 0;
        await get('/readyz');
        expect(answers).toEqual([{ path: '/readyz', code: 200, status: 'healthy' }]);
      } finally {
        await session.stop();
        await session.close();
      }
    });
  },
  ['bpftool'],
);
