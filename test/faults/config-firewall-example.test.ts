/**
 * The shipped firewall example loads on a machine that has only the devices it is loaded on, and
 * a first load that fails on its policy leaves no pins behind.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { firewallCli as cli } from '../fixtures/firewall-cli.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';

const EXAMPLE = fileURLToPath(new URL('../../examples/firewall-policy.yaml', import.meta.url));

kernelDescribe('examples/firewall-policy.yaml', () => {
  let topo: PairTopology;
  let root: string;
  let dir: string;

  beforeAll(async () => {
    topo = await createPair({ prefix: 'rxcfg' });
    root = makeBpffsDir('config');
    dir = mkdtempSync(join(tmpdir(), 'rxflow-config-fw-'));
  });
  afterAll(async () => {
    rmSync(dir, { recursive: true, force: true });
    await cleanup.dispose();
  });

  const device = (): string[] => ['--ingress', topo.link.b.ifname, '--netns', topo.server.name];

  it('loads as shipped on a host with no eth2, and unloads', async () => {
    const pins = ['--pin-root', root, '--instance', 'config-example'];
    const load = await cli(['firewall', 'load', ...pins, ...device(), '--policy', EXAMPLE]);
    expect(load.err).toBe('');
    expect(load.code).toBe(0);
    expect(load.out).toContain(`policy ${EXAMPLE}: 3 networks, 2 policies, `);
    expect((await cli(['firewall', 'unload', ...pins])).code).toBe(0);
    expect(existsSync(join(root, 'rxflow-firewall-config-example'))).toBe(false);
  });

  it('leaves no pins when a first load fails on its policy', async () => {
    const policy = join(dir, 'missing-device.yaml');
    writeFileSync(
      policy,
      'networks:\n  - {cidr: 0.0.0.0/0, policy: p}\npolicies:\n  p:\n    default_action: redirect\n    redirect_interface: rxcfgnone0\n',
    );
    const pins = ['--pin-root', root, '--instance', 'config-failed'];
    const load = await cli(['firewall', 'load', ...pins, ...device(), '--policy', policy]);
    expect(load.code).toBe(1);
    expect(load.err).toContain('rxcfgnone0');
    expect(existsSync(join(root, 'rxflow-firewall-config-failed'))).toBe(false);
  });
});
