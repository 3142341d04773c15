import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InterfaceError } from '../../../src/net/interfaces.js';
import { InterfaceMatcher, parseInterfacePattern } from '../../../src/net/interface-match.js';
import { scanNamespaces } from '../../../src/net/netns-watch.js';

const NAMES = [
  'eth0',
  'eth1',
  'eth12',
  'veth1a2b',
  'vethmgmt',
  'tap0',
  'tap10',
  'rxv123x4',
  'lo',
  'eth0.100',
  'e+h0',
];

const matching = (include: string[], exclude: string[] = []): string[] => {
  const m = InterfaceMatcher.parse(include, exclude);
  return NAMES.filter((n) => m.matches(n));
};

describe('interface patterns', () => {
  it('a plain name matches itself only, dots and plus signs included', () => {
    expect(matching(['eth0'])).toEqual(['eth0']);
    expect(matching(['eth0.100'])).toEqual(['eth0.100']);
    expect(matching(['e+h0'])).toEqual(['e+h0']);
    expect(parseInterfacePattern('eth0').kind).toBe('name');
  });

  it('globs match the whole name: *, ?, classes and negated classes', () => {
    expect(matching(['veth*'])).toEqual(['veth1a2b', 'vethmgmt']);
    expect(matching(['tap?'])).toEqual(['tap0']);
    expect(matching(['eth[01]'])).toEqual(['eth0', 'eth1']);
    expect(matching(['eth[!0]'])).toEqual(['eth1']);
    expect(matching(['eth*.100'])).toEqual(['eth0.100']);
    expect(parseInterfacePattern('veth*').kind).toBe('glob');
  });

  it('regular expressions between slashes match anywhere unless anchored, with flags', () => {
    expect(matching(['/^rxv\\d+x/'])).toEqual(['rxv123x4']);
    expect(matching(['/mgmt/'])).toEqual(['vethmgmt']);
    expect(matching(['/^ETH\\d$/i'])).toEqual(['eth0', 'eth1']);
    expect(parseInterfacePattern('/^rxv/').kind).toBe('regex');
  });

  it("a 'g' flag does not make the answer alternate", () => {
    const p = parseInterfacePattern('/eth/g');
    expect([p.test('eth0'), p.test('eth0'), p.test('eth0')]).toEqual([true, true, true]);
  });

  it('exclude_interfaces wins over interfaces', () => {
    expect(matching(['veth*', '/^tap/'], ['vethmgmt', '/10$/'])).toEqual(['veth1a2b', 'tap0']);
  });

  it('lists the plain names, which must exist at start', () => {
    expect(InterfaceMatcher.parse(['eth0', 'veth*', '/x/', 'lo']).names).toEqual(['eth0', 'lo']);
  });

  it('rejects a bad regular expression or an unclosed class, naming the option and the fix', () => {
    expect(() => parseInterfacePattern('/(/', 'interfaces')).toThrow(InterfaceError);
    expect(() => parseInterfacePattern('/(/', 'interfaces')).toThrow(
      /^interfaces: '\/\(\/' is not a valid regular expression \(.+\); write it as \/\^veth\/$/,
    );
    expect(() => parseInterfacePattern('eth[0', 'exclude_interfaces')).toThrow(
      "exclude_interfaces: 'eth[0' has a '[' without its ']'; close the class, as in eth[0-3]",
    );
    try {
      parseInterfacePattern('/(/');
    } catch (err) {
      expect((err as InterfaceError).code).toBe('EPATTERN');
      expect((err as InterfaceError).cause).toBeInstanceOf(SyntaxError);
    }
  });
});

describe('scanNamespaces', () => {
  it('finds named and process namespaces, once per inode, and skips the pids it is told to', () => {
    // A fake /proc and /run/netns whose entries point at the real namespace files of this process:
    // every one is the agent's own namespace, so all collapse into the host entry.
    const root = mkdtempSync(join(tmpdir(), 'rxflow-nsscan-'));
    try {
      const proc = join(root, 'proc');
      const run = join(root, 'netns');
      mkdirSync(join(proc, 'self', 'ns'), { recursive: true });
      mkdirSync(run);
      symlinkSync('/proc/self/ns/net', join(proc, 'self', 'ns', 'net'));
      for (const pid of ['100', '200']) {
        mkdirSync(join(proc, pid, 'ns'), { recursive: true });
        symlinkSync('/proc/self/ns/net', join(proc, pid, 'ns', 'net'));
      }
      symlinkSync('/proc/self/ns/net', join(run, 'blue'));
      // Created by `ip netns add` but not mounted yet: a plain file.
      writeFileSync(join(run, 'green'), '');
      const { namespaces, pending } = scanNamespaces({ runDir: run, proc, excludePids: new Set([200]) });
      expect([...namespaces.values()].map((n) => ({ name: n.name, host: n.host }))).toEqual([
        { name: 'host', host: true },
      ]);
      expect(pending).toBe(1);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
