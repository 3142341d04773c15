/**
 * The connection options the kafka sink and the kafka_consumer source share: brokers, client id,
 * timeouts, retries with backoff, TLS and SASL. One schema fragment and one set of defaults, so
 * both components read and document them alike; each places the properties in its own schema.
 */
export interface TlsOptions {
  ca_file?: string;
  cert_file?: string;
  key_file?: string;
  insecure_skip_verify?: boolean;
  server_name?: string;
}

export type SaslMechanism = 'plain' | 'scram-sha-256' | 'scram-sha-512';

export interface SaslOptions {
  mechanism: SaslMechanism;
  username: string;
  password: string;
}

export interface KafkaConnectionConfig {
  /** `host:port` of one or more brokers. */
  bootstrap_servers: string[];
  client_id?: string;
  connection_timeout_ms?: number;
  request_timeout_ms?: number;
  retries?: number;
  retry_initial_ms?: number;
  retry_max_ms?: number;
  tls?: TlsOptions;
  sasl?: SaslOptions;
}

export const CONNECTION_DEFAULTS = {
  client_id: 'rxflow',
  connection_timeout_ms: 3000,
  request_timeout_ms: 30_000,
  retries: 3,
  retry_initial_ms: 100,
  retry_max_ms: 5000,
} as const satisfies Partial<KafkaConnectionConfig>;

/** Connection options with their defaults filled in. */
export type ResolvedConnection = Required<Omit<KafkaConnectionConfig, 'tls' | 'sasl'>> &
  Pick<KafkaConnectionConfig, 'tls' | 'sasl'>;

type Schema = Record<string, unknown>;

export interface ConnectionSchemaOptions {
  /** The component's schema of a duration option (msOption of src/component.ts). */
  ms: (description: string, defaultValue: number, minimum: number) => Schema;
  /** What `retries` counts, for this component. */
  retries: string;
}

/** The schema properties of the connection options, by name. */
export function connectionSchema({ ms, retries }: ConnectionSchemaOptions) {
  return {
    bootstrap_servers: {
      type: 'array',
      minItems: 1,
      items: { type: 'string', pattern: '^\\S+:[0-9]{1,5}$' },
      description: 'Brokers to bootstrap from, as host:port.',
    },
    client_id: {
      type: 'string',
      minLength: 1,
      default: CONNECTION_DEFAULTS.client_id,
      description: 'Kafka client id.',
    },
    connection_timeout_ms: ms(
      'Time to establish a connection to a broker.',
      CONNECTION_DEFAULTS.connection_timeout_ms,
      1,
    ),
    request_timeout_ms: ms(
      'Time a broker has to answer a request.',
      CONNECTION_DEFAULTS.request_timeout_ms,
      1,
    ),
    retries: {
      type: 'integer',
      minimum: 0,
      maximum: 1000,
      default: CONNECTION_DEFAULTS.retries,
      description: retries,
    },
    retry_initial_ms: ms(
      'First backoff after a failure; it doubles with every further failure.',
      CONNECTION_DEFAULTS.retry_initial_ms,
      1,
    ),
    retry_max_ms: ms('Longest backoff between attempts.', CONNECTION_DEFAULTS.retry_max_ms, 1),
    tls: {
      type: 'object',
      additionalProperties: false,
      description: 'Connect with TLS. Files are PEM.',
      properties: {
        ca_file: { type: 'string', description: 'CA certificates to trust instead of the system ones.' },
        cert_file: { type: 'string', description: 'Client certificate, for mutual TLS; needs key_file.' },
        key_file: { type: 'string', description: 'Private key of cert_file.' },
        insecure_skip_verify: {
          type: 'boolean',
          default: false,
          description: 'Accept any broker certificate.',
        },
        server_name: { type: 'string', description: 'Name to verify the broker certificate against (SNI).' },
      },
    },
    sasl: {
      type: 'object',
      additionalProperties: false,
      required: ['mechanism', 'username'],
      // ajv's strict mode wants each required key declared beside it.
      anyOf: [
        { properties: { password: true }, required: ['password'] },
        { properties: { password_file: true }, required: ['password_file'] },
      ],
      description:
        'Authenticate with SASL. The password comes from password, e.g. "${KAFKA_PASSWORD}" from the environment, or from the file password_file names; it is never logged or printed.',
      properties: {
        mechanism: { enum: ['plain', 'scram-sha-256', 'scram-sha-512'] },
        username: { type: 'string' },
        password: { type: 'string', description: 'The password; always text, whatever it looks like.' },
        password_file: {
          type: 'string',
          minLength: 1,
          description: 'A file holding the password (one trailing newline is ignored), instead of password.',
        },
      },
    },
  } satisfies Record<string, Schema>;
}

/**
 * What is wrong with the connection options beyond what the schema checks, as the end of a message
 * the component starts with its name; undefined when nothing is.
 */
export function connectionProblem(config: ResolvedConnection): string | undefined {
  if (config.bootstrap_servers.length === 0) return 'bootstrap_servers is empty; list at least one host:port';
  if (config.retry_max_ms < config.retry_initial_ms)
    return `retry_max_ms (${config.retry_max_ms}) is below retry_initial_ms (${config.retry_initial_ms}); raise it`;
  return undefined;
}
