/**
 * `rxflow firewall`: load the firewall programs and leave them attached (their maps and links are
 * pinned, so they outlive the command), and inspect or change a loaded firewall through its pins:
 * status, sessions, settings, counters. Failures throw; the program prints `rxflow: <message>` and
 * exits 1.
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import { existsSync } from 'node:fs';
import {
  FirewallCollection,
  SESSION,
  SESSION_KEY,
  TUNNEL_MODES,
  firewallPinDir,
  type FirewallCounters,
  type SessionListing,
  type TunnelType,
} from '../datapath/firewall/index.js';
import { FirewallError } from '../config/firewall-errors.js';
import { parseSetting, parseSettings, resolveSetting, SETTINGS } from '../config/firewall-settings.js';
import { loadPolicyFile } from '../config/firewall-policy.js';
import { protocolName } from '../net/protocols.js';
import { beyondLockable, formatBytes as formatSize, machineMemory } from '../pipeline/resources.js';
import type { CliIo } from './io.js';
import { formatBytes, formatCount, formatDuration, renderTable } from './table.js';

interface CommonOptions {
  instance: string;
  pinRoot: string;
}

function parsePort(text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) > 65535)
    throw new InvalidArgumentError('give a port from 0 to 65535');
  return Number(text);
}

function parsePositive(text: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1)
    throw new InvalidArgumentError('give a whole number of at least 1');
  return Number(text);
}

/** The most entries the kernel takes in a map (max_entries is a u32). */
const MAX_MAP_ENTRIES = 0xffffffff;

/**
 * --max-sessions: a whole number the session map can have, whose memory the machine can lock.
 * The map is allocated whole when the firewall loads; refused here, nothing is loaded and the
 * user reads the estimate instead of waiting on the kernel or the OOM killer.
 */
function parseSessions(text: string): number {
  const n = parsePositive(text);
  if (n > MAX_MAP_ENTRIES) throw new InvalidArgumentError(`give at most ${MAX_MAP_ENTRIES}`);
  const perEntry = SESSION.size + SESSION_KEY.size;
  const bytes = n * perEntry;
  const beyond = beyondLockable(bytes, machineMemory(), 'a firewall');
  if (beyond !== undefined) {
    throw new InvalidArgumentError(
      `${n} sessions would lock about ${formatSize(bytes)} (${n} entries x (${SESSION.size} bytes of session + ${SESSION_KEY.size} bytes of key)), ${beyond}`,
    );
  }
  return n;
}

function collectSetting(text: string, previous: [string, string][]): [string, string][] {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError('give name=value, e.g. enforcement=off');
  return [...previous, [text.slice(0, eq), text.slice(eq + 1)]];
}

/** Adds --instance and --pin-root, which every subcommand takes. */
function common(cmd: Command, io: CliIo): Command {
  return cmd
    .addOption(
      new Option(
        '--instance <name>',
        'firewall instance: its pins are <pin-root>/rxflow-firewall-<name>',
      ).default(io.env.RXFLOW_FIREWALL_INSTANCE ?? 'default'),
    )
    .addOption(new Option('--pin-root <dir>', 'a bpffs mount').default('/sys/fs/bpf'));
}

function pinDirOf(o: CommonOptions): string {
  return firewallPinDir(o.instance, o.pinRoot);
}

function withOpened<T>(o: CommonOptions, fn: (fw: FirewallCollection) => T): T {
  const fw = FirewallCollection.open(pinDirOf(o));
  try {
    return fn(fw);
  } finally {
    fw.close();
  }
}

function json(value: unknown): string {
  return `${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`;
}

function endpoint(addr: string, port: number): string {
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

export function formatSessions(sessions: readonly SessionListing[]): string {
  const rows = sessions.map((s) => [
    protocolName(s.protocol),
    endpoint(s.srcAddr, s.srcPort),
    endpoint(s.dstAddr, s.dstPort),
    s.tcpState === 'none' ? '-' : s.tcpState,
    formatDuration(s.ageMs),
    formatDuration(s.idleMs),
    s.tunnel === 'none' ? '-' : s.tunnel,
    s.tunnel === 'none' ? '-' : String(s.vni),
    formatCount(s.packetsForward),
    formatBytes(s.bytesForward),
    formatCount(s.packetsReverse),
    formatBytes(s.bytesReverse),
  ]);
  const r = 'right' as const;
  const table = renderTable(
    [
      { title: 'PROTO' },
      { title: 'SOURCE' },
      { title: 'DESTINATION' },
      { title: 'STATE' },
      { title: 'AGE', align: r },
      { title: 'IDLE', align: r },
      { title: 'TUNNEL' },
      { title: 'VNI', align: r },
      { title: 'PKTS FWD', align: r },
      { title: 'BYTES FWD', align: r },
      { title: 'PKTS REV', align: r },
      { title: 'BYTES REV', align: r },
    ],
    rows,
  );
  return `${table.join('\n')}\n${formatCount(sessions.length)} session${sessions.length === 1 ? '' : 's'}\n`;
}

export function formatCounters(c: FirewallCounters): string {
  const rows = Object.entries(c).map(([name, n]) => [name, formatCount(n)]);
  return `${renderTable([{ title: 'COUNTER' }, { title: 'PACKETS', align: 'right' }], rows).join('\n')}\n`;
}

/** Registers `firewall` and its subcommands on the rxflow program. */
export function registerFirewallCommands(program: Command, io: CliIo): Command {
  const fw = program
    .command('firewall')
    .description('Load the firewall on TC and inspect it: status, sessions, settings, counters.');

  common(fw.command('load'), io)
    .description(
      'Load the firewall programs (or reload them over the pinned maps, keeping sessions and settings), apply a policy file, and leave them attached after exit.',
    )
    .requiredOption('--ingress <device>', 'device whose TC ingress runs the firewall')
    .option(
      '--egress <device>',
      'device whose TC egress runs the firewall; the default redirect target (default: the ingress device)',
    )
    .option(
      '--address <ip>',
      "the firewall's own address: tunnel traffic is decapsulated only when sent to it",
    )
    .addOption(
      new Option('--tunnel <mode>', 'tunnel mode (geneve also turns hairpin on)').choices(TUNNEL_MODES),
    )
    .option('--policy <file>', 'policy YAML to apply (in place: established sessions stay)')
    .option('--netns <name>', "network namespace of the devices ('ip netns' name)")
    .addOption(
      new Option(
        '--max-sessions <n>',
        'session map capacity (on first load); checked against the memory the machine can lock',
      ).argParser(parseSessions),
    )
    .addOption(
      new Option('--set <name=value>', 'a setting, e.g. enforcement=off; repeatable')
        .argParser(collectSetting)
        .default([]),
    )
    .action(
      async (
        o: CommonOptions & {
          ingress: string;
          egress?: string;
          address?: string;
          tunnel?: TunnelType;
          policy?: string;
          netns?: string;
          maxSessions?: number;
          set: [string, string][];
        },
      ) => {
        // Read and checked before anything touches the kernel.
        const policy = o.policy === undefined ? undefined : await loadPolicyFile(o.policy, io.env);
        const settings = parseSettings(Object.fromEntries(o.set));
        // A first load that fails (a policy naming a missing interface) leaves no pins behind; a
        // reload over existing pins keeps them.
        const fresh = !existsSync(pinDirOf(o));
        const firewall = FirewallCollection.load({
          pinDir: pinDirOf(o),
          ingress: o.ingress,
          ...(o.egress !== undefined ? { egress: o.egress } : {}),
          ...(o.address !== undefined ? { address: o.address } : {}),
          ...(o.tunnel !== undefined ? { tunnelMode: o.tunnel } : {}),
          ...(o.netns !== undefined ? { netns: o.netns } : {}),
          ...(o.maxSessions !== undefined ? { maxSessions: o.maxSessions } : {}),
          settings,
        });
        let keepAttached = false;
        try {
          const applied = policy === undefined ? undefined : firewall.applyPolicy(policy);
          const links = firewall.attach();
          keepAttached = true;
          io.out(
            `firewall loaded at ${firewall.pinDir}: ${links.map((l) => `${l.ifname} ${l.direction} (${l.mode})`).join(', ')}\n`,
          );
          if (applied !== undefined) {
            io.out(
              `policy ${o.policy}: ${applied.networks} networks, ${applied.policies} policies, ${applied.rules} rule entries; ${applied.written} written, ${applied.removed} removed\n`,
            );
          }
        } finally {
          firewall.close({ keepAttached, unpin: !keepAttached && fresh });
        }
      },
    );

  common(fw.command('unload'), io)
    .description('Detach the firewall and remove its pins: maps, sessions and links.')
    .action((o: CommonOptions) => {
      const dir = pinDirOf(o);
      if (!FirewallCollection.unload(dir)) {
        throw new FirewallError(
          'ENOTLOADED',
          `unload firewall: nothing is loaded at ${dir}; check --instance and --pin-root`,
        );
      }
      io.out(`firewall at ${dir} unloaded\n`);
    });

  common(fw.command('status'), io)
    .description(
      'Print where the firewall is attached, its settings, and how many networks, rules and sessions it holds.',
    )
    .option('--json', 'print JSON')
    .action((o: CommonOptions & { json?: boolean }) => {
      const s = withOpened(o, (f) => f.status());
      if (o.json) {
        io.out(json(s));
        return;
      }
      const lines = [
        `pins:      ${s.pinDir}`,
        `attached:  ${s.links.length > 0 ? s.links.join(', ') : 'no (load it with rxflow firewall load)'}`,
        `devices:   ingress ifindex ${s.config.ingressIfindex}, egress ifindex ${s.config.egressIfindex}`,
        `address:   ${s.config.ingressAddress || 'any'}`,
        `policy:    ${s.networks} networks, ${s.policies} policies, ${s.rules} rule entries`,
        `sessions:  ${formatCount(s.sessions)} of ${formatCount(s.maxSessions)}`,
        'settings:',
        ...renderTable(
          [{ title: 'KEY', align: 'right' }, { title: 'NAME' }, { title: 'VALUE' }],
          s.settings.map((v) => [String(v.key), v.name, v.text]),
        ).map((l) => `  ${l}`),
      ];
      io.out(`${lines.join('\n')}\n`);
    });

  common(fw.command('sessions'), io)
    .description(
      'List sessions: addresses, ports, protocol, TCP state, age, tunnel, VNI, packets and bytes each way.',
    )
    .option('--src <ip|cidr>', "the initiator's address or prefix")
    .option('--dst <ip|cidr>', "the responder's address or prefix")
    .addOption(new Option('--port <port>', 'either port of the session').argParser(parsePort))
    .option('--json', 'print JSON')
    .action((o: CommonOptions & { src?: string; dst?: string; port?: number; json?: boolean }) => {
      const filter = {
        ...(o.src !== undefined ? { src: o.src } : {}),
        ...(o.dst !== undefined ? { dst: o.dst } : {}),
        ...(o.port !== undefined ? { port: o.port } : {}),
      };
      const list = withOpened(o, (f) => f.listSessions(filter));
      io.out(o.json ? json(list) : formatSessions(list));
    });

  const settings = fw
    .command('settings')
    .description('Read or change the named settings; each has a numeric key too.');
  common(settings.command('get'), io)
    .description('Print one setting (by name or key), or all of them.')
    .argument('[setting]', `a name (${SETTINGS.map((s) => s.name).join(', ')}) or key`)
    .option('--json', 'print JSON')
    .action((ref: string | undefined, o: CommonOptions & { json?: boolean }) => {
      const values = withOpened(o, (f) =>
        ref === undefined ? f.settings() : [f.getSetting(resolveSetting(ref))],
      );
      if (o.json) {
        io.out(json(ref === undefined ? values : values[0]));
        return;
      }
      if (ref !== undefined) {
        io.out(`${values[0]!.text}\n`);
        return;
      }
      const table = renderTable(
        [{ title: 'KEY', align: 'right' }, { title: 'NAME' }, { title: 'VALUE' }, { title: 'DESCRIPTION' }],
        values.map((v) => [String(v.key), v.name, v.text, v.description]),
      );
      io.out(`${table.join('\n')}\n`);
    });
  common(settings.command('set'), io)
    .description('Change a setting (by name or key); it applies to the next packet.')
    .argument('<setting>', 'a name or key')
    .argument('<value>', 'a value name (on, off, geneve, ...) or a number')
    .action((ref: string, value: string, o: CommonOptions) => {
      const v = withOpened(o, (f) => f.setSetting(parseSetting(ref, value)));
      io.out(`${v.name} (${v.key}) = ${v.text}\n`);
    });

  common(fw.command('counters'), io)
    .description(
      'Print packets by verdict and the loss counters, summed over CPUs, since the firewall was first loaded.',
    )
    .option('--json', 'print JSON')
    .action((o: CommonOptions & { json?: boolean }) => {
      const c = withOpened(o, (f) => f.counters());
      io.out(o.json ? json(c) : formatCounters(c));
    });

  return fw;
}
