import { RxflowError } from '../errors.js';

/**
 * Errors of session replication. Codes:
 * - EBADCONFIG: an option is out of range or contradicts another
 * - ECONNECT: the NATS servers cannot be reached or refused the credentials
 * - EBUCKET: the KV bucket cannot be created or bound
 * - EKEY: a session key or KV key cannot be encoded or parsed
 * - EFORMAT: a KV value is not a replicated session of a known format version
 * - EWRITE: a KV write failed (timeout, no JetStream, rejected)
 * - EREAD: the bucket could not be read
 * - EWATCH: the watch of the bucket could not be set up or ended
 * - ELOAD: sessions could not be loaded into the kernel on boot
 * - ECLOSED: the replicator or bucket was closed
 * - EREADY: the readiness file or endpoint cannot be set up
 * - EFIREWALL: the kernel firewall whose sessions a node replicates cannot be opened
 */
export class HaError extends RxflowError {
  override readonly name = 'HaError';
}

/** The message of anything thrown, for logs and wrapped errors. */
export { messageOf } from '../errors.js';
