import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../../../src/logger.js';
import { otlpProtocol } from '../../../src/sinks/otel/exporter.js';
import { agentResource, serviceInstanceId, uuidV5 } from '../../../src/sinks/otel/resource.js';

afterEach(() => vi.unstubAllEnvs());

/** A resource's attributes with the environment stubbed; the rest of process.env as it is. */
function resourceWith(env: Record<string, string>, pipeline = 'edge') {
  for (const name of ['OTEL_SERVICE_NAME', 'OTEL_RESOURCE_ATTRIBUTES']) vi.stubEnv(name, env[name] ?? '');
  const warnings: unknown[][] = [];
  const logger = silentLogger();
  logger.warn = (...args: unknown[]) => void warnings.push(args);
  const resource = agentResource({ pipeline, logger });
  expect(resource.asyncAttributesPending).toBe(false);
  return { attributes: resource.attributes, warnings };
}

describe('service.instance.id', () => {
  it('is a UUID v5 as RFC 9562 makes it', () => {
    // Python's uuid.uuid5(uuid.NAMESPACE_DNS, 'www.example.com').
    expect(uuidV5('6ba7b810-9dad-11d1-80b4-00c04fd430c8', 'www.example.com')).toBe(
      '2ed6657d-e927-568b-95e1-2665a8aea6a2',
    );
  });

  it('is the UUID v5 of host and pipeline in the namespace semantic conventions give', () => {
    // Python's uuid.uuid5(uuid.UUID('4d63009a-8d0f-11ee-aad7-4c796ed8e320'), '<host>/edge').
    expect(serviceInstanceId('edge', '3d1219c7c4c5404aaa1f6d2a48adfda4')).toBe(
      '0d1d7d51-2eb3-5128-923f-a211ce96d922',
    );
    expect(serviceInstanceId('edge')).toBe(serviceInstanceId('edge'));
    expect(serviceInstanceId('core')).not.toBe(serviceInstanceId('edge'));
    expect(serviceInstanceId('edge', 'other-host')).not.toBe(serviceInstanceId('edge'));
  });
});

describe('agentResource', () => {
  it('defaults: service rxflow at the package version, host, os and process detected', () => {
    const { attributes, warnings } = resourceWith({});
    const version = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;
    expect(attributes).toMatchObject({
      'service.name': 'rxflow',
      'service.version': version,
      'service.instance.id': serviceInstanceId('edge'),
      'host.name': hostname(),
      'os.type': 'linux',
      'process.pid': process.pid,
      'process.runtime.name': 'nodejs',
      'process.runtime.version': process.versions.node,
    });
    expect(warnings).toEqual([]);
  });

  it('takes OTEL_RESOURCE_ATTRIBUTES percent-decoded, and OTEL_SERVICE_NAME over its service.name', () => {
    const { attributes } = resourceWith({
      OTEL_SERVICE_NAME: 'edge-metrics',
      OTEL_RESOURCE_ATTRIBUTES:
        'service.name=not-this,service.instance.id=node-7,host.name=from-env,k8s.node.name=w%2C1%3Db',
    });
    expect(attributes).toMatchObject({
      'service.name': 'edge-metrics',
      // A user's value wins over what rxflow derives or detects.
      'service.instance.id': 'node-7',
      'host.name': 'from-env',
      'k8s.node.name': 'w,1=b',
    });
  });

  it('takes service.name from OTEL_RESOURCE_ATTRIBUTES without OTEL_SERVICE_NAME', () => {
    expect(resourceWith({ OTEL_RESOURCE_ATTRIBUTES: 'service.name=flows' }).attributes['service.name']).toBe(
      'flows',
    );
  });

  it('says so when OTEL_RESOURCE_ATTRIBUTES cannot be used, and keeps the rest', () => {
    const { attributes, warnings } = resourceWith({
      OTEL_SERVICE_NAME: 'edge-metrics',
      OTEL_RESOURCE_ATTRIBUTES: 'a=b,url=http://x/?q=1',
    });
    expect(attributes['a']).toBeUndefined();
    expect(attributes['service.name']).toBe('edge-metrics');
    expect(warnings).toEqual([
      [
        { OTEL_RESOURCE_ATTRIBUTES: 'a=b,url=http://x/?q=1' },
        "otel_metrics sink: OTEL_RESOURCE_ATTRIBUTES is ignored: write key=value pairs separated by ',' and percent-encode ',' '=' and '%' in keys and values",
      ],
    ]);
  });
});

describe('otlpProtocol', () => {
  it('is http/protobuf unless OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL say otherwise, the metrics one first', () => {
    expect(otlpProtocol({})).toBe('http/protobuf');
    expect(otlpProtocol({ OTEL_EXPORTER_OTLP_PROTOCOL: ' ' })).toBe('http/protobuf');
    expect(otlpProtocol({ OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' })).toBe('http/json');
    expect(
      otlpProtocol({
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
        OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/protobuf',
      }),
    ).toBe('http/protobuf');
  });

  it('refuses a protocol rxflow does not push, naming the variable', () => {
    expect(() => otlpProtocol({ OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'grpc' })).toThrow(
      "otel_metrics sink: OTEL_EXPORTER_OTLP_METRICS_PROTOCOL is 'grpc', which rxflow cannot push; set it to http/protobuf or http/json",
    );
  });
});
