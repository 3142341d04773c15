import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { Events, connect, type NatsConnection } from 'nats';
import { afterAll, expect, it } from 'vitest';
import { cleanup, isAlive } from '../fixtures/cleanup.js';
import { startNatsServer } from '../fixtures/nats.js';
import { describeWith } from '../fixtures/privilege.js';

/** Pids of processes whose command line mentions `text` (pgrep -f), without this process. */
function pgrep(text: string): number[] {
  try {
    return execFileSync('pgrep', ['-f', text], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l !== '')
      .map(Number)
      .filter((pid) => pid !== process.pid);
  } catch {
    return [];
  }
}

async function waitForStatus(nc: NatsConnection, type: Events): Promise<void> {
  for await (const status of nc.status()) {
    if (status.type === type) {
      return;
    }
  }
}

describeWith({ commands: ['nats-server', 'pgrep'] }, 'nats fixture: JetStream server on loopback', () => {
  afterAll(() => cleanup.dispose());

  it('keeps a KV key across a restart on the same port, and stop leaves no process', async () => {
    const nats = await startNatsServer();
    const port = nats.port;
    const firstPid = nats.pid;
    expect(nats.url).toBe(`nats://127.0.0.1:${port}`);
    expect(pgrep(nats.storeDir)).toEqual([firstPid]);

    // One client for the whole test: it must reconnect by itself to the restarted server.
    const nc: NatsConnection = await connect({
      servers: nats.url,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 50,
    });
    try {
      const kv = await nc.jetstream().views.kv('rxt_sessions');
      await kv.put('session.1', 'tunnel=vxlan vni=42');
      const reconnected = waitForStatus(nc, Events.Reconnect);
      await nats.restart();
      expect(nats.port).toBe(port);
      expect(nats.pid).not.toBe(firstPid);
      expect(isAlive(firstPid!)).toBe(false);

      const fresh = await connect({ servers: nats.url });
      try {
        const entry = await (await fresh.jetstream().views.kv('rxt_sessions')).get('session.1');
        expect(entry?.string()).toBe('tunnel=vxlan vni=42');
        expect(entry?.revision).toBe(1);
      } finally {
        await fresh.close();
      }
      // nats.js loses a request sent while it is still reconnecting (TIMEOUT), so wait for it.
      await reconnected;
      await kv.put('session.2', 'after restart');
      expect((await kv.get('session.2'))?.string()).toBe('after restart');
    } finally {
      await nc.close();
    }

    const lastPid = nats.pid!;
    await nats.stop();
    expect(nats.running).toBe(false);
    expect(isAlive(lastPid)).toBe(false);
    expect(pgrep(nats.storeDir)).toEqual([]);
    await expect(connect({ servers: nats.url, maxReconnectAttempts: 0, timeout: 500 })).rejects.toThrow();
  });

  it('refuses a second start while running, naming the port', async () => {
    const nats = await startNatsServer();
    await expect(nats.start()).rejects.toThrow(
      `nats-server on port ${nats.port}: already running; stop it first`,
    );
    await nats.stop();
  });

  it('reports why a server did not start, from its log', async () => {
    const nats = await startNatsServer();
    await nats.stop();
    // Occupy the port so the restart cannot bind it.
    const blocker = await startBlocker(nats.port);
    try {
      await expect(nats.start()).rejects.toThrow(
        /nats-server on port \d+: exited; log: .*address already in use/s,
      );
    } finally {
      blocker.close();
    }
  });
});

function startBlocker(port: number): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(port, '127.0.0.1', () => resolve(srv));
  });
}
