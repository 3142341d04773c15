import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import type { CliIo } from '../../../src/cli/io.js';
import { createCliLogger } from '../../../src/cli/log.js';
import { runCli } from '../../../src/cli/program.js';
import { readStatus } from '../../../src/cli/status.js';
import { StatusServer } from '../../../src/cli/status-server.js';
import { connectNats } from '../../../src/ha/kv.js';
import { formatProblem } from '../../../src/config/errors.js';
import { checkPipeline } from '../../../src/pipeline/load.js';
import { isSecretKey, redactText, redactUrls, redactValue } from '../../../src/redact.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'rxflow-secrets-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SECRET = '31415926535';

function write(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

function kafkaPipeline(sasl: string): string {
  return `sources:
  f:
    type: file_replay
    paths: [x]
sinks:
  k:
    type: kafka
    inputs: [f]
    bootstrap_servers: ['kafka:9092']
    topic: flows
    sasl:
${sasl}`;
}

function check(text: string, env: Record<string, string> = {}) {
  const result = checkPipeline(text, 'p.yaml', { env });
  return { config: result.config, problems: result.problems.map(formatProblem) };
}

function cli(args: string[], env: Record<string, string> = {}) {
  let out = '';
  let err = '';
  const io = {
    out: (t: string) => (out += t),
    err: (t: string) => (err += t),
    env,
  } as unknown as CliIo;
  return runCli(args, io).then((code) => ({ code, out, err }));
}

describe('a secret in a pipeline', () => {
  it('takes an unquoted numeric ${VAR} as the text of a string option', () => {
    const { config, problems } = check(
      kafkaPipeline('      mechanism: plain\n      username: ${KUSER}\n      password: ${KPASS}\n'),
      { KPASS: SECRET, KUSER: 'true' },
    );
    expect(problems).toEqual([]);
    expect(config!.components.get('k')!.config.sasl).toEqual({
      mechanism: 'plain',
      username: 'true',
      password: SECRET,
    });
  });

  it('keeps a literal value as written for a string option: 0123 is "0123"', () => {
    const { config } = check(
      kafkaPipeline('      mechanism: plain\n      username: u\n      password: 0123\n'),
    );
    expect((config!.components.get('k')!.config.sasl as { password: string }).password).toBe('0123');
  });

  it('never prints a secret in a validate error', () => {
    const { problems } = check(
      kafkaPipeline('      mechanism: plain\n      username: u\n      password:\n        - ${KPASS}\n'),
      { KPASS: SECRET },
    );
    expect(problems).toEqual([
      'p.yaml:15:9: sinks.k.sasl.password: must be a string, got a value not shown (a secret)',
    ]);
    const bad = check(
      kafkaPipeline(
        '      mechanism: plain\n      username: u\n      password: {a: "${KPASS}"}\n      token: x\n',
      ),
      { KPASS: SECRET },
    );
    expect(bad.problems.join('\n')).not.toContain(SECRET);
    const unterminated = check(
      kafkaPipeline('      mechanism: plain\n      username: u\n      password: "pa${ss"\n'),
    );
    expect(unterminated.problems).toEqual([
      "p.yaml:14:20: sinks.k.sasl.password: unterminated '${' in the value (a secret, not shown); close it with '}' or write '$$' for a literal '$'",
    ]);
  });

  it('prints no secret from rxflow validate, whatever else is wrong', async () => {
    const file = write(
      'numeric.yaml',
      kafkaPipeline('      mechanism: plain\n      username: u\n      password: ${KPASS}\n').replace(
        'topic: flows',
        'topic: flows\n    acks: 2',
      ),
    );
    const r = await cli(['validate', file], { KPASS: SECRET });
    expect(r.code).toBe(1);
    expect(r.err).toBe(`${file}:11:11: sinks.k.acks: must be one of: -1, 0, 1; got 2\n`);
    expect(r.out + r.err).not.toContain(SECRET);
  });

  it('prints a URL of the pipeline without its userinfo', () => {
    const text = kafkaPipeline('      mechanism: plain\n      username: u\n      password: p\n').replace(
      "['kafka:9092']",
      "['kafka://alice:hunter2@kafka']",
    );
    expect(check(text).problems).toEqual([
      "p.yaml:9:25: sinks.k.bootstrap_servers[0]: must match ^\\S+:[0-9]{1,5}$, got 'kafka://kafka'",
    ]);
  });

  it('reads password_file, without its trailing newline', () => {
    const file = write('kafka-password', `${SECRET}\n`);
    chmodSync(file, 0o600);
    const { config, problems } = check(
      kafkaPipeline(`      mechanism: scram-sha-512\n      username: u\n      password_file: ${file}\n`),
    );
    expect(problems).toEqual([]);
    expect(config!.components.get('k')!.config.sasl).toEqual({
      mechanism: 'scram-sha-512',
      username: 'u',
      password: SECRET,
    });
  });

  it('says which file it cannot read, and that one of password and password_file is needed', () => {
    expect(
      check(kafkaPipeline(`      mechanism: plain\n      username: u\n      password_file: ${dir}/nope\n`))
        .problems,
    ).toEqual([`p.yaml:14:22: sinks.k.sasl.password_file: read ${dir}/nope: no such file; check the path`]);
    expect(check(kafkaPipeline('      mechanism: plain\n      username: u\n')).problems).toEqual([
      "p.yaml:11:5: sinks.k.sasl: missing key 'password' or 'password_file'",
    ]);
    expect(
      check(
        kafkaPipeline(
          `      mechanism: plain\n      username: u\n      password: x\n      password_file: /dev/null\n`,
        ),
      ).problems,
    ).toEqual(['p.yaml:15:7: sinks.k.sasl.password_file: give password or password_file, not both']);
  });

  it('reads the token and password of nats_sessions from files', () => {
    const token = write('nats-token', 's3cr3t-token\n');
    const text = `sources:\n  f:\n    type: file_replay\n    paths: [x]\nsinks:\n  n:\n    type: nats_sessions\n    inputs: [f]\n    servers: [nats://n:4222]\n    token_file: ${token}\n`;
    const { config, problems } = check(text);
    expect(problems).toEqual([]);
    expect(config!.components.get('n')!.config).toMatchObject({ token: 's3cr3t-token' });
    expect(config!.components.get('n')!.config).not.toHaveProperty('token_file');
  });
});

describe('secrets in messages and logs', () => {
  it('knows secret option names, and not the names of files holding them', () => {
    expect(
      ['password', 'sasl_password', 'token', 'client_secret', 'passphrase'].filter(isSecretKey),
    ).toHaveLength(5);
    expect(['password_file', 'credentials_file', 'topic', 'user', 'username'].filter(isSecretKey)).toEqual(
      [],
    );
  });

  it('strips userinfo from URLs and redacts secret fields at any depth', () => {
    expect(redactUrls('nats nats://alice:pw@n1:4222,tls://tok@n2:4222: refused')).toBe(
      'nats nats://n1:4222,tls://n2:4222: refused',
    );
    expect(redactValue({ a: { sasl: { password: SECRET, username: 'u' } }, url: 'http://u:p@h/x' })).toEqual({
      a: { sasl: { password: '[redacted]', username: 'u' } },
      url: 'http://h/x',
    });
  });

  it('names a NATS server without the credentials in its URL when it cannot connect', async () => {
    const err = await connectNats(
      { servers: ['nats://alice:hunter2@127.0.0.1:1'], reconnectWaitMs: 10 },
      { signal: AbortSignal.abort() },
    ).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/^nats nats:\/\/127\.0\.0\.1:1: /);
    expect(err?.message).not.toContain('hunter2');
  });

  it('scrubs a secret of the pipeline wherever a library echoes it', () => {
    const text = `sources:\n  f:\n    type: file_replay\n    paths: [x]\nsinks:\n  n:\n    type: nats_sessions\n    inputs: [f]\n    servers: ['nats://alice:2718281828@127.0.0.1:1']\n    user: bob\n    password: \${NPASS}\n`;
    expect(check(text, { NPASS: '1414213562' }).problems).toEqual([]);
    // nats.js reads a numeric password of a URL as its port and says so.
    expect(redactText('Port should be >= 0 and < 65536. Received type number (2718281828).')).toBe(
      'Port should be >= 0 and < 65536. Received type number ([redacted]).',
    );
    expect(redactText('auth 1414213562 refused')).toBe('auth [redacted] refused');
  });

  it('writes no secret to the log of rxflow run', () => {
    const lines: string[] = [];
    const log = createCliLogger('info', { write: (line: string) => void lines.push(line) });
    log.child({ component: 'n' }).error(
      {
        servers: 'nats://alice:hunter2@n:4222',
        password: 'hunter2',
        err: new Error('nats://alice:hunter2@n: refused'),
      },
      'cannot reach nats://alice:hunter2@n:4222',
    );
    expect(lines).toHaveLength(1);
    expect(lines[0]).not.toContain('hunter2');
    expect(JSON.parse(lines[0]!)).toMatchObject({
      component: 'n',
      msg: 'cannot reach nats://n:4222',
      servers: 'nats://n:4222',
      password: '[redacted]',
      err: { type: 'Error', message: 'nats://n: refused' },
    });
  });

  it('writes no secret field and no URL password to the log', () => {
    const script = `
      const { createRootLogger } = await import(${JSON.stringify(join(ROOT, 'dist/src/logger.js'))});
      const log = createRootLogger('info').child({ component: 'k' });
      log.warn({ servers: 'nats://alice:${SECRET}@n:4222', sasl: { password: '${SECRET}' }, err: new Error('connect nats://alice:${SECRET}@n:4222') }, 'cannot reach nats://alice:${SECRET}@n:4222');
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    const line = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(r.stdout).not.toContain(SECRET);
    expect(line).toMatchObject({
      msg: 'cannot reach nats://n:4222',
      servers: 'nats://n:4222',
      sasl: { password: '[redacted]' },
      err: { message: 'connect nats://n:4222' },
    });
  });
});

describe('rxflow firewall replication status', () => {
  it('refuses a password or token on the command line, where ps shows it, with exit 2', async () => {
    for (const [flag, name, variable] of [
      ['--password', 'password', 'RXFLOW_NATS_PASSWORD'],
      ['--token', 'token', 'RXFLOW_NATS_TOKEN'],
    ]) {
      const r = await cli(['firewall', 'replication', 'status', '--nats', 'nats://n:4222', flag!, SECRET]);
      expect(r.code).toBe(2);
      expect(r.err).toContain(
        `replication status: --${name} would show the ${name} to every user of this host (ps); set $${variable} or give --${name}-file <file>`,
      );
      expect(r.err).not.toContain(SECRET);
    }
  });

  it('documents the file options and the environment variables in --help', async () => {
    const r = await cli(['firewall', 'replication', 'status', '--help']);
    expect(r.out).toContain('--password-file <file>');
    expect(r.out).toContain('$RXFLOW_NATS_PASSWORD');
    expect(r.out).not.toContain('--password <password>');
  });
});

describe('defaults inside defaults in a pipeline', () => {
  it('validates to the innermost default, the value run uses', () => {
    const text = `sources:\n  f:\n    type: file_replay\n    paths: ['\${A:-\${B:-/var/log/flows.jsonl}}']\nsinks:\n  o:\n    type: stdout\n    inputs: [f]\n`;
    expect(check(text).config!.components.get('f')!.config.paths).toEqual(['/var/log/flows.jsonl']);
    expect(check(text, { B: '/b' }).config!.components.get('f')!.config.paths).toEqual(['/b']);
  });
});

describe('rxflow status', () => {
  it('serves no secret field and no URL password, whatever a component reports', async () => {
    const path = join(dir, 'status.sock');
    const server = await StatusServer.listen(path, () => ({
      components: [
        {
          id: 'n',
          health: 'degraded: nats nats://alice:hunter2@n1:4222 refused',
          config: { password: 'pw-1234' },
        },
      ],
    }));
    try {
      expect(await readStatus(path)).toEqual({
        components: [
          { id: 'n', health: 'degraded: nats nats://n1:4222 refused', config: { password: '[redacted]' } },
        ],
      });
    } finally {
      await server.close();
    }
  });
});
