/**
 * The OpenTelemetry resource of an rxflow agent: who is reporting, so that a fleet's series never
 * merge in a backend.
 *
 * Layers, each overriding the one before (the SDK's own merge order):
 * 1. defaults: `service.name` rxflow, `service.version` from package.json, the SDK's telemetry.sdk.*;
 * 2. detected: host.name/arch/id, os.type/version, process.pid/runtime.* and the rest of the SDK's
 *    host, os and process detectors;
 * 3. `service.instance.id`, derived (see serviceInstanceId);
 * 4. the environment, read by the SDK's envDetector as every OTel SDK does: OTEL_RESOURCE_ATTRIBUTES
 *    (`key=value` pairs separated by commas, percent-decoded) and OTEL_SERVICE_NAME, which wins over
 *    a `service.name` in OTEL_RESOURCE_ATTRIBUTES. A user's value always wins over a detected one.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import {
  defaultResource,
  detectResources,
  envDetector,
  hostDetector,
  osDetector,
  processDetector,
  resourceFromAttributes,
  type Resource,
  type ResourceDetector,
} from '@opentelemetry/resources';
import type { Logger } from '../../logger.js';
import { packageRoot } from '../../paths.js';

export const ATTR_SERVICE_NAME = 'service.name';
export const ATTR_SERVICE_VERSION = 'service.version';
export const ATTR_SERVICE_INSTANCE_ID = 'service.instance.id';
const ATTR_HOST_ID = 'host.id';

/** `service.name` unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say otherwise. */
export const DEFAULT_SERVICE_NAME = 'rxflow';

/**
 * The namespace semantic conventions give for a `service.instance.id` made as a UUID v5
 * (resource/service.md): ids derived the same way by different software never collide.
 */
const SERVICE_INSTANCE_NAMESPACE = '4d63009a-8d0f-11ee-aad7-4c796ed8e320';

/** An RFC 9562 name-based UUID (version 5, SHA-1) of `name` in `namespace`. */
export function uuidV5(namespace: string, name: string): string {
  const ns = Buffer.from(namespace.replace(/-/g, ''), 'hex');
  const hash = createHash('sha1').update(ns).update(name, 'utf8').digest();
  hash[6] = (hash[6]! & 0x0f) | 0x50;
  hash[8] = (hash[8]! & 0x3f) | 0x80;
  const hex = hash.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The systemd/D-Bus machine id, from the files the SDK's hostDetector reads for host.id. */
export function machineId(): string | undefined {
  for (const path of ['/etc/machine-id', '/var/lib/dbus/machine-id']) {
    try {
      const id = readFileSync(path, 'utf8').trim();
      if (id !== '') return id;
    } catch {
      // Not there (a container without one): try the next.
    }
  }
  return undefined;
}

/** What identifies the host across restarts and reboots: its machine id, else its name. */
export function hostKey(): string {
  return machineId() ?? hostname();
}

/**
 * The SDK's hostDetector with host.id read synchronously: the SDK reads it asynchronously, and a
 * resource with a pending attribute serves Prometheus a target_info without it (and logs an error
 * each scrape) until someone awaits it. The meter provider is made synchronously, in build().
 */
const syncHostDetector: ResourceDetector = {
  detect(config) {
    return { attributes: { ...hostDetector.detect(config).attributes, [ATTR_HOST_ID]: machineId() } };
  },
};

/**
 * A `service.instance.id` that stays the same across restarts of the same agent and differs between
 * agents: a UUID v5 of the host's machine id and the pipeline's name, as semantic conventions
 * recommend for ids derived from what identifies the instance. The pipeline's name is already what
 * tells two agents on one host apart (it names the status socket), so nothing has to be stored: a
 * UUID kept under the run directory would be lost with /run on every reboot and need write access
 * there. A fleet manager that knows better sets it in OTEL_RESOURCE_ATTRIBUTES, which wins.
 */
export function serviceInstanceId(pipeline: string, host: string = hostKey()): string {
  return uuidV5(SERVICE_INSTANCE_NAMESPACE, `${host}/${pipeline}`);
}

let version: string | undefined;

/** rxflow's version, from its package.json. */
export function packageVersion(): string {
  version ??= (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string })
    .version;
  return version;
}

export interface AgentResourceOptions {
  /** The pipeline's name; with the host, it makes service.instance.id. */
  pipeline?: string;
  /** Told when OTEL_RESOURCE_ATTRIBUTES is set but unusable (the SDK drops it silently). */
  logger?: Logger;
}

/** The resource of this agent (see the module's comment for where each attribute comes from). */
export function agentResource(options: AgentResourceOptions = {}): Resource {
  const detected = detectResources({ detectors: [syncHostDetector, osDetector, processDetector] });
  const fromEnv = detectResources({ detectors: [envDetector] });
  const raw = process.env.OTEL_RESOURCE_ATTRIBUTES;
  if (raw !== undefined && /[^,\s]/.test(raw)) {
    const named = process.env.OTEL_SERVICE_NAME ? 1 : 0;
    // Any usable value gives at least one attribute; the SDK discards the whole variable otherwise.
    if (Object.keys(fromEnv.attributes).length <= named) {
      options.logger?.warn(
        { OTEL_RESOURCE_ATTRIBUTES: raw },
        "otel_metrics sink: OTEL_RESOURCE_ATTRIBUTES is ignored: write key=value pairs separated by ',' and percent-encode ',' '=' and '%' in keys and values",
      );
    }
  }
  return defaultResource()
    .merge(
      resourceFromAttributes({
        [ATTR_SERVICE_NAME]: DEFAULT_SERVICE_NAME,
        [ATTR_SERVICE_VERSION]: packageVersion(),
      }),
    )
    .merge(detected)
    .merge(
      resourceFromAttributes({ [ATTR_SERVICE_INSTANCE_ID]: serviceInstanceId(options.pipeline ?? 'rxflow') }),
    )
    .merge(fromEnv);
}
