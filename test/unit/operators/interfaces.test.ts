import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { Subject, filter, firstValueFrom, timeout } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { StageCounters } from '../../../src/ledger.js';
import {
  InterfaceWatcher,
  monitorListening,
  parseMonitorLine,
  readInterfaceTable,
  resolveLabel,
  type LinkChange,
} from '../../../src/net/interfaces.js';
import { decorate } from '../../../src/operators/decorate.js';
import type { FlowBatch, FlowRecord } from '../../../src/records/flow.js';
import { cleanup, deleteLinkSync, makeTempDir, resourceName, runSync } from '../../fixtures/cleanup.js';
import { describeWith } from '../../fixtures/privilege.js';

const PREFIX = 'rxop';

function rec(ifindex: number): FlowRecord {
  return {
    ipVersion: 4,
    sourceIPv4Address: '10.0.0.1',
    destinationIPv4Address: '10.0.0.2',
    sourceTransportPort: 40000,
    destinationTransportPort: 443,
    protocolIdentifier: 6,
    octetDeltaCount: 100,
    packetDeltaCount: 1,
    flowStartMilliseconds: 0,
    flowEndMilliseconds: 0,
    tcpControlBits: 0,
    ipDiffServCodePoint: 0,
    ingressInterface: ifindex,
    flowDirection: 0,
    sourceMacAddress: '02:00:00:00:00:01',
    destinationMacAddress: '02:00:00:00:00:02',
    ethernetType: 0x0800,
  };
}

/** A directory shaped like /sys/class/net: one subdirectory per link with an `ifindex` file. */
function fakeSysfs(scope: ReturnType<typeof cleanup.scope>, links: Record<string, number>): string {
  const root = makeTempDir(PREFIX, scope);
  for (const [name, ifindex] of Object.entries(links)) addLink(root, name, ifindex);
  return root;
}

function addLink(root: string, name: string, ifindex: number): void {
  mkdirSync(join(root, name));
  writeFileSync(join(root, name, 'ifindex'), `${ifindex}\n`);
}

/** Resolves with the first change matching `pred`, or rejects after 5 s. */
function nextChange(w: InterfaceWatcher, pred: (c: LinkChange) => boolean): Promise<LinkChange> {
  return firstValueFrom(w.changes.pipe(filter(pred), timeout(5000)));
}

let scope = cleanup.scope();
afterEach(async () => {
  const done = scope;
  scope = cleanup.scope();
  await done.dispose();
});

describe('parseMonitorLine', () => {
  // Lines as `ip -o monitor link` (iproute2 6.1) printed them for a veth pair: create, rename, delete.
  it('reads ifindex, label and deletion from real monitor lines', () => {
    expect(
      parseMonitorLine(
        '6: rxopt0@rxopt0p: <BROADCAST,MULTICAST,M-DOWN> mtu 1500 qdisc noop state DOWN group default \\    link/ether a6:7e:8f:c4:90:4f brd ff:ff:ff:ff:ff:ff',
      ),
    ).toEqual({ ifindex: 6, label: 'rxopt0@rxopt0p', deleted: false });
    expect(
      parseMonitorLine(
        'Deleted 6: rxopt1@NONE: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN group default \\    link/ether a6:7e:8f:c4:90:4f brd ff:ff:ff:ff:ff:ff',
      ),
    ).toEqual({ ifindex: 6, label: 'rxopt1@NONE', deleted: true });
    expect(parseMonitorLine('12: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500')).toEqual({
      ifindex: 12,
      label: 'eth0',
      deleted: false,
    });
    expect(parseMonitorLine('')).toBeUndefined();
    expect(parseMonitorLine('    link/ether a6:7e:8f:c4:90:4f brd ff:ff:ff:ff:ff:ff')).toBeUndefined();
  });

  it("tells a peer suffix from an '@' inside the name by asking sysfs", () => {
    const root = fakeSysfs(scope, { veth0: 6, 'we@ird': 7 });
    expect(resolveLabel({ ifindex: 6, label: 'veth0@veth1', deleted: false }, root)).toBe('veth0');
    expect(resolveLabel({ ifindex: 7, label: 'we@ird', deleted: false }, root)).toBe('we@ird');
    expect(resolveLabel({ ifindex: 8, label: 'gone@if3', deleted: false }, root)).toBe('gone');
    expect(resolveLabel({ ifindex: 9, label: 'plain', deleted: false }, root)).toBe('plain');
  });
});

describe('readInterfaceTable', () => {
  it('reads the same table as ip -j link show', () => {
    const ipTable = () =>
      new Map(
        (JSON.parse(runSync('ip', ['-j', 'link', 'show'])) as { ifindex: number; ifname: string }[]).map(
          (l) => [l.ifindex, l.ifname],
        ),
      );
    // Other tests on this host add and remove links; compare during a window where ip saw no change.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const before = ipTable();
      const table = readInterfaceTable();
      const after = ipTable();
      if (JSON.stringify([...before]) === JSON.stringify([...after])) {
        expect(table).toEqual(before);
        expect(table.get(1)).toBe('lo');
        return;
      }
      if (Date.now() > deadline) throw new Error('links kept changing for 10 s; cannot compare the tables');
    }
  });

  it('says what to do when the directory cannot be read', () => {
    expect(() => readInterfaceTable('/nonexistent-rxop')).toThrow(
      "read interfaces from /nonexistent-rxop: ENOENT: no such file or directory, scandir '/nonexistent-rxop'; mount sysfs or give the agent access to it",
    );
  });
});

describe('InterfaceWatcher without the monitor', () => {
  it('re-reads the table on an unknown ifindex at most once per second', () => {
    const root = fakeSysfs(scope, { lo: 1, eth0: 2 });
    let now = 0;
    const w = InterfaceWatcher.open({ sysfsRoot: root, watch: false, now: () => now });
    const changes: LinkChange[] = [];
    w.changes.subscribe((c) => changes.push(c));
    expect(w.reads).toBe(1);
    expect([w.name(1), w.name(2)]).toEqual(['lo', 'eth0']);
    addLink(root, 'eth1', 3);
    now = 999;
    expect(w.name(3)).toBeUndefined();
    expect(w.reads).toBe(1);
    now = 1000;
    expect(w.name(3)).toBe('eth1');
    expect(w.reads).toBe(2);
    // A known ifindex never re-reads; an unknown one waits for the next second.
    renameSync(join(root, 'eth0'), join(root, 'wan0'));
    now = 1500;
    expect([w.name(2), w.name(42)]).toEqual(['eth0', undefined]);
    expect(w.reads).toBe(2);
    now = 2000;
    expect(w.name(42)).toBeUndefined();
    expect(w.reads).toBe(3);
    expect(w.name(2)).toBe('wan0');
    expect(changes).toEqual([
      { ifindex: 3, name: 'eth1', via: 'reread' },
      { ifindex: 2, name: 'wan0', via: 'reread' },
    ]);
    w.close();
    w.close();
  });

  it('falls back to re-reads, with a warning, when ip cannot be started', async () => {
    const root = fakeSysfs(scope, { lo: 1 });
    const logged: { level: number; msg: string }[] = [];
    const logger = pino(
      { level: 'info' },
      { write: (s: string) => logged.push(JSON.parse(s) as { level: number; msg: string }) },
    );
    const w = InterfaceWatcher.open({ sysfsRoot: root, ipCommand: '/nonexistent-rxop/ip', logger });
    await w.ready;
    expect(w.watching).toBe(false);
    expect(w.name(1)).toBe('lo');
    expect(logged.map((l) => [l.level, l.msg])).toEqual([
      [40, "interface monitor could not start; names of renamed links may be stale; install iproute2 ('ip')"],
    ]);
    w.close();
  });
});

describe('monitorListening', () => {
  it('reads /proc/net/netlink lines by pid and multicast groups', () => {
    const dir = makeTempDir(PREFIX, scope);
    const file = join(dir, 'netlink');
    writeFileSync(
      file,
      [
        'sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode',
        '00000000094dedbc 0   7677       00000001 0        0        0     2        0        10241',
        '00000000094dedbd 0   7678       00000000 0        0        0     2        0        10242',
        '00000000094dedbe 9   7679       00000001 0        0        0     2        0        10243',
      ].join('\n'),
    );
    expect([7677, 7678, 7679, 1].map((pid) => monitorListening(pid, file))).toEqual([
      true,
      false,
      false,
      false,
    ]);
    expect(monitorListening(7677, join(dir, 'missing'))).toBe(false);
    rmSync(file);
  });
});

describeWith({ root: true, commands: ['ip'] }, 'InterfaceWatcher on real links', () => {
  interface Veth {
    name: string;
    peer: string;
    renamed: string;
  }

  function vethNames(): Veth {
    const link = { name: resourceName(PREFIX), peer: resourceName(PREFIX), renamed: resourceName(PREFIX) };
    // Deleting either end of a veth removes both; the undo covers every name the test may leave.
    scope.register(`veth ${link.name}`, () => {
      for (const n of [link.name, link.renamed, link.peer]) deleteLinkSync(n);
    });
    return link;
  }

  /** Creates the pair and returns the ifindex of its first end. */
  function createVeth(link: Veth): number {
    runSync('ip', ['link', 'add', link.name, 'type', 'veth', 'peer', 'name', link.peer]);
    return Number(readFileSync(`/sys/class/net/${link.name}/ifindex`, 'utf8'));
  }

  it('follows a rename and a deletion reported by ip monitor', async () => {
    const w = InterfaceWatcher.open();
    scope.register('interface watcher', () => w.close());
    await w.ready;
    expect(w.watching).toBe(true);
    const link = vethNames();
    const created = nextChange(w, (c) => c.name === link.name);
    const ifindex = createVeth(link);
    expect(await created).toEqual({ ifindex, name: link.name, via: 'monitor' });
    const renamed = nextChange(w, (c) => c.ifindex === ifindex && c.name === link.renamed);
    runSync('ip', ['link', 'set', 'dev', link.name, 'name', link.renamed]);
    expect(await renamed).toEqual({ ifindex: ifindex, name: link.renamed, via: 'monitor' });
    expect(w.name(ifindex)).toBe(link.renamed);
    const deleted = nextChange(w, (c) => c.ifindex === ifindex && c.name === undefined);
    runSync('ip', ['link', 'del', 'dev', link.renamed]);
    expect(await deleted).toEqual({ ifindex: ifindex, name: undefined, via: 'monitor' });
    expect(w.name(ifindex)).toBeUndefined();
    w.close();
    expect(w.watching).toBe(false);
  });

  it('lets decorate name records by the current name of their interface', async () => {
    let watcher: InterfaceWatcher | undefined;
    const counters = new StageCounters('dec', 'decorate');
    const input = new Subject<FlowBatch>();
    const out: FlowBatch[] = [];
    const sub = input
      .pipe(decorate({ counters, interfaces: () => (watcher = InterfaceWatcher.open()) }))
      .subscribe((b) => out.push(b));
    scope.register('decorate subscription', () => sub.unsubscribe());
    await watcher!.ready;
    const link = vethNames();
    const created = nextChange(watcher!, (c) => c.name === link.name);
    const ifindex = createVeth(link);
    await created;
    input.next([rec(ifindex), rec(1)]);
    const renamed = nextChange(watcher!, (c) => c.ifindex === ifindex && c.name === link.renamed);
    runSync('ip', ['link', 'set', 'dev', link.name, 'name', link.renamed]);
    await renamed;
    input.next([rec(ifindex)]);
    sub.unsubscribe();
    expect(out.map((b) => b.map((r) => r.interfaceName))).toEqual([[link.name, 'lo'], [link.renamed]]);
    expect(watcher!.watching).toBe(false);
    expect(counters.snapshot()).toMatchObject({ received: 3, sent: 3, inFlight: 0 });
  });
});
