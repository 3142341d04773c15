import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HealthServer, StatusServer, parseHostPort } from '../../../src/cli/status-server.js';
import { HealthBoard } from '../../../src/health.js';
import { silentLogger } from '../../../src/logger.js';
import {
  defaultStatusSocket,
  findStatusSocket,
  formatStatus,
  pipelineName,
  readStatus,
  type PipelineStatus,
} from '../../../src/cli/status.js';

const dir = mkdtempSync(join(tmpdir(), 'rxflow-status-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const STATUS: PipelineStatus = {
  pipeline: 'edge',
  file: '/etc/rxflow/edge.yaml',
  pid: 4242,
  state: 'running',
  ready: true,
  startedAt: '2026-01-01T00:00:00.000Z',
  uptimeMs: 65_000,
  startupMs: 812,
  ledger: {
    seen: 12_345,
    merged: 0,
    dropped: { limiter_dropped: 300, kernel_map_full: 5 },
    droppedTotal: 305,
    inFlight: 0,
    delivered: 12_040,
    sinks: [
      {
        id: 'kafka',
        type: 'kafka',
        handed: 12_040,
        exported: 11_990,
        dropped: { sink_failed: 10 },
        droppedTotal: 10,
        inFlight: 40,
      },
      {
        id: 'out',
        type: 'file',
        handed: 12_040,
        exported: 12_040,
        dropped: {},
        droppedTotal: 0,
        inFlight: 0,
      },
    ],
  },
  health: {
    status: 'degraded',
    degraded: [
      {
        component: 'kafka',
        type: 'kafka',
        reason: 'kafka sink: no broker reachable for 30 s; check the brokers',
        since: '2026-01-01T00:01:00.000Z',
      },
    ],
  },
  components: [
    {
      id: 'flows',
      type: 'ebpf_flows',
      kind: 'source',
      received: 12_345,
      sent: 12_340,
      dropped: { kernel_map_full: 5 },
      droppedTotal: 5,
      merged: 0,
      inFlight: 0,
    },
    {
      id: 'flows.account',
      type: 'account',
      kind: 'stage',
      received: 0,
      sent: 0,
      dropped: {},
      droppedTotal: 0,
      merged: 0,
      inFlight: 0,
    },
    {
      id: 'limit',
      type: 'limit_capacity',
      kind: 'transform',
      received: 12_340,
      sent: 12_040,
      dropped: { limiter_dropped: 300 },
      droppedTotal: 300,
      merged: 0,
      inFlight: 0,
    },
    {
      id: 'kafka',
      type: 'kafka',
      kind: 'sink',
      received: 12_040,
      sent: 12_000,
      dropped: {},
      droppedTotal: 0,
      merged: 0,
      inFlight: 40,
    },
  ],
};

describe('formatStatus', () => {
  it('prints the header, the ledger with drops by reason, and a row per component', () => {
    expect(formatStatus(STATUS)).toBe(
      [
        'pipeline  edge (/etc/rxflow/edge.yaml), pid 4242',
        'state     running, ready, up 1m05s, started in 812 ms',
        'ledger    seen 12,345  merged 0  dropped 305 (kernel_map_full 5, limiter_dropped 300)  in flight 0  delivered 12,040',
        '          sink kafka  handed 12,040  exported 11,990  dropped 10 (sink_failed 10)  in flight 40',
        '          sink out    handed 12,040  exported 12,040  dropped 0  in flight 0',
        'health    degraded (1 component)',
        '          kafka (kafka) since 2026-01-01T00:01:00.000Z: kafka sink: no broker reachable for 30 s; check the brokers',
        '',
        'COMPONENT      TYPE            KIND       RECEIVED    SENT  DROPPED  MERGED  IN FLIGHT',
        'flows          ebpf_flows      source       12,345  12,340        5       0          0',
        'flows.account  account         stage             0       0        0       0          0',
        'limit          limit_capacity  transform    12,340  12,040      300       0          0',
        'kafka          kafka           sink         12,040  12,000        0       0         40',
        '',
        'drops by reason:',
        '  flows: kernel_map_full 5',
        '  limit: limiter_dropped 300',
        '',
      ].join('\n'),
    );
  });

  it('adds the table of each top sink', () => {
    const text = formatStatus({
      ...STATUS,
      components: [],
      top: {
        top: {
          windowMs: 10_000,
          windowFlows: 2,
          windowPackets: 30,
          windowBytes: 30_000,
          totalRecords: 2,
          totalPackets: 30,
          totalBytes: 30_000,
          flows: [
            {
              ipVersion: 4,
              source: '192.0.2.1',
              destination: '192.0.2.2',
              sourcePort: 40001,
              destinationPort: 9001,
              protocol: 17,
              direction: 0,
              interface: 'eth0',
              packets: 20,
              bytes: 25_000,
              bytesPerSecond: 2500,
            },
            {
              ipVersion: 6,
              source: '2001:db8::2',
              destination: '2001:db8::1',
              sourcePort: 0,
              destinationPort: 0,
              protocol: 58,
              direction: 1,
              interface: 'eth0',
              packets: 10,
              bytes: 5000,
              bytesPerSecond: 500,
            },
          ],
        },
      },
    });
    expect(text.split('\n').slice(-5)).toEqual([
      'top flows by bytes (sink top), last 10s: 2 flows, 30 packets, 30.0 kB',
      'SOURCE       SPORT  DESTINATION  DPORT  PROTO   DIR      IFACE  PACKETS    BYTES         RATE',
      '192.0.2.1    40001  192.0.2.2     9001  udp     ingress  eth0        20  25.0 kB  20.0 kbit/s',
      '2001:db8::2      -  2001:db8::1      -  icmpv6  egress   eth0        10  5.00 kB  4.00 kbit/s',
      '',
    ]);
  });
});

describe('socket paths', () => {
  it('names the pipeline after its file and puts its socket in the run directory', () => {
    expect(pipelineName('/etc/rxflow/kafka-export.yaml')).toBe('kafka-export');
    expect(pipelineName('odd name.yml')).toBe('odd_name');
    expect(defaultStatusSocket('pipelines/demo.yaml', {})).toBe('/run/rxflow/demo.sock');
    expect(defaultStatusSocket('demo.yaml', { RXFLOW_RUN_DIR: '/tmp/rx' })).toBe('/tmp/rx/demo.sock');
  });

  it('finds the only socket of the run directory, and says what to do with none or several', async () => {
    const runDir = mkdtempSync(join(dir, 'run-'));
    const env = { RXFLOW_RUN_DIR: runDir };
    expect(() => findStatusSocket(env)).toThrow(
      `status: no running pipeline has a socket in ${runDir}; start one with 'rxflow run FILE', or pass --socket PATH`,
    );
    writeFileSync(join(runDir, 'plain.sock'), '');
    const a = await StatusServer.listen(join(runDir, 'a.sock'), () => STATUS);
    expect(findStatusSocket(env)).toBe(join(runDir, 'a.sock'));
    const b = await StatusServer.listen(join(runDir, 'b.sock'), () => STATUS);
    expect(() => findStatusSocket(env)).toThrow(
      `status: 2 pipelines run (${runDir}/a.sock, ${runDir}/b.sock); pick one with --socket PATH`,
    );
    await a.close();
    await b.close();
  });
});

describe('StatusServer and readStatus', () => {
  it('serves the document on GET /status, 404 elsewhere, and removes its socket on close', async () => {
    const path = join(dir, 'serve.sock');
    let calls = 0;
    const server = await StatusServer.listen(path, () => ({ ...STATUS, uptimeMs: ++calls }));
    expect(await readStatus(path)).toEqual({ ...STATUS, uptimeMs: 1 });
    expect(await readStatus(path)).toEqual({ ...STATUS, uptimeMs: 2 });
    const other = await new Promise<number>((resolve, reject) => {
      request({ socketPath: path, path: '/metrics' }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      })
        .on('error', reject)
        .end();
    });
    expect(other).toBe(404);
    await server.close();
    await server.close();
    expect(existsSync(path)).toBe(false);
  });

  it('replaces the socket file of a process that died, and refuses one a live process serves', async () => {
    const path = join(dir, 'stale.sock');
    const child = spawnSync(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ]);
    expect(child.signal).toBe('SIGKILL');
    expect(existsSync(path)).toBe(true);
    const server = await StatusServer.listen(path, () => STATUS);
    expect((await readStatus(path)).pid).toBe(4242);
    await expect(StatusServer.listen(path, () => STATUS)).rejects.toThrow(
      `status socket ${path}: another pipeline serves it; stop it, or pass --status-socket with another path`,
    );
    await server.close();
  });

  it('refuses a path held by a file that is not a socket, and one too long for a socket', async () => {
    const path = join(dir, 'file.sock');
    writeFileSync(path, 'x');
    await expect(StatusServer.listen(path, () => STATUS)).rejects.toThrow(
      `status socket ${path}: a file that is not a socket is in the way; remove it`,
    );
    const long = join(dir, 'x'.repeat(120));
    await expect(StatusServer.listen(long, () => STATUS)).rejects.toThrow(
      `status socket ${long}: longer than 107 bytes; pass a shorter --status-socket`,
    );
  });

  it('says no pipeline serves a socket that is missing', async () => {
    const path = join(dir, 'missing.sock');
    await expect(readStatus(path)).rejects.toThrow(
      `status ${path}: no pipeline serves this socket (ENOENT); is 'rxflow run' running?`,
    );
  });
});

describe('HealthBoard', () => {
  it('keeps the degraded components with their reasons, and logs each change once', () => {
    const board = new HealthBoard();
    const logs: [string, Record<string, unknown>, string][] = [];
    const logger = silentLogger();
    logger.warn = (obj: unknown, msg?: string) =>
      void logs.push(['warn', obj as Record<string, unknown>, msg!]);
    logger.info = (obj: unknown, msg?: string) =>
      void logs.push(['info', obj as Record<string, unknown>, msg!]);
    const kafka = board.reporter('kafka', 'kafka', logger);
    board.reporter('out', 'file', logger).healthy();
    expect(board.snapshot()).toEqual({ status: 'healthy', degraded: [] });
    kafka.degraded('no broker');
    kafka.degraded('no broker');
    const first = board.snapshot();
    expect(first).toEqual({
      status: 'degraded',
      degraded: [
        { component: 'kafka', type: 'kafka', reason: 'no broker', since: expect.any(String) as string },
      ],
    });
    kafka.degraded('no broker for 30 s');
    expect(board.snapshot().degraded[0]).toEqual({ ...first.degraded[0], reason: 'no broker for 30 s' });
    kafka.healthy();
    kafka.healthy();
    expect(board.snapshot()).toEqual({ status: 'healthy', degraded: [] });
    expect(logs).toEqual([
      ['warn', { health: 'degraded', reason: 'no broker' }, 'component degraded'],
      ['warn', { health: 'degraded', reason: 'no broker for 30 s' }, 'component degraded'],
      [
        'info',
        { health: 'healthy', was: 'no broker for 30 s', since: first.degraded[0]!.since },
        'component healthy again',
      ],
    ]);
  });
});

describe('HealthServer', () => {
  it('answers each path with the code and document it is given, 404 otherwise', async () => {
    const server = await HealthServer.listen('127.0.0.1:0', (path) =>
      path === '/readyz' ? { code: 503, doc: { status: 'degraded' } } : undefined,
    );
    try {
      expect(server.address).toMatch(/^127\.0\.0\.1:\d+$/);
      const ready = await fetch(`http://${server.address}/readyz`);
      expect([ready.status, await ready.json()]).toEqual([503, { status: 'degraded' }]);
      const other = await fetch(`http://${server.address}/nope`);
      expect(other.status).toBe(404);
    } finally {
      await server.close();
    }
  });

  it('refuses an address that is not host:port, and a port it cannot bind', async () => {
    expect(() => parseHostPort('8686')).toThrow(
      "health address '8686': not host:port; give e.g. 127.0.0.1:8686, 0.0.0.0:8686 or [::1]:8686",
    );
    expect(parseHostPort('[::1]:8686')).toEqual({ host: '::1', port: 8686 });
    const first = await HealthServer.listen('127.0.0.1:0', () => undefined);
    try {
      await expect(HealthServer.listen(first.address, () => undefined)).rejects.toThrow(
        `health endpoint ${first.address}: cannot listen (EADDRINUSE); pick another --health-address, or stop what holds it`,
      );
    } finally {
      await first.close();
    }
  });
});
