/**
 * The namespace watcher while `ip netns add` is half done: the name exists under the run
 * directory but the namespace is not mounted on it yet, and a process already runs in it (`ip -n`
 * configuring it). The watcher must not take that namespace as an anonymous `net:[inode]` one: it
 * waits for the mount and reports it once, by name. A fake run directory and /proc stand for the
 * two stages; the namespace itself is real.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { NetnsWatcher, type NetnsInfo } from '../../src/net/netns-watch.js';
import { cleanup } from '../fixtures/cleanup.js';
import { createNetns, type Netns } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';

kernelDescribe('netns watcher', () => {
  let netns: Netns;
  let root: string;

  beforeAll(async () => {
    netns = await createNetns({ prefix: 'rxnw' });
    root = mkdtempSync(join(tmpdir(), 'rxflow-nswatch-'));
  });

  afterAll(async () => {
    rmSync(root, { recursive: true, force: true });
    await cleanup.dispose();
  });

  it('reports a namespace named while a process already runs in it once, by its name', () => {
    const proc = join(root, 'proc');
    const run = join(root, 'netns');
    mkdirSync(join(proc, 'self', 'ns'), { recursive: true });
    mkdirSync(join(proc, '4242', 'ns'), { recursive: true });
    mkdirSync(run);
    symlinkSync('/proc/self/ns/net', join(proc, 'self', 'ns', 'net'));
    // A process in the new namespace, and its name not mounted yet: a plain file.
    symlinkSync(`/run/netns/${netns.name}`, join(proc, '4242', 'ns', 'net'));
    writeFileSync(join(run, netns.name), '');

    const added: NetnsInfo[] = [];
    const watcher = NetnsWatcher.open({
      rescanIntervalMs: 3_600_000,
      runDir: run,
      proc,
      onAdded: (ns) => added.push(ns),
      onRemoved: () => undefined,
    });
    try {
      expect(added.map((n) => n.name)).toEqual(['host']);
      // The mount is done.
      unlinkSync(join(run, netns.name));
      symlinkSync(`/run/netns/${netns.name}`, join(run, netns.name));
      watcher.rescan();
      expect(added.map((n) => n.name)).toEqual(['host', netns.name]);
      watcher.rescan();
      expect(added).toHaveLength(2);
    } finally {
      watcher.close();
    }
  });

  it('renames a namespace seen through a process when it is named later, and back when the name goes', () => {
    const proc = join(root, 'proc-rename');
    const run = join(root, 'netns-rename');
    mkdirSync(join(proc, 'self', 'ns'), { recursive: true });
    mkdirSync(join(proc, '4343', 'ns'), { recursive: true });
    mkdirSync(run);
    symlinkSync('/proc/self/ns/net', join(proc, 'self', 'ns', 'net'));
    symlinkSync(`/run/netns/${netns.name}`, join(proc, '4343', 'ns', 'net'));

    const added: string[] = [];
    const renamed: [string, string][] = [];
    const watcher = NetnsWatcher.open({
      rescanIntervalMs: 3_600_000,
      runDir: run,
      proc,
      onAdded: (ns) => added.push(ns.name),
      onRemoved: () => undefined,
      onRenamed: (ns, previous) => renamed.push([previous, ns.name]),
    });
    try {
      const anonymous = added[1]!;
      expect(added).toEqual(['host', expect.stringMatching(/^net:\[\d+\]$/) as string]);
      // `ip netns attach later <pid>`: the name is mounted on the process's namespace.
      symlinkSync(`/run/netns/${netns.name}`, join(run, 'later'));
      watcher.rescan();
      expect(renamed).toEqual([[anonymous, 'later']]);
      expect([...watcher.namespaces.values()].map((n) => n.name)).toEqual(['host', 'later']);
      watcher.rescan();
      expect(renamed).toHaveLength(1);
      // `ip netns del later` while the process keeps the namespace.
      unlinkSync(join(run, 'later'));
      watcher.rescan();
      expect(renamed).toEqual([
        [anonymous, 'later'],
        ['later', anonymous],
      ]);
      expect(added).toHaveLength(2);
    } finally {
      watcher.close();
    }
  });
});
