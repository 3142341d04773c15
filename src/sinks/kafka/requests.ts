import type { Compression } from '../../kafka/compress.js';
import type { EncodedRequest } from '../../kafka/produce.js';
import type { FlowRecord } from '../../records/flow.js';
import { messageOf } from '../../errors.js';
import { SinkError } from '../errors.js';
import { RequestEncoder, type Encoding, type KeyMode } from './encode.js';

/** Starting estimate of encoded bytes per record, refined by every request. */
const FIRST_BYTES_PER_RECORD: Record<Encoding, number> = { json: 500, protobuf: 120 };

export interface RequestBuilderOptions {
  encoding: Encoding;
  recordsPerMessage: number;
  key: KeyMode;
  compression: Compression;
  /** Idempotent produce: batches are stamped before they go out. */
  stamped: boolean;
  batchMaxRecords: number;
  batchMaxBytes: number;
}

/**
 * Request building of the kafka sink: how many records a produce request takes (batch_max_records,
 * and about batch_max_bytes by the bytes per record of the requests before), and their encoding
 * into record batches.
 */
export class RequestBuilder {
  private readonly encoder: RequestEncoder;
  private bytesPerRecord: number;

  constructor(private readonly options: RequestBuilderOptions) {
    this.encoder = new RequestEncoder({
      encoding: options.encoding,
      recordsPerMessage: options.recordsPerMessage,
      key: options.key,
      compression: options.compression,
      stamped: options.stamped,
    });
    this.bytesPerRecord = FIRST_BYTES_PER_RECORD[options.encoding];
  }

  /** Records the next request takes at most. */
  recordsPerRequest(): number {
    const byBytes = Math.max(1, Math.floor(this.options.batchMaxBytes / this.bytesPerRecord));
    return Math.min(this.options.batchMaxRecords, byBytes);
  }

  /** The request of `records` for a topic of `partitions`; throws SinkError EENCODE when they do not encode. */
  async encode(records: FlowRecord[], partitions: number): Promise<EncodedRequest> {
    let encoded: EncodedRequest;
    try {
      encoded = await this.encoder.encode(records, partitions, this.bytesPerRecord, Date.now());
    } catch (err) {
      throw new SinkError(
        'EENCODE',
        `kafka sink: cannot encode records as ${this.options.encoding}: ${messageOf(err)}`,
        {
          cause: err,
        },
      );
    }
    if (records.length > 0 && encoded.bytes > 0) this.bytesPerRecord = encoded.bytes / records.length;
    return encoded;
  }

  /** Gives the request's buffers back once it has settled. */
  release(encoded: EncodedRequest): void {
    this.encoder.release(encoded);
  }
}
