/**
 * `rxflow firewall` in process: load leaves the firewall attached after the command returns; the
 * other subcommands work on its pins. Exact output and error messages.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { firewallCli as cli } from '../fixtures/firewall-cli.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink } from '../fixtures/traffic.js';
import { waitFor } from './firewall-helpers.js';

kernelDescribe('rxflow firewall', () => {
  let topo: PairTopology;
  let root: string;
  let dir: string;
  let pins: string[];

  beforeAll(async () => {
    topo = await createPair({ prefix: 'rxfw' });
    root = makeBpffsDir('rxfw');
    pins = ['--pin-root', root, '--instance', 'cli'];
    dir = mkdtempSync(join(tmpdir(), 'rxfw-cli-'));
    writeFileSync(
      join(dir, 'policy.yaml'),
      [
        'networks:',
        '  - {cidr: 192.0.2.0/24, policy: clients}',
        'policies:',
        '  clients:',
        '    default_action: block',
        '    rules:',
        '      - {destination: 192.0.2.2, protocol: udp, port: [7001, 7002]}',
        '',
      ].join('\n'),
    );
    writeFileSync(
      join(dir, 'bad.yaml'),
      'networks:\n  - {cidr: 192.0.2.0/33, policy: client}\npolicies:\n  clients: {default_action: deny}\n',
    );
  });
  afterAll(async () => {
    rmSync(dir, { recursive: true, force: true });
    await cleanup.dispose();
  });

  it('a bad policy file is reported with positions before anything is loaded', async () => {
    const r = await cli([
      'firewall',
      'load',
      ...pins,
      '--ingress',
      topo.link.b.ifname,
      '--netns',
      topo.server.name,
      '--policy',
      join(dir, 'bad.yaml'),
    ]);
    expect(r).toStrictEqual({
      code: 1,
      out: '',
      err:
        `rxflow: ${join(dir, 'bad.yaml')}:2:12: networks[0].cidr: '192.0.2.0/33': prefix length must be 0 to 32\n` +
        `${join(dir, 'bad.yaml')}:2:34: networks[0].policy: no policy named 'client' (did you mean 'clients'?); policies are clients\n` +
        `${join(dir, 'bad.yaml')}:4:29: policies.clients.default_action: 'deny' is not an action; give allow, block or redirect\n`,
    });
    expect(existsSync(join(root, 'rxflow-firewall-cli'))).toBe(false);
  });

  it('load, then status, traffic, sessions, counters, settings and unload through the pins', async () => {
    const load = await cli([
      'firewall',
      'load',
      ...pins,
      '--ingress',
      topo.link.b.ifname,
      '--netns',
      topo.server.name,
      '--policy',
      join(dir, 'policy.yaml'),
      '--address',
      '192.0.2.2',
      '--set',
      'audit_sampling=1',
    ]);
    const b = topo.link.b.ifname;
    expect(load).toStrictEqual({
      code: 0,
      out:
        `firewall loaded at ${root}/rxflow-firewall-cli: ${b} ingress (tcx), ${b} egress (tcx)\n` +
        `policy ${join(dir, 'policy.yaml')}: 1 networks, 1 policies, 2 rule entries; 4 written, 0 removed\n`,
      err: '',
    });

    const status = await cli(['firewall', 'status', ...pins]);
    expect(status.code).toBe(0);
    expect(status.out.split('\n').slice(0, 6)).toStrictEqual([
      `pins:      ${root}/rxflow-firewall-cli`,
      `attached:  ${b}-egress, ${b}-ingress`,
      `devices:   ingress ifindex ${topo.link.b.ifindex}, egress ifindex ${topo.link.b.ifindex}`,
      'address:   192.0.2.2',
      'policy:    1 networks, 1 policies, 2 rule entries',
      'sessions:  0 of 262,144',
    ]);
    expect(status.out).toContain('    0  enforcement                 on\n');

    // The programs stayed attached after the command: traffic is judged.
    const sink = await startUdpSink({ ns: topo.server, port: 7001, family: 4, count: 10 });
    await sendUdp({
      from: topo.client,
      to: '192.0.2.2',
      port: 7001,
      count: 10,
      payloadBytes: 10,
      srcPort: 34000,
    });
    await sink.result;
    await sendUdp({
      from: topo.client,
      to: '192.0.2.2',
      port: 7003,
      count: 4,
      payloadBytes: 10,
      srcPort: 34001,
    });
    const counters = async () =>
      JSON.parse((await cli(['firewall', 'counters', ...pins, '--json'])).out) as Record<string, number>;
    await waitFor('4 blocked', async () => (await counters()).blocked === 4);
    expect(await counters()).toMatchObject({ packets: 14, allowed: 10, blocked: 4, session_hits: 9 });
    const table = (await cli(['firewall', 'counters', ...pins])).out.split('\n');
    expect(table.slice(0, 4)).toStrictEqual([
      'COUNTER                PACKETS',
      'packets                     14',
      'allowed                     10',
      'blocked                      4',
    ]);

    const sessions = await cli(['firewall', 'sessions', ...pins, '--src', '192.0.2.1', '--port', '7001']);
    const lines = sessions.out.trimEnd().split('\n');
    // AGE and IDLE are as wide as their values, which depend on timing.
    expect(lines[0]).toMatch(
      /^PROTO  SOURCE           DESTINATION     STATE +AGE +IDLE  TUNNEL  VNI  PKTS FWD  BYTES FWD  PKTS REV  BYTES REV$/,
    );
    expect(lines[1]).toMatch(
      /^udp    192\.0\.2\.1:34000  192\.0\.2\.2:7001  - +\d+ms +\d+ms  -         -        10      520 B         0        0 B$/,
    );
    expect(lines[2]).toBe('1 session');
    expect((await cli(['firewall', 'sessions', ...pins, '--dst', '192.0.2.1'])).out).toContain(
      '0 sessions\n',
    );
    expect((await cli(['firewall', 'sessions', ...pins, '--port', '70000'])).err).toBe(
      "error: option '--port <port>' argument '70000' is invalid. give a port from 0 to 65535\n",
    );
    const json = JSON.parse(
      (await cli(['firewall', 'sessions', ...pins, '--json', '--port', '34000'])).out,
    ) as Record<string, unknown>[];
    expect(json).toHaveLength(1);
    expect(json[0]).toMatchObject({
      srcAddr: '192.0.2.1',
      srcPort: 34000,
      dstPort: 7001,
      packetsForward: 10,
      tunnel: 'none',
    });

    // Settings by name and by key, both ways round.
    expect((await cli(['firewall', 'settings', 'get', ...pins, 'enforcement'])).out).toBe('on\n');
    expect((await cli(['firewall', 'settings', 'set', ...pins, 'enforcement', 'off'])).out).toBe(
      'enforcement (0) = off\n',
    );
    expect((await cli(['firewall', 'settings', 'get', ...pins, '0'])).out).toBe('off\n');
    expect((await cli(['firewall', 'settings', 'set', ...pins, '2', '120'])).out).toBe(
      'session_idle_timeout_s (2) = 120\n',
    );
    expect((await cli(['firewall', 'settings', 'get', ...pins, 'session_idle_timeout_s'])).out).toBe('120\n');
    expect((await cli(['firewall', 'settings', 'set', ...pins, 'tunnel_mode', '2'])).out).toBe(
      'tunnel_mode (5) = geneve\n',
    );
    const all = JSON.parse((await cli(['firewall', 'settings', 'get', ...pins, '--json'])).out) as {
      name: string;
      value: number;
    }[];
    expect(all.map((s) => [s.name, s.value])).toStrictEqual([
      ['enforcement', 0],
      ['audit_sampling', 1],
      ['session_idle_timeout_s', 120],
      ['session_closed_timeout_s', 10],
      ['session_update_interval_ms', 1000],
      ['tunnel_mode', 2],
      ['hairpin', 0],
      ['default_action', 1],
      ['audit_allowed', 0],
      ['geneve_option_class', 264],
      ['geneve_cookie_type', 256],
    ]);
    expect(await cli(['firewall', 'settings', 'get', ...pins, 'enforcment'])).toStrictEqual({
      code: 1,
      out: '',
      err: "rxflow: setting 'enforcment': no such setting (did you mean 'enforcement'?); settings are enforcement, audit_sampling, session_idle_timeout_s, session_closed_timeout_s, session_update_interval_ms, tunnel_mode, hairpin, default_action, audit_allowed, geneve_option_class, geneve_cookie_type\n",
    });
    expect((await cli(['firewall', 'settings', 'get', ...pins, '11'])).err).toBe(
      'rxflow: setting key 11: no such key; keys are 0 (enforcement), 1 (audit_sampling), 2 (session_idle_timeout_s), 3 (session_closed_timeout_s), 4 (session_update_interval_ms), 5 (tunnel_mode), 6 (hairpin), 7 (default_action), 8 (audit_allowed), 9 (geneve_option_class), 10 (geneve_cookie_type)\n',
    );
    expect((await cli(['firewall', 'settings', 'set', ...pins, 'tunnel_mode', 'genve'])).err).toBe(
      "rxflow: setting tunnel_mode: 'genve' is not a value it takes (did you mean 'geneve'?); give none, vxlan, geneve (or an integer from 0 to 2)\n",
    );
    expect((await cli(['firewall', 'settings', 'set', ...pins, 'hairpin', '2'])).err).toBe(
      "rxflow: setting hairpin: '2' is not a value it takes; give off, on (or an integer from 0 to 1)\n",
    );
    expect((await cli(['firewall', 'settings', 'set', ...pins, 'audit_sampling', '-1'])).err).toBe(
      "rxflow: setting audit_sampling: '-1' is not a value it takes; give an integer from 0\n",
    );
    expect((await cli(['firewall', 'settings', 'get', ...pins, '0'])).out).toBe('off\n');

    // Reloading over the pins keeps sessions and settings.
    const again = await cli([
      'firewall',
      'load',
      ...pins,
      '--ingress',
      b,
      '--netns',
      topo.server.name,
      '--policy',
      join(dir, 'policy.yaml'),
    ]);
    expect(again.out).toContain('0 written, 0 removed');
    expect((await cli(['firewall', 'settings', 'get', ...pins, 'session_idle_timeout_s'])).out).toBe('120\n');
    expect(JSON.parse((await cli(['firewall', 'sessions', ...pins, '--json'])).out)).toHaveLength(1);

    expect(await cli(['firewall', 'unload', ...pins])).toStrictEqual({
      code: 0,
      out: `firewall at ${root}/rxflow-firewall-cli unloaded\n`,
      err: '',
    });
    expect((await cli(['firewall', 'status', ...pins])).err).toBe(
      `rxflow: open firewall at ${root}/rxflow-firewall-cli: no firewall is loaded there; load one with 'rxflow firewall load --ingress <device>' or check --instance and --pin-root\n`,
    );
    // Detached: blocked traffic goes through again.
    const after = await startUdpSink({ ns: topo.server, port: 7003, family: 4, count: 3 });
    await sendUdp({ from: topo.client, to: '192.0.2.2', port: 7003, count: 3, payloadBytes: 10 });
    expect((await after.result).received).toBe(3);
  });

  it('load names a missing device', async () => {
    const r = await cli(['firewall', 'load', ...pins, '--ingress', 'rxfwnope0', '--netns', topo.server.name]);
    expect(r.err).toBe(
      `rxflow: firewall ingress device rxfwnope0: no such interface in netns ${topo.server.name}; check the name with 'ip link'\n`,
    );
  });
});
