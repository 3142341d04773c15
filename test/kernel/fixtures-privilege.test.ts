import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { decide, inCi, missingRequirements } from '../fixtures/privilege.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

describe('privilege gate: skip with a reason, never in CI', () => {
  it('runs when nothing is missing, skips outside CI and fails in CI otherwise', () => {
    expect(decide([], false)).toEqual({ action: 'run' });
    expect(decide([], true)).toEqual({ action: 'run' });
    expect(decide(['not root', 'kcat not found'], false)).toEqual({
      action: 'skip',
      reason: 'not root; kcat not found',
    });
    expect(decide(['not root'], true)).toEqual({ action: 'fail', reason: 'not root' });
  });

  it('reads CI from the environment', () => {
    expect(inCi({ CI: 'true' })).toBe(true);
    expect(inCi({ CI: '1' })).toBe(true);
    expect(inCi({})).toBe(false);
    expect(inCi({ CI: 'false' })).toBe(false);
  });

  it('names a missing command and how to get it', () => {
    expect(missingRequirements({ commands: ['sh', 'rxflow-no-such-command'] })).toEqual([
      "rxflow-no-such-command not found; run 'bash scripts/setup.sh' to install it",
    ]);
  });

  it('makes a real vitest run skip outside CI and fail with CI=true', () => {
    // A throwaway project under dist/ (so 'vitest' resolves) whose one test needs a missing command.
    const dir = fs.mkdtempSync(path.join(root, 'dist', '.privilege-probe-'));
    try {
      fs.mkdirSync(path.join(dir, 'test'));
      const gate = path.relative(path.join(dir, 'test'), path.join(root, 'test/fixtures/privilege.js'));
      fs.writeFileSync(
        path.join(dir, 'test', 'probe.test.ts'),
        [
          "import { expect } from 'vitest';",
          `import { describeWith, kernelTest } from '${gate}';`,
          "describeWith({ commands: ['rxflow-no-such-command'] }, 'probe block', () => {",
          "  kernelTest('inner', () => expect(1).toBe(1));",
          '});',
        ].join('\n'),
      );
      const vitest = (ci: string) =>
        spawnSync(path.join(root, 'node_modules/.bin/vitest'), ['run', '--root', dir, '--reporter=verbose'], {
          cwd: dir,
          encoding: 'utf8',
          env: { ...process.env, CI: ci, NO_COLOR: '1', FORCE_COLOR: '0' },
        });
      const local = vitest('');
      expect(local.status).toBe(0);
      expect(local.stdout).toContain(
        "probe block (skipped: rxflow-no-such-command not found; run 'bash scripts/setup.sh' to install it)",
      );
      const ci = vitest('true');
      expect(ci.status).toBe(1);
      expect(ci.stdout + ci.stderr).toContain(
        "FixtureError: probe block: cannot run in CI: rxflow-no-such-command not found; run 'bash scripts/setup.sh' to install it",
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
