/**
 * One HA firewall node as its own process, for the HA kernel tests (started by ha-helpers.ts,
 * transpiled by buildChild() of test/fixtures/child.ts), so the test can SIGKILL it.
 *
 * argv[2] is JSON {pinRoot, instance, netns, ingress, egress, policy, pipeline, env, maxSessions?, objectPath}: the node loads the
 * firewall (pinned under <pinRoot>/rxflow-firewall-<instance>, links pinned too, so they outlive
 * the process), applies `policy` (YAML), attaches, then runs `pipeline` (YAML with a nats_sessions
 * sink, any of the built-in components, `${VAR}` from `env` over the process's) and reports {ok, started} once the pipeline started, which is
 * after the sink loaded the bucket and reported ready. Then, per stdin line:
 *   policy <policy YAML as a JSON string>  -> applies it, reports {ok, removed}
 *   status                                 -> reports {ok, status} of the nats_sessions sink
 *   stop                                   -> drains the pipeline, reports {ok, stopped}, exits
 */
import { createInterface } from 'node:readline';
import type { ComponentModule, Sink, SinkModule } from '../../src/component.js';
import { FirewallCollection, firewallPinDir } from '../../src/datapath/firewall/index.js';
import { parsePolicy } from '../../src/config/firewall-policy.js';
import { buildPipeline } from '../../src/pipeline/build.js';
import { ComponentRegistry } from '../../src/pipeline/component-registry.js';
import { parsePipeline } from '../../src/pipeline/load.js';
import { defaultRegistry } from '../../src/pipeline/registry.js';
import natsSessionsModule, {
  type NatsSessionsConfig,
  type NatsSessionsSink,
} from '../../src/sinks/nats_sessions.js';

interface NodeArgs {
  pinRoot: string;
  instance: string;
  netns: string;
  ingress: string;
  egress: string;
  policy: string;
  pipeline: string;
  env: Record<string, string>;
  /** Size of the session map (an LRU hash); the object's default when absent. */
  maxSessions?: number;
  /** bpf/firewall.o of the repository: the transpiled child lives elsewhere. */
  objectPath: string;
}

function report(value: unknown): void {
  process.stdout.write(
    `${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`,
  );
}

async function main(): Promise<void> {
  const args = JSON.parse(process.argv[2]!) as NodeArgs;
  const fw = FirewallCollection.load({
    pinDir: firewallPinDir(args.instance, args.pinRoot),
    ingress: args.ingress,
    egress: args.egress,
    netns: args.netns,
    objectPath: args.objectPath,
    ...(args.maxSessions !== undefined ? { maxSessions: args.maxSessions } : {}),
  });
  fw.applyPolicy(parsePolicy(args.policy, 'policy.yaml', {}));
  fw.attach();

  let sink: NatsSessionsSink | undefined;
  // The sink module, keeping the instance it builds so `status` can ask it.
  const tracked: SinkModule<NatsSessionsConfig> = {
    ...natsSessionsModule,
    build: (config, context): Sink => {
      const built = natsSessionsModule.build(config, context) as NatsSessionsSink;
      sink = built;
      return built;
    },
  };
  const registry = new ComponentRegistry(
    defaultRegistry().modules.map((m): ComponentModule =>
      m.type === tracked.type ? (tracked as ComponentModule) : m,
    ),
  );
  const config = parsePipeline(args.pipeline, 'node.yaml', {
    registry,
    env: { ...process.env, ...args.env },
  });
  const pipeline = await buildPipeline(config);
  await pipeline.start();
  report({ ok: true, started: true });

  for await (const line of createInterface({ input: process.stdin })) {
    const space = line.indexOf(' ');
    const cmd = space < 0 ? line : line.slice(0, space);
    try {
      if (cmd === 'policy') {
        const result = fw.applyPolicy(
          parsePolicy(JSON.parse(line.slice(space + 1)) as string, 'policy.yaml', {}),
        );
        report({ ok: true, removed: result.removed });
      } else if (cmd === 'status') {
        report({ ok: true, status: await sink?.status() });
      } else if (cmd === 'stop') {
        await pipeline.stop();
        report({ ok: true, stopped: true });
        fw.close({ keepAttached: true });
        process.exit(0);
      }
    } catch (err) {
      report({ ok: false, message: (err as Error).message });
    }
  }
}

main().catch((err: unknown) => {
  report({
    ok: false,
    code: (err as { code?: unknown }).code ?? 'UNEXPECTED',
    message: (err as Error).message,
  });
  process.exit(1);
});
