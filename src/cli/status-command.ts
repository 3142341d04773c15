import type { CliIo } from './io.js';
import { findStatusSocket, formatStatus, readStatus, requestFlush } from './status.js';

/** The socket a command talks to: --socket, else $RXFLOW_STATUS_SOCKET, else the only one running. */
function socketOf(options: { socket?: string }, io: CliIo, command: string): string {
  return options.socket ?? io.env.RXFLOW_STATUS_SOCKET ?? findStatusSocket(io.env, command);
}

/** `rxflow status`: prints the state of a running pipeline; 1 when it cannot be reached. */
export async function statusCommand(
  options: { socket?: string; json?: boolean },
  io: CliIo,
): Promise<number> {
  try {
    const status = await readStatus(socketOf(options, io, 'status'));
    io.out(options.json ? `${JSON.stringify(status, null, 2)}\n` : formatStatus(status));
    return 0;
  } catch (err) {
    io.err(`${(err as Error).message}\n`);
    return 1;
  }
}

/**
 * `rxflow flush`: asks a running pipeline to read and empty its kernel maps now; prints which
 * sources were asked. 1 when no pipeline can be reached or it is not running.
 */
export async function flushCommand(options: { socket?: string; json?: boolean }, io: CliIo): Promise<number> {
  try {
    const answer = await requestFlush(socketOf(options, io, 'flush'));
    if (options.json) io.out(`${JSON.stringify(answer, null, 2)}\n`);
    else if (answer.sources.length === 0) {
      io.out(
        `flush: pipeline ${answer.pipeline} (pid ${answer.pid}) has no source that reads a kernel map\n`,
      );
    } else {
      io.out(
        `flush: pipeline ${answer.pipeline} (pid ${answer.pid}): ${answer.sources.join(', ')} reading the kernel now\n`,
      );
    }
    return 0;
  } catch (err) {
    io.err(`${(err as Error).message}\n`);
    return 1;
  }
}
