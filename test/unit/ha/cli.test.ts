import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import type { CliIo } from '../../../src/cli/io.js';
import { registerReplicationCommands } from '../../../src/cli/replication.js';
import { formatNodeStatus } from '../../../src/cli/replication.js';
import { Readiness } from '../../../src/ha/readiness.js';
import type { NodeReplicationStatus } from '../../../src/ha/replication.js';

describe('rxflow firewall replication status --url', () => {
  it('prints the running node’s counts, last sync and lag', async () => {
    const status: NodeReplicationStatus = {
      nodeId: 'fw-a',
      bucket: 'rxflow_sessions',
      ready: true,
      connected: true,
      counts: { local: 1200, kv: 1250, both: 1190, onlyLocal: 10, onlyKv: 60, onlyKvOtherNodes: 55 },
      lastSync: {
        atMs: Date.UTC(2026, 0, 2, 3, 4, 5),
        durationMs: 40,
        counts: { local: 1200, kv: 1250, both: 1190, onlyLocal: 10, onlyKv: 60, onlyKvOtherNodes: 55 },
        before: { local: 1200, kv: 1250, both: 1190, onlyLocal: 10, onlyKv: 60, onlyKvOtherNodes: 55 },
        puts: 10,
        deletes: 5,
        unsettled: 0,
      },
      lastSyncError: undefined,
      pending: 3,
      inFlight: 1,
      lagMs: 420,
      puts: 5000,
      deletes: 100,
      failedWrites: 0,
      load: {
        loaded: 900,
        present: 0,
        unreadable: 0,
        newer: 0,
        expired: 0,
        readMs: 10,
        writeMs: 5,
        revision: 4000,
      },
      watch: undefined,
    };
    const r = await Readiness.start({ listen: { host: '127.0.0.1', port: 0 }, status: () => status });
    let out = '';
    const io = { out: (t: string) => (out += t), err: () => undefined, env: {} } as unknown as CliIo;
    try {
      const program = new Command('rxflow').exitOverride();
      registerReplicationCommands(program.command('firewall'), io);
      await program.parseAsync(['firewall', 'replication', 'status', '--url', `http://127.0.0.1:${r.port}`], {
        from: 'user',
      });
    } finally {
      await r.close();
    }
    const lines = out.split('\n');
    expect(lines.slice(0, 8)).toEqual([
      'node             fw-a',
      'bucket           rxflow_sessions',
      'ready            yes',
      'connected        yes',
      'local sessions   1,200',
      'kv keys          1,250',
      'in both          1,190',
      'only local       10',
    ]);
    expect(lines[8]).toBe('only kv          60 (55 of other nodes)');
    expect(lines[9]).toMatch(
      /^last sync        2026-01-02T03:04:05\.000Z \(.* ago, repaired 10 puts, 5 deletes\)$/,
    );
    expect(lines.slice(10)).toEqual([
      'replication lag  420 ms',
      'pending writes   3 (1 in flight)',
      'written          5,000 puts, 100 deletes, 0 failed',
      'watch            off',
      'loaded on boot   900',
      '',
    ]);
  });

  it('prints what the watch applied from other nodes, what it ignored and why, and its lag', () => {
    const status: NodeReplicationStatus = {
      nodeId: 'fw-b',
      bucket: 'rxflow_sessions',
      ready: true,
      connected: true,
      counts: undefined,
      lastSync: undefined,
      lastSyncError: undefined,
      pending: 0,
      inFlight: 0,
      lagMs: 0,
      puts: 0,
      deletes: 0,
      failedWrites: 0,
      load: undefined,
      watch: {
        active: true,
        revision: 123_456,
        applied: 12_000,
        appliedDeletes: 300,
        ignored: 1207,
        ignoredBy: { own: 1200, localNewer: 4, unreadable: 1, absent: 2, superseded: 0 },
        failed: 3,
        pending: 17,
        backlog: 40,
        lagMs: 12,
        starts: 2,
        lastError: undefined,
        lastWriteError: undefined,
      },
    };
    expect(formatNodeStatus(status, Date.now()).split('\n').slice(10)).toEqual([
      'replication lag  0 ms',
      'pending writes   0 (0 in flight)',
      'written          0 puts, 0 deletes, 0 failed',
      'watch            on, at revision 123,456, set up 2 times',
      'remote applied   12,000 (300 deletes), 3 failed',
      'remote ignored   1,207: 1,200 own, 4 local newer, 1 unreadable, 2 absent, 0 superseded',
      'watch lag        12 ms (17 pending, 40 on the server)',
      '',
    ]);
    const down = {
      ...status,
      watch: { ...status.watch!, active: false, lastError: 'nats kv bucket b: watch: timeout' },
    };
    expect(formatNodeStatus(down, Date.now()).split('\n')[13]).toBe(
      'watch            setting up (nats kv bucket b: watch: timeout), at revision 123,456, set up 2 times',
    );
  });

  it('refuses to guess where to look', async () => {
    const program = new Command('rxflow').exitOverride();
    registerReplicationCommands(program.command('firewall'), {
      out: () => undefined,
      env: {},
    } as unknown as CliIo);
    await expect(program.parseAsync(['firewall', 'replication', 'status'], { from: 'user' })).rejects.toThrow(
      'replication status: give --url <node status address> or --nats <server url>; see --help',
    );
  });
});
