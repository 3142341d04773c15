import { describe, expect, it } from 'vitest';
import { formatProblem } from '../../../src/config/errors.js';
import { checkPipeline } from '../../../src/pipeline/load.js';
import { defaultRegistry } from '../../../src/pipeline/registry.js';
import type { MachineMemory } from '../../../src/pipeline/resources.js';

interface Bounded {
  path: string;
  minimum: unknown;
  maximum: unknown;
}

/** Every integer or number option of a schema, at any depth, with its bounds. */
function numericOptions(schema: unknown, path: string, out: Bounded[] = []): Bounded[] {
  if (schema === null || typeof schema !== 'object') return out;
  const s = schema as Record<string, unknown>;
  const types = Array.isArray(s.type) ? (s.type as unknown[]) : [s.type];
  if ((types.includes('integer') || types.includes('number')) && s.enum === undefined) {
    out.push({ path, minimum: s.minimum, maximum: s.maximum });
  }
  for (const [k, v] of Object.entries((s.properties as Record<string, unknown> | undefined) ?? {})) {
    numericOptions(v, `${path}.${k}`, out);
  }
  if (s.items !== undefined) numericOptions(s.items, `${path}[]`, out);
  if (typeof s.additionalProperties === 'object') numericOptions(s.additionalProperties, `${path}.*`, out);
  for (const k of ['anyOf', 'oneOf', 'allOf']) {
    ((s[k] as unknown[] | undefined) ?? []).forEach((b) => numericOptions(b, path, out));
  }
  return out;
}

describe('component schemas', () => {
  const modules = defaultRegistry().modules;
  const options = modules.flatMap((m) => numericOptions(m.schema, `${m.kind}.${m.type}`));

  it('have numeric options to check', () => {
    expect(options.length).toBeGreaterThan(40);
  });

  it('give every numeric option a minimum and a maximum', () => {
    const unbounded = options
      .filter((o) => typeof o.minimum !== 'number' || typeof o.maximum !== 'number')
      .map((o) => `${o.path} (minimum ${String(o.minimum)}, maximum ${String(o.maximum)})`);
    expect(unbounded).toEqual([]);
  });

  it('hold every duration within what a Node timer can wait (2^31-1 ms)', () => {
    const long = options
      .filter((o) => /_ms(\[\])?$/.test(o.path) && !((o.maximum as number) <= 2 ** 31 - 1))
      .map((o) => o.path);
    expect(long).toEqual([]);
  });
});

const MACHINE = { availableBytes: 23e9, possibleCpus: 2 };

function problems(options: string, machine: MachineMemory = MACHINE): string[] {
  const text = `sources:\n  flows:\n    type: ebpf_flows\n    interfaces: [eth0]\n${options}sinks:\n  out:\n    type: stdout\n    inputs: [flows]\n`;
  return checkPipeline(text, 'p.yaml', { env: {}, machine }).problems.map(formatProblem);
}

describe('size and duration options at validate', () => {
  it('refuses a flow cache that would lock more memory than the machine has, with the estimate', () => {
    expect(problems('    cache_max_flows: 100000000\n')).toEqual([
      'p.yaml:5:22: sources.flows.cache_max_flows: cache_max_flows 100000000 would lock about 63.2 GB (2 flow maps x 100000000 entries x (128 bytes x 2 possible cpus + 60 bytes of key)); with ringbuf_size_bytes 16.8 MB: 63.2 GB in all, but the machine has 23.0 GB available and a pipeline may lock at most half of it; lower it',
    ]);
  });

  it('counts the drop maps when drops are on, and only then', () => {
    const drops = '    drops_max_flows: 16000000\n    cache_max_flows: 1000\n';
    const memlock = { ...MACHINE, memlockBytes: 1e9 };
    expect(problems(`    drops: false\n${drops}`, memlock)).toEqual([]);
    expect(problems(`    drops: true\n${drops}`, memlock)).toEqual([
      'p.yaml:6:22: sources.flows.drops_max_flows: drops_max_flows 16000000 would lock about 4.0 GB (2 drop maps x 16000000 entries x (32 bytes x 2 possible cpus + 60 bytes of key)); with cache_max_flows 632.0 kB, ringbuf_size_bytes 16.8 MB: 4.0 GB in all, but RLIMIT_MEMLOCK allows 1.0 GB; lower it, or raise the limit (ulimit -l, LimitMEMLOCK= in a systemd unit)',
    ]);
  });

  it('counts the dns name map when query names are on, and only then', () => {
    const names = '    dns_query_name_max_flows: 1048576\n    cache_max_flows: 1000\n';
    const memlock = { ...MACHINE, memlockBytes: 100e6 };
    expect(problems(`    dns_query_name: false\n${names}`, memlock)).toEqual([]);
    expect(problems(`    dns_query_name: true\n${names}`, memlock)).toEqual([
      'p.yaml:6:31: sources.flows.dns_query_name_max_flows: dns_query_name_max_flows 1048576 would lock about 335.5 MB (one name map x 1048576 entries x (260 bytes of name + 60 bytes of key)); with cache_max_flows 632.0 kB, ringbuf_size_bytes 16.8 MB: 353.0 MB in all, but RLIMIT_MEMLOCK allows 100.0 MB; lower it, or raise the limit (ulimit -l, LimitMEMLOCK= in a systemd unit)',
    ]);
  });

  it('takes a flow cache the machine can hold', () => {
    expect(problems('    cache_max_flows: 1000000\n')).toEqual([]);
  });

  it('compares with RLIMIT_MEMLOCK where the kernel charges maps to it', () => {
    expect(problems('    cache_max_flows: 100000\n', { ...MACHINE, memlockBytes: 8 * 1024 * 1024 })).toEqual([
      'p.yaml:5:22: sources.flows.cache_max_flows: cache_max_flows 100000 would lock about 63.2 MB (2 flow maps x 100000 entries x (128 bytes x 2 possible cpus + 60 bytes of key)); with ringbuf_size_bytes 16.8 MB: 80.0 MB in all, but RLIMIT_MEMLOCK allows 8.4 MB; lower it, or raise the limit (ulimit -l, LimitMEMLOCK= in a systemd unit)',
    ]);
  });

  it('gives sizes past what the kernel takes their maximum, not a wrapped value', () => {
    expect(problems('    cache_max_flows: 4294967296\n    ringbuf_size_bytes: 1099511627776\n')).toEqual([
      'p.yaml:5:22: sources.flows.cache_max_flows: must be <= 268435456, got 4294967296',
      'p.yaml:6:25: sources.flows.ringbuf_size_bytes: must be <= 1073741824, got 1099511627776',
    ]);
  });

  it('refuses a ring buffer size the kernel refuses', () => {
    expect(problems('    ringbuf_size_bytes: 3000000\n')).toEqual([
      'p.yaml:5:25: sources.flows.ringbuf_size_bytes: must be a power of two (the kernel refuses other sizes), got 3000000; use 2097152 or 4194304',
    ]);
  });

  it('refuses a duration a Node timer would turn into 1 ms', () => {
    expect(problems('    eviction_interval_ms: 100000h\n')).toEqual([
      'p.yaml:5:27: sources.flows.eviction_interval_ms: must be at most 2147483647 ms (about 24.8 days), the longest a timer can wait; got 360000000000 ms',
    ]);
    expect(problems('    eviction_interval_ms: 596h\n')).toEqual([]);
  });
});

describe('options bounded by other options, at validate', () => {
  function ipfix(options: string): string[] {
    const text = `sources:\n  flows:\n    type: ebpf_flows\n    interfaces: [eth0]\nsinks:\n  out:\n    type: ipfix\n    inputs: [flows]\n    collector: 127.0.0.1:4739\n${options}`;
    return checkPipeline(text, 'p.yaml', { env: {}, machine: MACHINE }).problems.map(formatProblem);
  }

  it("refuses an ipfix max_message_bytes that cannot hold the templates and a record, enterprise_number's too", () => {
    expect(ipfix('    max_message_bytes: 600\n')).toEqual([
      'p.yaml:10:24: sinks.out.max_message_bytes: max_message_bytes 600 cannot hold the templates (480 bytes) and a record; raise it to 696 or more',
    ]);
    expect(ipfix('    max_message_bytes: 696\n')).toEqual([]);
    expect(ipfix('    max_message_bytes: 696\n    enterprise_number: 32473\n')).toEqual([
      'p.yaml:10:24: sinks.out.max_message_bytes: max_message_bytes 696 cannot hold the templates (920 bytes with enterprise_number) and a record; raise it to 1136 or more',
    ]);
    expect(ipfix('    max_message_bytes: 1136\n    enterprise_number: 32473\n')).toEqual([]);
    expect(ipfix('    enterprise_number: 32473\n')).toEqual([]);
  });
});
