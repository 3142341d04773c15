import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import { redactValue } from '../redact.js';
import { CliError } from './errors.js';

/** Unix socket paths are limited by sockaddr_un.sun_path (108 bytes with the terminating NUL). */
const MAX_SOCKET_PATH = 107;

/** Whether something accepts connections on the unix socket `path`. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ path });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Serves a JSON document on a unix socket over HTTP (`GET /status`), which curl and `rxflow status`
 * read without any client library, and, given `flush`, takes `POST /flush` (`rxflow flush`),
 * answering with what `flush()` returns. A socket file left behind by a process that died is
 * replaced; one another process still serves is not.
 */
export class StatusServer {
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly server: Server,
    private readonly ino: number,
  ) {}

  static async listen(path: string, body: () => unknown, flush?: () => unknown): Promise<StatusServer> {
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
      throw new CliError(
        'ESOCKETPATH',
        `status socket ${path}: longer than ${MAX_SOCKET_PATH} bytes; pass a shorter --status-socket`,
      );
    }
    try {
      mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    } catch (err) {
      throw new CliError(
        'ESOCKETDIR',
        `status socket ${path}: cannot create ${dirname(path)} (${(err as NodeJS.ErrnoException).code}); run as root or pass --status-socket`,
        { cause: err },
      );
    }
    let existing;
    try {
      existing = lstatSync(path);
    } catch {
      existing = undefined;
    }
    if (existing) {
      if (!existing.isSocket()) {
        throw new CliError(
          'ESOCKETPATH',
          `status socket ${path}: a file that is not a socket is in the way; remove it`,
        );
      }
      if (await answers(path)) {
        throw new CliError(
          'ESOCKETBUSY',
          `status socket ${path}: another pipeline serves it; stop it, or pass --status-socket with another path`,
        );
      }
      unlinkSync(path);
    }
    const server = createServer((req, res) => {
      const send = (code: number, doc: unknown): void => {
        const text = `${JSON.stringify(redactValue(doc))}\n`;
        res.writeHead(code, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(text),
        });
        res.end(text);
      };
      const answer = (make: () => unknown): void => {
        try {
          send(200, make());
        } catch (err) {
          send(500, { error: (err as Error).message });
        }
      };
      if (req.url === '/flush' && flush !== undefined) {
        if (req.method === 'POST') answer(flush);
        else send(405, { error: 'method not allowed; POST /flush' });
        return;
      }
      if (req.method !== 'GET' || (req.url !== '/status' && req.url !== '/')) {
        send(404, { error: `not found; GET /status${flush === undefined ? '' : ' or POST /flush'}` });
        return;
      }
      answer(body);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new CliError(
            'ESOCKETLISTEN',
            `status socket ${path}: ${err.code ?? err.message}; pass another --status-socket`,
            {
              cause: err,
            },
          ),
        ),
      );
      server.listen(path, () => resolve());
    });
    // Never what keeps the process alive: the pipeline is.
    server.unref();
    chmodSync(path, 0o660);
    return new StatusServer(path, server, lstatSync(path).ino);
  }

  /** Stops serving and removes the socket file, unless another process has replaced it since. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
    try {
      if (lstatSync(this.path).ino === this.ino) unlinkSync(this.path);
    } catch {
      // Already gone.
    }
  }
}

/** host:port, [v6]:port; throws EHEALTHADDR otherwise. */
export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new CliError(
      'EHEALTHADDR',
      `health address '${text}': not host:port; give e.g. 127.0.0.1:8686, 0.0.0.0:8686 or [::1]:8686`,
    );
  }
  return { host: m[1] ?? m[2]!, port };
}

/** What the health endpoint answers a path with: an HTTP status and a JSON document. */
export interface HealthAnswer {
  code: number;
  doc: unknown;
}

/**
 * Serves the pipeline's health over HTTP on a TCP port, for liveness and readiness probes:
 * `answer(path)` gives the status code and document of a path, undefined for 404.
 */
export class HealthServer {
  private closed = false;

  private constructor(
    /** The address served, host:port, the port resolved when 0 was asked for. */
    readonly address: string,
    private readonly server: Server,
  ) {}

  static async listen(
    address: string,
    answer: (path: string) => HealthAnswer | undefined,
  ): Promise<HealthServer> {
    const { host, port } = parseHostPort(address);
    const server = createServer((req, res) => {
      const send = (code: number, doc: unknown): void => {
        const text = `${JSON.stringify(doc)}\n`;
        res.writeHead(code, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(text),
          'cache-control': 'no-store',
        });
        res.end(req.method === 'HEAD' ? undefined : text);
      };
      const path = (req.url ?? '/').split('?')[0]!;
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        send(405, { error: 'method not allowed; GET /livez, /readyz or /health' });
        return;
      }
      try {
        const a = answer(path);
        if (a === undefined) send(404, { error: 'not found; GET /livez, /readyz or /health' });
        else send(a.code, a.doc);
      } catch (err) {
        send(500, { error: (err as Error).message });
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new CliError(
            'EHEALTHLISTEN',
            `health endpoint ${address}: cannot listen (${err.code ?? err.message}); pick another --health-address, or stop what holds it`,
            { cause: err },
          ),
        ),
      );
      server.listen(port, host, () => resolve());
    });
    server.unref();
    const bound = server.address();
    const actual =
      bound !== null && typeof bound === 'object'
        ? `${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`
        : address;
    return new HealthServer(actual, server);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }
}
