import { describe, expect, it } from 'vitest';
import { parseDuration } from '../../../src/config/duration.js';
import { interpolate, resolvePlainScalar } from '../../../src/config/interpolate.js';
import { closest } from '../../../src/config/suggest.js';

describe('interpolate', () => {
  const env = { HOST: 'nats.local', PORT: '4222', EMPTY: '' };

  it('replaces set variables, anywhere in the text', () => {
    expect(interpolate('nats://${HOST}:${PORT}/x', env)).toEqual({
      ok: true,
      value: 'nats://nats.local:4222/x',
      changed: true,
    });
  });

  it('uses the default when the variable is unset or empty, and the value when set', () => {
    expect(interpolate('${NOPE:-eth0}', env)).toMatchObject({ value: 'eth0' });
    expect(interpolate('${EMPTY:-eth0}', env)).toMatchObject({ value: 'eth0' });
    expect(interpolate('${PORT:-1}', env)).toMatchObject({ value: '4222' });
    expect(interpolate('${NOPE:-}', env)).toMatchObject({ value: '' });
    expect(interpolate('${NOPE:-a:-b}', env)).toMatchObject({ value: 'a:-b' });
  });

  it('keeps a set but empty variable without default as empty', () => {
    expect(interpolate('[${EMPTY}]', env)).toMatchObject({ value: '[]' });
  });

  it('reads $$ as a literal $ and leaves other dollars alone', () => {
    expect(interpolate('$${HOST} costs $$5', env)).toMatchObject({ value: '${HOST} costs $5' });
    expect(interpolate('^eth[0-9]+$', env)).toEqual({ ok: true, value: '^eth[0-9]+$', changed: false });
    expect(interpolate('$HOST $', env)).toMatchObject({ value: '$HOST $' });
  });

  it('reports every unset variable, unterminated reference and bad name', () => {
    expect(interpolate('${A}-${HOST}-${B}', env)).toEqual({
      ok: false,
      errors: [
        {
          message: 'environment variable A is not set; set it, or give a default with ${A:-value}',
          token: '${A}',
        },
        {
          message: 'environment variable B is not set; set it, or give a default with ${B:-value}',
          token: '${B}',
        },
      ],
    });
    expect(interpolate('x${HOST', env)).toEqual({
      ok: false,
      errors: [
        {
          message: "unterminated '${' in 'x${HOST'; close it with '}' or write '$$' for a literal '$'",
          token: '${HOST',
        },
      ],
    });
    expect(interpolate('${}', env)).toEqual({
      ok: false,
      errors: [
        {
          message:
            "bad variable name '' in '${}'; names use letters, digits and '_' and do not start with a digit",
          token: '${}',
        },
      ],
    });
  });
});

describe('resolvePlainScalar', () => {
  it('types an interpolated plain value as YAML 1.2 would', () => {
    expect(resolvePlainScalar('5000')).toBe(5000);
    expect(resolvePlainScalar('-3')).toBe(-3);
    expect(resolvePlainScalar('0x1f')).toBe(31);
    expect(resolvePlainScalar('0o17')).toBe(15);
    expect(resolvePlainScalar('1.5e3')).toBe(1500);
    expect(resolvePlainScalar('true')).toBe(true);
    expect(resolvePlainScalar('False')).toBe(false);
    expect(resolvePlainScalar('')).toBe(null);
    expect(resolvePlainScalar('~')).toBe(null);
    expect(resolvePlainScalar('eth0')).toBe('eth0');
    expect(resolvePlainScalar('10.0.0.1')).toBe('10.0.0.1');
    expect(resolvePlainScalar('yes')).toBe('yes');
  });
});

describe('parseDuration', () => {
  it('reads milliseconds and durations with units', () => {
    expect(parseDuration('250')).toBe(250);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('5s')).toBe(5000);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('1.1s')).toBe(1100);
    expect(parseDuration('2m')).toBe(120_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration('1m30s')).toBe(90_000);
    expect(parseDuration('1h1m1s1ms')).toBe(3_661_001);
  });

  it('refuses what is not a whole number of milliseconds or not a duration', () => {
    for (const bad of ['', '5 parsecs', '5x', '5 s', '-5s', '0.5ms', '1d', 's', '1.s', '5sec', '1m 30s']) {
      expect(parseDuration(bad), bad).toBeUndefined();
    }
  });
});

describe('closest', () => {
  it('suggests a likely typo and nothing for an unrelated word', () => {
    expect(closest('max_entrie', ['max_entries', 'evict_timeout_ms'])).toBe('max_entries');
    expect(closest('frist', ['all', 'first', 'none'])).toBe('first');
    expect(closest('Sinks', ['sources', 'transforms', 'sinks'])).toBe('sinks');
    expect(closest('kafka', ['collect', 'stdout'])).toBeUndefined();
    expect(closest('x', [])).toBeUndefined();
  });
});

describe('interpolate: defaults inside defaults', () => {
  const env = { B: 'b', A: 'a' };

  it('reads a default that is itself a reference, as the shell does', () => {
    expect(interpolate('${X:-${Y:-x}}', {})).toEqual({ ok: true, value: 'x', changed: true });
    expect(interpolate('${X:-${B:-x}}', env)).toMatchObject({ value: 'b' });
    expect(interpolate('${A:-${B:-x}}', env)).toMatchObject({ value: 'a' });
    expect(interpolate('pre-${X:-${Y:-${B}}}-post', env)).toMatchObject({ value: 'pre-b-post' });
  });

  it('needs a variable of a default only when the default is used', () => {
    expect(interpolate('${A:-${UNSET}}', env)).toMatchObject({ ok: true, value: 'a' });
    expect(interpolate('${X:-${UNSET}}', env)).toEqual({
      ok: false,
      errors: [
        {
          message: 'environment variable UNSET is not set; set it, or give a default with ${UNSET:-value}',
          token: '${UNSET}',
        },
      ],
    });
  });

  it('reports an unclosed nested reference instead of keeping it as text', () => {
    expect(interpolate('${X:-${Y:-x}', {})).toMatchObject({ ok: false });
  });
});
