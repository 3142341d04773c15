import type { ComponentContext, TransformModule } from '../component.js';
import { account, type AccountOptions } from '../records/account.js';

export { account, type AccountOptions } from '../records/account.js';

export interface AccountConfig {
  max_entries: number;
  evict_timeout_ms: number;
}

const accountModule: TransformModule<AccountConfig> = {
  type: 'account',
  kind: 'transform',
  description: 'aggregates single-packet flow records in userspace by flow key, like the kernel map does',
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      max_entries: {
        type: 'integer',
        minimum: 1,
        maximum: 16777216,
        default: 5000,
        description: 'distinct flows held before everything is emitted',
      },
      evict_timeout_ms: {
        type: 'integer',
        minimum: 1,
        maximum: 2147483647,
        default: 5000,
        description: 'longest a flow waits in the table from its first record, in milliseconds',
      },
    },
  },
  example: { max_entries: 5000, evict_timeout_ms: 5000 },
  build(config: AccountConfig, context: ComponentContext) {
    const options: AccountOptions = {
      maxEntries: config.max_entries,
      evictTimeoutMs: config.evict_timeout_ms,
      counters: context.counters,
      id: context.id,
    };
    if (context.scheduler) options.scheduler = context.scheduler;
    return account(options);
  },
};

export default accountModule;
