import { describe, expect, it } from 'vitest';
import { createCliLogger, serializeError } from '../../../src/cli/log.js';
import { LogTail } from '../../../src/cli/log-tail.js';
import { DatapathError } from '../../../src/datapath/index.js';

class Found extends Error {
  constructor(
    message: string,
    readonly code: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

describe('serializeError', () => {
  it('logs an expected error by message, code and causes, without a stack', () => {
    const cause = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9092'), { code: 'ECONNREFUSED' });
    const err = new Found('kafka sink: brokers unreachable', 'EBROKER', { cause });
    expect(serializeError(err, false)).toEqual({
      type: 'Error',
      message: 'kafka sink: brokers unreachable',
      code: 'EBROKER',
      cause: { type: 'Error', message: 'connect ECONNREFUSED 127.0.0.1:9092', code: 'ECONNREFUSED' },
    });
  });

  it('keeps the stack of a programming error, and of every error at debug', () => {
    const bug = new TypeError("Cannot read properties of undefined (reading 'x')");
    expect(serializeError(bug, false)).toMatchObject({ type: 'TypeError', stack: bug.stack });
    const err = new DatapathError('ENOIFACE', 'attach tc ingress eth9: no such interface');
    expect(serializeError(err, true)).toMatchObject({ code: 'ENOIFACE', stack: err.stack });
  });

  it('writes a non-Error as its text', () => {
    expect(serializeError('boom', false)).toBe('boom');
  });
});

describe('createCliLogger', () => {
  it('writes JSON lines with the err serializer, children included', () => {
    const lines: string[] = [];
    const logger = createCliLogger('info', { write: (line: string) => void lines.push(line) });
    logger
      .child({ component: 'flows' })
      .error({ err: new DatapathError('ENOIFACE', 'no such interface') }, 'failed');
    logger.debug('not at info');
    expect(lines).toHaveLength(1);
    const entry = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(entry).toMatchObject({
      name: 'rxflow',
      level: 50,
      component: 'flows',
      msg: 'failed',
      err: { type: 'DatapathError', message: 'no such interface', code: 'ENOIFACE' },
    });
    expect(JSON.stringify(entry)).not.toContain('stack');
  });
});

describe('LogTail', () => {
  it('keeps the last lines as level: message: error', () => {
    const tail = new LogTail(2);
    const logger = createCliLogger('warn', tail);
    logger.warn('one');
    logger.error({ err: new Error('broker down') }, 'two');
    logger.warn('three');
    tail.write('not json\n');
    expect(tail.lines()).toEqual(['warn: three', 'not json']);
    const t2 = new LogTail(5);
    createCliLogger('warn', t2).error({ err: new Error('broker down') }, 'kafka sink failed');
    expect(t2.lines()).toEqual(['error: kafka sink failed: broker down']);
  });
});
