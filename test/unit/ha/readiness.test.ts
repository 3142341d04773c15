import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Readiness } from '../../../src/ha/readiness.js';

describe('readiness', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('answers 503 with the reason until ready, then 200 and writes the file; close removes it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rxha-'));
    dirs.push(dir);
    const file = join(dir, 'run', 'ready');
    const r = await Readiness.start({
      file,
      listen: { host: '127.0.0.1', port: 0 },
      status: () => ({ n: 1n }),
    });
    const base = `http://127.0.0.1:${r.port}`;
    r.setNotReady('loading sessions from kv');
    let res = await fetch(`${base}/ready`);
    expect([res.status, await res.text()]).toEqual([503, 'loading sessions from kv\n']);
    expect(existsSync(file)).toBe(false);
    r.setReady({ loaded: 3 });
    res = await fetch(`${base}/ready`);
    expect([res.status, await res.text()]).toEqual([200, 'ready\n']);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toMatchObject({
      ready: true,
      loaded: 3,
      pid: process.pid,
    });
    expect(await (await fetch(`${base}/status`)).json()).toEqual({ n: '1' });
    expect((await fetch(`${base}/other`)).status).toBe(404);
    await r.close();
    expect(existsSync(file)).toBe(false);
  });

  it('names the address when the port is taken', async () => {
    const a = await Readiness.start({ listen: { host: '127.0.0.1', port: 0 } });
    try {
      await expect(Readiness.start({ listen: { host: '127.0.0.1', port: a.port! } })).rejects.toThrow(
        `readiness endpoint 127.0.0.1:${a.port}: listen EADDRINUSE: address already in use 127.0.0.1:${a.port}; pick another port`,
      );
    } finally {
      await a.close();
    }
  });
});
