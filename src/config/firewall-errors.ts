import { RxflowError } from '../errors.js';

/**
 * The firewall's error, from reading its policy and settings (here, in config/) to the kernel
 * (datapath/firewall/), so it lives with the lowest layer that throws it. Codes:
 * - EADDRESS: an address or prefix that does not parse
 * - EARG: an argument out of range (a port, a MAC, a session field)
 * - ESETTING: an unknown setting name or key, or a value the setting does not take
 * - EPOLICY: a policy file with problems (the message lists each with file:line:column)
 * - ENOTLOADED: no firewall is loaded under the pin directory
 * - ELAYOUT: a record or value the TypeScript side cannot decode (object and code out of step)
 * - ENOIFACE: an interface name that does not exist
 */
export type FirewallErrorCode =
  'EADDRESS' | 'EARG' | 'ESETTING' | 'EPOLICY' | 'ENOTLOADED' | 'ELAYOUT' | 'ENOIFACE';

export class FirewallError extends RxflowError {
  override readonly name = 'FirewallError';
  declare readonly code: FirewallErrorCode;

  constructor(code: FirewallErrorCode, message: string, cause?: unknown) {
    super(code, message, { cause });
  }
}
