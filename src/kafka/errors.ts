import { RxflowError, type RxflowErrorOptions } from '../errors.js';

export interface KafkaErrorOptions extends RxflowErrorOptions {
  /**
   * Whether trying again can help, when this layer knows better than the error's cause (a codec
   * the broker cannot take, a sequence error already resolved); see kafkaErrorRetriable.
   */
  retriable?: boolean;
}

/**
 * An error of the Kafka client (src/kafka/): connections, Produce, record batches, idempotence,
 * codecs. The message starts with the component it serves ("kafka sink", "kafka consumer").
 */
export class KafkaError extends RxflowError {
  override name = 'KafkaError';
  readonly retriable: boolean | undefined;

  constructor(code: string, message: string, options?: KafkaErrorOptions) {
    super(code, message, options);
    this.retriable = options?.retriable;
  }
}
