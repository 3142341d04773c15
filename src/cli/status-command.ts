import type { CliIo } from './io.js';
import { findStatusSocket, formatStatus, readStatus } from './status.js';

/** `rxflow status`: prints the state of a running pipeline; 1 when it cannot be reached. */
export async function statusCommand(
  options: { socket?: string; json?: boolean },
  io: CliIo,
): Promise<number> {
  try {
    const socket = options.socket ?? io.env.RXFLOW_STATUS_SOCKET ?? findStatusSocket(io.env);
    const status = await readStatus(socket);
    io.out(options.json ? `${JSON.stringify(status, null, 2)}\n` : formatStatus(status));
    return 0;
  } catch (err) {
    io.err(`${(err as Error).message}\n`);
    return 1;
  }
}
