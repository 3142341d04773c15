/**
 * The OTLP/HTTP metrics exporter, in the encoding the standard variables select:
 * OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else `http/protobuf` (the
 * specification's default). `http/json` is the SDK's JSON exporter; `http/protobuf` is the same
 * exporter with the SDK's protobuf serializer, which is all @opentelemetry/exporter-metrics-otlp-proto
 * adds. `grpc` is not spoken: asking for it fails the build instead of pushing in another encoding.
 *
 * The rest of the OTLP variables are the SDK's to read, as in any OTel SDK:
 * OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT (when the sink has no otlp_endpoint), _HEADERS,
 * _COMPRESSION, _CERTIFICATE..., OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE.
 */
import {
  OTLPMetricExporter,
  OTLPMetricExporterBase,
  type OTLPMetricExporterOptions,
} from '@opentelemetry/exporter-metrics-otlp-http';
import {
  convertLegacyHttpOptions,
  createOtlpHttpExportDelegate,
} from '@opentelemetry/otlp-exporter-base/node-http';
import { ProtobufMetricsSerializer } from '@opentelemetry/otlp-transformer';
import type { PushMetricExporter } from '@opentelemetry/sdk-metrics';
import { SinkError } from '../errors.js';

export type OtlpProtocol = 'http/protobuf' | 'http/json';

export const OTLP_PROTOCOLS: readonly OtlpProtocol[] = ['http/protobuf', 'http/json'];

type Env = Readonly<Record<string, string | undefined>>;

function setting(env: Env, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === undefined || value === '' ? undefined : value;
}

/** The OTLP protocol the environment selects for metrics; throws on one rxflow does not speak. */
export function otlpProtocol(env: Env = process.env): OtlpProtocol {
  for (const name of ['OTEL_EXPORTER_OTLP_METRICS_PROTOCOL', 'OTEL_EXPORTER_OTLP_PROTOCOL']) {
    const value = setting(env, name);
    if (value === undefined) continue;
    if ((OTLP_PROTOCOLS as readonly string[]).includes(value)) return value as OtlpProtocol;
    throw new SinkError(
      'EBADCONFIG',
      `otel_metrics sink: ${name} is '${value}', which rxflow cannot push; set it to http/protobuf or http/json`,
    );
  }
  return 'http/protobuf';
}

/** The OTLP endpoint the environment names for metrics, if any (the SDK resolves the URL itself). */
export function otlpEndpointFromEnv(env: Env = process.env): string | undefined {
  return setting(env, 'OTEL_EXPORTER_OTLP_METRICS_ENDPOINT') ?? setting(env, 'OTEL_EXPORTER_OTLP_ENDPOINT');
}

/** OTLP/HTTP with protobuf bodies, as @opentelemetry/exporter-metrics-otlp-proto builds it. */
class OtlpProtobufMetricExporter extends OTLPMetricExporterBase {
  constructor(config: OTLPMetricExporterOptions) {
    super(
      createOtlpHttpExportDelegate(
        convertLegacyHttpOptions(config, 'METRICS', 'v1/metrics', {
          'Content-Type': 'application/x-protobuf',
        }),
        ProtobufMetricsSerializer,
      ),
      config,
    );
  }
}

/** An exporter in `protocol`; without `url`, the SDK takes the endpoint from the environment. */
export function otlpMetricExporter(
  protocol: OtlpProtocol,
  config: OTLPMetricExporterOptions,
): PushMetricExporter {
  return protocol === 'http/json' ? new OTLPMetricExporter(config) : new OtlpProtobufMetricExporter(config);
}
