import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cleanup, killSync, makeBpffsDir, makeTempDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { crc32cImplementation } from '../../src/kafka/crc32c.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { icmpFrameBytes, ping, sendUdp, startUdpSink, udpFrameBytes } from '../fixtures/traffic.js';

/**
 * The package as a user gets it: `npm pack` of a copy of the sources (no build output), installed
 * with `npm install -g` into a temporary prefix with no compiler on PATH, then the installed
 * rxflow run the way packaging/rxflow.service runs it: its ExecStartPre and ExecStart, as an
 * unprivileged user (uid 65534 stands in for the unit's User=rxflow) with exactly the unit's
 * capabilities, no-new-privileges and its umask. The agent runs inside the server's namespace of a
 * netns pair, as NetworkNamespacePath= would put it, and its file sink is read back.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const UID = 65534;
const UNIT = join(ROOT, 'packaging', 'rxflow.service');

/** The [Service] settings of a unit file, each key with every value it was given. */
function serviceSettings(file: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  let section = '';
  for (const raw of readFileSync(file, 'utf8').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('[')) {
      section = line;
      continue;
    }
    if (section !== '[Service]') continue;
    const eq = line.indexOf('=');
    const key = line.slice(0, eq);
    settings.set(key, [...(settings.get(key) ?? []), line.slice(eq + 1)]);
  }
  return settings;
}

function one(settings: Map<string, string[]>, key: string): string {
  const values = settings.get(key) ?? [];
  if (values.length !== 1) throw new Error(`${UNIT}: expected one ${key}=, found ${values.length}`);
  return values[0]!;
}

/** `CAP_BPF CAP_NET_ADMIN` -> `+bpf,+net_admin`, as setpriv takes them. */
function setprivCaps(caps: readonly string[]): string {
  return caps.map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`).join(',');
}

function which(cmd: string): string {
  return execFileSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { encoding: 'utf8' }).trim();
}

/** The installed rxflow, run by the unit's command line under setpriv; output collected. */
class Agent {
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly child: ChildProcess;

  constructor(argv: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'ignore', 'pipe'] });
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));
    const pid = this.child.pid!;
    const registration = cleanup.register(`installed rxflow ${pid}`, () => killSync(pid, 10_000));
    this.exited = new Promise((resolve) =>
      this.child.once('close', (code, signal) => {
        registration.release();
        resolve({ code, signal });
      }),
    );
  }

  logs(): Record<string, unknown>[] {
    return this.stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }

  async until(condition: () => boolean, what: string, ms = 20_000): Promise<void> {
    const deadline = Date.now() + ms;
    let done = false;
    void this.exited.then(() => (done = true));
    while (!condition()) {
      if (done || Date.now() > deadline) {
        throw new Error(`${done ? 'exited' : 'timed out'} waiting for ${what}\nstderr:\n${this.stderr}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Files (pinned maps, links, programs) under a bpffs directory. */
function pinned(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => !e.isDirectory())
    .map((e) => join(e.parentPath, e.name));
}

interface FlowLine {
  protocolIdentifier: number;
  flowDirection: number;
  sourceIPv4Address: string;
  destinationIPv4Address: string;
  sourceTransportPort: number;
  destinationTransportPort: number;
  packetDeltaCount: number;
  layer2OctetDeltaCount: number;
}

kernelDescribe(
  'the npm package, installed and run as a user with the unit capabilities',
  () => {
    let work: string;
    let prefix: string;
    let packed: { files: { path: string }[]; filename: string };
    let unit: Map<string, string[]>;
    let caps: string;
    let topo: PairTopology;
    let bpffs: string;

    beforeAll(async () => {
      unit = serviceSettings(UNIT);
      const ambient = one(unit, 'AmbientCapabilities').split(/\s+/);
      expect(one(unit, 'CapabilityBoundingSet').split(/\s+/)).toEqual(ambient);
      caps = setprivCaps(ambient);

      // The temporary prefix must be readable by the unprivileged user, wherever the clone is.
      work = makeTempDir('pkg');
      chmodSync(work, 0o755);
      const copy = join(work, 'src');
      const skip = new Set(['node_modules', 'dist', '.git', '.bench']);
      cpSync(ROOT, copy, {
        recursive: true,
        filter: (from) => {
          const rel = relative(ROOT, from);
          if (skip.has(rel.split('/')[0]!)) return false;
          return !/^bpf\/.*\.o$/.test(rel) && !rel.endsWith('.log');
        },
      });
      symlinkSync(join(ROOT, 'node_modules'), join(copy, 'node_modules'));
      const out = execFileSync('npm', ['pack', '--json', '--pack-destination', work], {
        cwd: copy,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 120_000,
      });
      packed = (JSON.parse(out) as (typeof packed)[])[0]!;

      // A PATH with node, sh (npm runs install scripts with it) and ip (iproute2, which the
      // decorate transform runs), and no compiler.
      const bin = join(work, 'bin');
      mkdirSync(bin, { mode: 0o755 });
      for (const cmd of ['node', 'npm', 'sh', 'ip']) symlinkSync(which(cmd), join(bin, cmd));
      prefix = join(work, 'prefix');
      execFileSync(
        'npm',
        [
          'install',
          '--global',
          '--prefix',
          prefix,
          '--prefer-offline',
          '--no-audit',
          '--no-fund',
          '--allow-scripts=koffi',
          join(work, packed.filename),
        ],
        {
          cwd: work,
          env: { PATH: bin, HOME: process.env.HOME ?? '/root' },
          stdio: ['ignore', 'pipe', 'pipe'],
          timeout: 120_000,
        },
      );

      topo = await createPair({ prefix: 'rxpk' });
      bpffs = makeBpffsDir('pkg');
    }, 300_000);

    afterAll(() => cleanup.dispose());

    it('npm pack ships the build, the BPF objects, the native library, pipelines and LICENSE, and nothing of tests', () => {
      const files = packed.files.map((f) => f.path).sort();
      // Every module of src/, compiled; no source maps, tests or benches.
      const sources: string[] = [];
      const walk = (dir: string): void => {
        for (const e of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
          const rel = `${dir}/${e.name}`;
          if (e.isDirectory()) walk(rel);
          else if (rel.endsWith('.ts')) sources.push(`dist/${rel.replace(/\.ts$/, '.js')}`);
        }
      };
      walk('src');
      const listed = (dir: string) => readdirSync(join(ROOT, dir)).map((f) => `${dir}/${f}`);
      expect(files).toEqual(
        [
          'LICENSE',
          'README.md',
          'package.json',
          'bpf/drops.o',
          'bpf/firewall.o',
          'bpf/flow.o',
          'bpf/rtt.o',
          'dist/native/librxflow.so',
          'dist/tools/kafka-mock',
          'dist/tools/traffic',
          'src/sinks/flow.proto',
          ...sources,
          ...listed('schema'),
          ...listed('pipelines'),
          ...listed('examples'),
          ...listed('packaging'),
        ].sort(),
      );
      // package.json says Apache-2.0: the installed LICENSE is its text, as Debian ships it.
      expect(readFileSync(join(prefix, 'lib', 'node_modules', 'rxflow', 'LICENSE'), 'utf8')).toBe(
        readFileSync('/usr/share/common-licenses/Apache-2.0', 'utf8'),
      );
    });

    it('the installed modules find the native library and flow.proto of the package', () => {
      const pkg = join(prefix, 'lib', 'node_modules', 'rxflow');
      const script = `const crc = await import(${JSON.stringify(join(pkg, 'dist/src/kafka/crc32c.js'))});
const encode = await import(${JSON.stringify(join(pkg, 'dist/src/kafka/flow-messages.js'))});
console.log(JSON.stringify([crc.crc32cImplementation, encode.flowProtoPath()]));`;
      const out = execFileSync(
        which('setpriv'),
        [
          `--reuid=${UID}`,
          `--regid=${UID}`,
          '--clear-groups',
          '--',
          join(work, 'bin', 'node'),
          '--input-type=module',
          '-e',
          script,
        ],
        { cwd: work, env: { PATH: join(work, 'bin') }, encoding: 'utf8' },
      );
      expect(JSON.parse(out)).toEqual([crc32cImplementation, join(pkg, 'src', 'sinks', 'flow.proto')]);
      expect(crc32cImplementation).not.toBe('javascript');
    });

    it('systemd-analyze verify accepts the installed unit, ExecStart naming the installed rxflow', () => {
      const installed = join(prefix, 'lib', 'node_modules', 'rxflow', 'packaging', 'rxflow.service');
      expect(readFileSync(installed, 'utf8')).toBe(readFileSync(UNIT, 'utf8'));
      const execStart = one(unit, 'ExecStart').split(' ');
      expect(execStart[0]).toBe('/usr/local/bin/rxflow');
      // verify checks that ExecStart's program exists: the prefix is mounted on /usr/local, in a
      // mount namespace of verify's own.
      const r = execFileSync(
        'unshare',
        [
          '--mount',
          '--propagation',
          'private',
          '--',
          'sh',
          '-c',
          'mount --bind "$1" /usr/local && systemd-analyze verify "$2" 2>&1',
          'sh',
          prefix,
          installed,
        ],
        { encoding: 'utf8' },
      );
      expect(r).toBe('');
    });

    /** ExecStartPre and ExecStart of the unit, for this test's user, prefix and directories. */
    function unitCommands(pinRoot: string, pipeline: string) {
      const asUser = (word: string) => (word === 'rxflow' ? String(UID) : word);
      const pre = one(unit, 'ExecStartPre');
      expect(pre).toBe('+/usr/bin/install -d -o rxflow -g rxflow -m 0750 /sys/fs/bpf/rxflow');
      const preArgv = pre
        .slice(1)
        .split(' ')
        .map(asUser)
        .map((w) => (w === '/sys/fs/bpf/rxflow' ? pinRoot : w));
      const start = one(unit, 'ExecStart').split(' ');
      expect(start).toEqual(['/usr/local/bin/rxflow', 'run', '/etc/rxflow/pipeline.yaml']);
      const startArgv = [join(prefix, 'bin', 'rxflow'), 'run', pipeline];
      return { preArgv, startArgv };
    }

    /** setpriv as the unit: the user, exactly these capabilities, no new privileges, the umask. */
    function asService(
      argv: string[],
      capabilities = caps,
      netns: string | null = topo.server.name,
    ): string[] {
      return [
        ...(netns === null ? [] : [which('nsenter'), `--net=/run/netns/${netns}`, '--']),
        which('setpriv'),
        `--reuid=${UID}`,
        `--regid=${UID}`,
        '--clear-groups',
        `--inh-caps=-all,${capabilities}`,
        `--ambient-caps=-all,${capabilities}`,
        `--bounding-set=-all,${capabilities}`,
        '--no-new-privs',
        '--',
        which('sh'),
        '-c',
        'umask "$0" && exec "$@"',
        one(unit, 'UMask'),
        ...argv,
      ];
    }

    function serviceDirs(name: string) {
      const base = join(work, name);
      const runDir = join(base, 'run');
      const stateDir = join(base, 'state');
      for (const dir of [base, runDir, stateDir]) mkdirSync(dir, { mode: 0o750 });
      chmodSync(base, 0o755);
      for (const dir of [runDir, stateDir]) chownSync(dir, UID, UID);
      // The unit's configuration file: the pipeline the package ships for it.
      const pipeline = join(base, 'pipeline.yaml');
      cpSync(join(prefix, 'lib', 'node_modules', 'rxflow', 'pipelines', 'host-flows.yaml'), pipeline);
      chmodSync(pipeline, 0o644);
      const pinRoot = join(bpffs, name);
      const { preArgv, startArgv } = unitCommands(pinRoot, pipeline);
      execFileSync(preArgv[0]!, preArgv.slice(1));
      const env = {
        PATH: `${join(prefix, 'bin')}:${join(work, 'bin')}`,
        RXFLOW_RUN_DIR: runDir,
        RXFLOW_INTERFACES: topo.link.b.ifname,
        RXFLOW_PIN_ROOT: pinRoot,
        RXFLOW_FLOWS_FILE: join(stateDir, 'flows.jsonl'),
      };
      return { runDir, stateDir, pinRoot, startArgv, env };
    }

    it('runs ebpf_flows as uid 65534 with the unit capabilities and no compiler: exact counts of a netns pair in the file sink', async () => {
      const dirs = serviceDirs('run');
      for (const compiler of ['clang', 'gcc', 'cc']) {
        for (const dir of dirs.env.PATH.split(':')) expect(existsSync(join(dir, compiler))).toBe(false);
      }
      const version = execFileSync(join(prefix, 'bin', 'rxflow'), ['--version'], {
        env: dirs.env,
        encoding: 'utf8',
      });
      const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
      expect(version).toBe(`${pkg.version}\n`);

      const agent = new Agent(asService(dirs.startArgv), dirs.env);
      await agent.until(() => agent.logs().some((l) => l.msg === 'ready'), "the 'ready' log");
      expect(process.getuid?.()).toBe(0);
      const status = readFileSync(`/proc/${agent.logs()[0]!.pid as number}/status`, 'utf8');
      expect(status).toMatch(new RegExp(`^Uid:\\s+${UID}\\s+${UID}\\s+${UID}\\s+${UID}$`, 'm'));
      expect(status).toMatch(/^NoNewPrivs:\s+1$/m);
      // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39) and nothing else.
      const want = ((1n << 12n) | (1n << 38n) | (1n << 39n)).toString(16).padStart(16, '0');
      for (const set of ['CapEff', 'CapPrm', 'CapAmb', 'CapBnd']) {
        expect(status).toMatch(new RegExp(`^${set}:\\s+${want}$`, 'm'));
      }
      // The socket and the pins are the user's (and the group's, for the socket) only.
      const socket = statSync(join(dirs.runDir, 'pipeline.sock'));
      expect([socket.uid, socket.mode & 0o777]).toEqual([UID, 0o660]);
      const pins = statSync(join(dirs.pinRoot, 'rxflow-default'));
      expect([pins.uid, pins.mode & 0o777]).toEqual([UID, 0o700]);

      const sink = await startUdpSink({ ns: topo.server, port: 6201, family: 4, count: 40 });
      const udp = await sendUdp({
        from: topo.client,
        to: topo.link.b.ipv4!,
        port: 6201,
        count: 40,
        payloadBytes: 100,
        srcPort: 41201,
      });
      expect((await sink.result).received).toBe(40);
      const echo = await ping({ from: topo.client, to: topo.link.b.ipv4!, count: 4, payloadBytes: 56 });
      agent.signal('SIGTERM');
      expect(await agent.exited).toEqual({ code: 0, signal: null });

      const file = join(dirs.stateDir, 'flows.jsonl');
      const stat = statSync(file);
      expect([stat.uid, stat.mode & 0o777]).toEqual([UID, 0o640]);
      const totals = new Map<string, { packets: number; bytes: number }>();
      for (const line of readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l !== '')) {
        const r = JSON.parse(line) as FlowLine;
        const key = `${r.protocolIdentifier} ${r.flowDirection === 0 ? 'ingress' : 'egress'} ${r.sourceIPv4Address}:${r.sourceTransportPort}>${r.destinationIPv4Address}:${r.destinationTransportPort}`;
        const t = totals.get(key) ?? { packets: 0, bytes: 0 };
        totals.set(key, {
          packets: t.packets + r.packetDeltaCount,
          bytes: t.bytes + r.layer2OctetDeltaCount,
        });
      }
      expect(Object.fromEntries(totals)).toEqual({
        '17 ingress 192.0.2.1:41201>192.0.2.2:6201': {
          packets: udp.sent,
          bytes: udp.sent * udpFrameBytes(4, 100),
        },
        '1 ingress 192.0.2.1:0>192.0.2.2:0': {
          packets: echo.transmitted,
          bytes: echo.transmitted * icmpFrameBytes(4, 56),
        },
        '1 egress 192.0.2.2:0>192.0.2.1:0': {
          packets: echo.received,
          bytes: echo.received * icmpFrameBytes(4, 56),
        },
      });
      expect(existsSync(join(dirs.runDir, 'pipeline.sock'))).toBe(false);
      expect(readdirSync(dirs.pinRoot)).toEqual([]);
    }, 60_000);

    it('needs each of the three capabilities, and CAP_SYS_ADMIN as well to enter a namespace with netns:', async () => {
      const dirs = serviceDirs('fewer');
      const object = join(prefix, 'lib', 'node_modules', 'rxflow', 'bpf', 'flow.o');
      const ambient = one(unit, 'AmbientCapabilities').split(/\s+/);
      expect(ambient).toEqual(['CAP_BPF', 'CAP_NET_ADMIN', 'CAP_PERFMON']);
      const grant =
        'operation not permitted (EPERM); run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON';
      const load = `run sources.flows (ebpf_flows): load ${object}:`;
      const reasons: Record<string, string> = {
        CAP_BPF: `${load} create inner map template of flow_maps: ${grant}`,
        CAP_NET_ADMIN: `${load} ${grant}`,
        CAP_PERFMON: `${load} the verifier rejected program 'flow_ingress'; fix the program, the log ends with:`,
      };
      for (const missing of ambient) {
        const agent = new Agent(
          asService(dirs.startArgv, setprivCaps(ambient.filter((c) => c !== missing))),
          dirs.env,
        );
        expect(await agent.exited, `without ${missing}`).toEqual({ code: 1, signal: null });
        expect(agent.stderr.split('\n'), `without ${missing}`).toContain(reasons[missing]);
      }
      // No map or link stays pinned (a failed load leaves the empty directories it made).
      expect(pinned(dirs.pinRoot)).toEqual([]);

      // The agent in the host's namespace, entering the server's with `netns:`.
      const inNetns = join(work, 'fewer', 'netns.yaml');
      cpSync(join(work, 'fewer', 'pipeline.yaml'), inNetns);
      const text = readFileSync(inNetns, 'utf8').replace(
        '    type: ebpf_flows\n',
        `    type: ebpf_flows\n    netns: ${topo.server.name}\n`,
      );
      writeFileSync(inNetns, text);
      const argv = [dirs.startArgv[0]!, 'run', inNetns];
      const denied = new Agent(asService(argv, caps, null), dirs.env);
      expect(await denied.exited).toEqual({ code: 1, signal: null });
      expect(denied.stderr.split('\n')).toContain(
        `run sources.flows (ebpf_flows): enter network namespace ${topo.server.name}: operation not permitted (EPERM); run as root or grant CAP_SYS_ADMIN`,
      );
      // Every namespace with `netns: all`: the server's is among them, so the start fails the same way.
      const inAll = join(work, 'fewer', 'all.yaml');
      writeFileSync(inAll, text.replace(`netns: ${topo.server.name}\n`, 'netns: all\n'));
      const deniedAll = new Agent(asService([dirs.startArgv[0]!, 'run', inAll], caps, null), dirs.env);
      expect(await deniedAll.exited).toEqual({ code: 1, signal: null });
      expect(deniedAll.stderr.split('\n')).toContainEqual(
        expect.stringMatching(
          /^run sources\.flows \(ebpf_flows\): enter network namespace \S+: operation not permitted \(EPERM\); run as root or grant CAP_SYS_ADMIN$/,
        ),
      );
      expect(pinned(dirs.pinRoot)).toEqual([]);
      const allowed = new Agent(asService(argv, `${caps},+sys_admin`, null), dirs.env);
      await allowed.until(() => allowed.logs().some((l) => l.msg === 'ready'), "the 'ready' log");
      allowed.signal('SIGTERM');
      expect(await allowed.exited).toEqual({ code: 0, signal: null });
      expect(pinned(dirs.pinRoot)).toEqual([]);
    }, 60_000);
  },
  ['npm', 'setpriv', 'nsenter', 'unshare', 'systemd-analyze'],
);
