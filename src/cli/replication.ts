/**
 * `rxflow firewall replication status`: how far a node's kernel session map and the KV bucket
 * agree. Two ways to ask:
 * - `--url http://host:port` asks the running node (the nats_sessions sink's ready_listen) for its
 *   status: its kernel map compared with the bucket now, last sync time, replication lag, pending
 *   writes, and what
 *   its watch of the bucket applied from other nodes (applied, ignored and why, watch lag);
 * - `--nats <url>` compares the pinned session map of this host with the bucket right now, from
 *   outside (no lag or last sync: only the running node knows those).
 */
import { Option, type Command } from 'commander';
import { hostname } from 'node:os';
import { FirewallCollection, firewallPinDir } from '../datapath/firewall/index.js';
import { FirewallSessionStore, ipLinkTable } from '../ha/firewall-store.js';
import { inspectReplication, type Inspection } from '../ha/inspect.js';
import { NatsSessionKv, connectNats, type NatsConnectOptions } from '../ha/kv.js';
import type { NodeReplicationStatus } from '../ha/replication.js';
import type { WatchStatus } from '../ha/watch.js';
import { silentLogger } from '../logger.js';
import { CliError } from './errors.js';
import type { CliIo } from './io.js';
import type { Env } from '../config/interpolate.js';
import { readSecretFile } from '../pipeline/secrets.js';
import { registerSecret, registerUrlSecrets } from '../redact.js';
import { formatCount, formatDuration, renderTable } from './table.js';

interface StatusOptions {
  url?: string;
  nats?: string[];
  bucket: string;
  nodeId: string;
  instance: string;
  pinRoot: string;
  netns?: string;
  credentialsFile?: string;
  user?: string;
  passwordFile?: string;
  tokenFile?: string;
  /** Refused: given only to say where a secret goes instead. */
  password?: string;
  token?: string;
  timeoutMs: number;
  json?: boolean;
}

function rows(pairs: [string, string][]): string {
  return `${renderTable([{ title: 'REPLICATION' }, { title: '' }], pairs)
    .slice(1)
    .join('\n')}\n`;
}

/** The running node's status as a two-column table. */
export function formatNodeStatus(s: NodeReplicationStatus, nowMs: number): string {
  const c = s.counts;
  const n = (v: number | undefined): string => (v === undefined ? '-' : formatCount(v));
  const pairs: [string, string][] = [
    ['node', s.nodeId],
    ['bucket', s.bucket],
    ['ready', s.ready ? 'yes' : 'no'],
    ['connected', s.connected ? 'yes' : 'no'],
    ['local sessions', n(c?.local)],
    ['kv keys', n(c?.kv)],
    ['in both', n(c?.both)],
    ['only local', n(c?.onlyLocal)],
    [
      'only kv',
      c === undefined ? '-' : `${formatCount(c.onlyKv)} (${formatCount(c.onlyKvOtherNodes)} of other nodes)`,
    ],
    [
      'last sync',
      s.lastSync === undefined
        ? `never${s.lastSyncError ? ` (${s.lastSyncError})` : ''}`
        : `${new Date(s.lastSync.atMs).toISOString()} (${formatDuration(Math.max(0, nowMs - s.lastSync.atMs))} ago, repaired ${s.lastSync.puts} puts, ${s.lastSync.deletes} deletes)`,
    ],
    ['replication lag', `${formatCount(s.lagMs)} ms`],
    ['pending writes', `${formatCount(s.pending)} (${formatCount(s.inFlight)} in flight)`],
    [
      'written',
      `${formatCount(s.puts)} puts, ${formatCount(s.deletes)} deletes, ${formatCount(s.failedWrites)} failed`,
    ],
  ];
  if (s.comparedAtMs !== undefined) {
    pairs.splice(pairs.length - 3, 0, [
      'compared',
      `${new Date(s.comparedAtMs).toISOString()} (kernel map read and compared with the bucket ${s.compareSource === 'watch' ? 'as watched' : 'as read'} in ${formatCount(s.compareMs ?? 0)} ms)`,
    ]);
  } else if (s.compareError !== undefined) {
    pairs.splice(pairs.length - 3, 0, [
      'compared',
      `counts of the last sync: bucket not read now (${s.compareError})`,
    ]);
  }
  pairs.push(...watchRows(s.watch));
  if (s.load !== undefined) pairs.push(['loaded on boot', formatCount(s.load.loaded)]);
  return rows(pairs);
}

/** What the watch of the bucket did: other nodes' changes applied to this kernel as they arrived. */
function watchRows(w: WatchStatus | undefined): [string, string][] {
  if (w === undefined) return [['watch', 'off']];
  const state = w.active ? 'on' : `setting up${w.lastError === undefined ? '' : ` (${w.lastError})`}`;
  const by = w.ignoredBy;
  return [
    ['watch', `${state}, at revision ${formatCount(w.revision)}, set up ${formatCount(w.starts)} times`],
    [
      'remote applied',
      `${formatCount(w.applied)} (${formatCount(w.appliedDeletes)} deletes), ${formatCount(w.failed)} failed`,
    ],
    [
      'remote ignored',
      `${formatCount(w.ignored)}: ${formatCount(by.own)} own, ${formatCount(by.localNewer)} local newer, ${formatCount(by.unreadable)} unreadable, ${formatCount(by.absent)} absent, ${formatCount(by.superseded)} superseded`,
    ],
    [
      'watch lag',
      `${formatCount(w.lagMs)} ms (${formatCount(w.pending)} pending, ${formatCount(w.backlog)} on the server)`,
    ],
  ];
}

/** A comparison made from outside the node as a two-column table. */
export function formatInspection(i: Inspection, nodeId: string, bucket: string): string {
  const c = i.counts;
  return rows([
    ['node', nodeId],
    ['bucket', bucket],
    ['local sessions', formatCount(c.local)],
    ['kv keys', formatCount(c.kv)],
    ['in both', formatCount(c.both)],
    ['only local', formatCount(c.onlyLocal)],
    ['only kv', `${formatCount(c.onlyKv)} (${formatCount(c.onlyKvOtherNodes)} of other nodes)`],
    ['a sync would', `write ${formatCount(i.wouldPut)}, delete ${formatCount(i.wouldDelete)}`],
    ['last sync, lag', 'known to the running node only: use --url'],
  ]);
}

async function fromNode(url: string, timeoutMs: number): Promise<NodeReplicationStatus> {
  const target = `${url.replace(/\/+$/, '')}/status`;
  let res: Response;
  try {
    res = await fetch(target, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    throw new CliError(
      'ESTATUS',
      `replication status ${target}: ${(err as Error).message}; check that the node runs a nats_sessions sink with ready_listen at that address`,
      { cause: err },
    );
  }
  if (!res.ok) throw new CliError('ESTATUS', `replication status ${target}: HTTP ${res.status}`);
  return (await res.json()) as NodeReplicationStatus;
}

/** Environment variables the NATS password and token are read from: argv is visible to every user (ps). */
export const PASSWORD_ENV = 'RXFLOW_NATS_PASSWORD';
export const TOKEN_ENV = 'RXFLOW_NATS_TOKEN';

/** A secret from its file or environment variable; the file wins, an empty value is none. */
function secretOf(file: string | undefined, variable: string, env: Env): string | undefined {
  let value: string | undefined;
  if (file !== undefined) {
    try {
      value = readSecretFile(file);
    } catch (err) {
      throw new CliError('EUSAGE', `replication status: ${(err as Error).message}`, { cause: err });
    }
  } else {
    value = env[variable] === '' ? undefined : env[variable];
  }
  if (value !== undefined) registerSecret(value);
  return value;
}

async function fromOutside(o: StatusOptions, env: Env): Promise<Inspection> {
  const fw = FirewallCollection.open(firewallPinDir(o.instance, o.pinRoot));
  try {
    for (const server of o.nats!) registerUrlSecrets(server);
    const nats: NatsConnectOptions = {
      servers: o.nats!,
      name: 'rxflow replication status',
      connectTimeoutMs: o.timeoutMs,
    };
    if (o.credentialsFile !== undefined) nats.credentialsFile = o.credentialsFile;
    if (o.user !== undefined) nats.user = o.user;
    const password = secretOf(o.passwordFile, PASSWORD_ENV, env);
    const token = secretOf(o.tokenFile, TOKEN_ENV, env);
    if (password !== undefined) nats.password = password;
    if (token !== undefined) nats.token = token;
    // One attempt: a status command should not wait for a server that is away.
    const nc = await connectNats(nats, { signal: AbortSignal.abort() });
    try {
      const kv = await NatsSessionKv.open(
        nc,
        { bucket: o.bucket, replicas: 1, history: 1, ttlMs: 0, requestTimeoutMs: o.timeoutMs },
        silentLogger(),
        { bindOnly: true },
      );
      try {
        return await inspectReplication(new FirewallSessionStore(fw, ipLinkTable(o.netns)), kv, o.nodeId);
      } finally {
        await kv.close();
      }
    } finally {
      await nc.close();
    }
  } finally {
    fw.close({ keepAttached: true });
  }
}

/** Registers `replication status` under the `firewall` command. */
export function registerReplicationCommands(firewallCommand: Command, io: CliIo): Command {
  const replication = firewallCommand
    .command('replication')
    .description('HA session replication to NATS JetStream KV (the nats_sessions sink).');
  replication
    .command('status')
    .description(
      'Compare the kernel session map with the KV bucket: counts, only-local, only-KV; with --url also last sync, replication lag and the watch of changes from other nodes.',
    )
    .option('--url <url>', 'the running node: http://<ready_listen of its nats_sessions sink>')
    .option('--nats <url...>', 'compare from outside: NATS server(s) of the bucket')
    .option('--bucket <name>', 'KV bucket (with --nats)', 'rxflow_sessions')
    .option('--node-id <id>', "this node's id (with --nats)", hostname())
    .addOption(
      new Option('--instance <name>', 'firewall instance (with --nats)').default(
        io.env.RXFLOW_FIREWALL_INSTANCE ?? 'default',
      ),
    )
    .option('--pin-root <dir>', 'a bpffs mount (with --nats)', '/sys/fs/bpf')
    .option('--netns <name>', "network namespace of the firewall's devices (with --nats)")
    .option('--credentials-file <file>', 'NATS .creds file (with --nats)')
    .option('--user <name>', 'NATS user (with --nats)')
    .option('--password-file <file>', `file holding the NATS password (with --nats; else $${PASSWORD_ENV})`)
    .option('--token-file <file>', `file holding the NATS token (with --nats; else $${TOKEN_ENV})`)
    // Secrets on the command line are visible to every local user (ps, /proc/<pid>/cmdline).
    .addOption(new Option('--password <password>').hideHelp())
    .addOption(new Option('--token <token>').hideHelp())
    .addOption(
      new Option('--timeout-ms <ms>', 'how long to wait for an answer').default(5000).argParser(Number),
    )
    .option('--json', 'print JSON')
    .action(async (o: StatusOptions, command: Command) => {
      for (const [given, name, variable] of [
        [o.password, 'password', PASSWORD_ENV],
        [o.token, 'token', TOKEN_ENV],
      ] as const) {
        if (given !== undefined) {
          command.error(
            `replication status: --${name} would show the ${name} to every user of this host (ps); set $${variable} or give --${name}-file <file>`,
            { exitCode: 2, code: 'rxflow.secretOnCommandLine' },
          );
        }
      }
      if ((o.url === undefined) === (o.nats === undefined)) {
        throw new CliError(
          'EUSAGE',
          'replication status: give --url <node status address> or --nats <server url>; see --help',
        );
      }
      if (o.url !== undefined) {
        const s = await fromNode(o.url, o.timeoutMs);
        io.out(o.json ? `${JSON.stringify(s, null, 2)}\n` : formatNodeStatus(s, Date.now()));
        return;
      }
      const i = await fromOutside(o, io.env);
      io.out(
        o.json
          ? `${JSON.stringify({ nodeId: o.nodeId, bucket: o.bucket, ...i }, null, 2)}\n`
          : formatInspection(i, o.nodeId, o.bucket),
      );
    });
  return replication;
}
