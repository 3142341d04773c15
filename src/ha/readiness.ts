import { createServer, type Server } from 'node:http';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { silentLogger, type Logger } from '../logger.js';
import { HaError, messageOf } from './errors.js';

export interface ReadinessOptions {
  /** Written (atomically) once ready, removed when not ready; absent while loading. */
  file?: string;
  /** Serve GET /ready (503 while loading, 200 once ready) and GET /status (JSON). */
  listen?: { host: string; port: number };
  /** The body of /status, or a promise of it. */
  status?: () => unknown;
  logger?: Logger;
}

/**
 * Tells a load balancer or an orchestrator whether this node may take traffic: not before every
 * replicated session is in the kernel map, so a failover never meets a firewall that would block
 * established connections. Both a file (for exec probes and scripts) and HTTP (for load balancers).
 */
export class Readiness {
  private ready = false;
  private reason = 'starting';
  private server: Server | undefined;
  private closed = false;

  private constructor(private readonly options: ReadinessOptions) {}

  /** Removes a file a previous run left behind and starts the HTTP endpoint (not ready). */
  static async start(options: ReadinessOptions): Promise<Readiness> {
    const r = new Readiness(options);
    if (options.file !== undefined) r.removeFile();
    if (options.listen !== undefined) await r.listen(options.listen);
    return r;
  }

  get isReady(): boolean {
    return this.ready;
  }

  /** The port the endpoint listens on (the one asked for, or the kernel's pick for port 0). */
  get port(): number | undefined {
    const a = this.server?.address();
    return typeof a === 'object' && a !== null ? a.port : undefined;
  }

  /** Ready: writes the file with `detail` as JSON and answers 200. */
  setReady(detail: Record<string, unknown> = {}): void {
    if (this.closed) return;
    this.ready = true;
    this.reason = 'ready';
    const file = this.options.file;
    if (file !== undefined) {
      try {
        mkdirSync(dirname(file), { recursive: true });
        const tmp = `${file}.tmp${process.pid}`;
        writeFileSync(
          tmp,
          `${JSON.stringify({ ready: true, pid: process.pid, at: new Date().toISOString(), ...detail })}\n`,
        );
        renameSync(tmp, file);
      } catch (err) {
        throw new HaError(
          'EREADY',
          `readiness file ${file}: ${messageOf(err)}; check the directory is writable`,
          {
            cause: err,
          },
        );
      }
    }
  }

  /** Not ready (loading, shutting down): removes the file and answers 503 with `reason`. */
  setNotReady(reason: string): void {
    this.ready = false;
    this.reason = reason;
    this.removeFile();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.setNotReady('stopped');
    this.closed = true;
    const server = this.server;
    if (server !== undefined) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }

  private removeFile(): void {
    if (this.options.file !== undefined) rmSync(this.options.file, { force: true });
  }

  private async listen(at: { host: string; port: number }): Promise<void> {
    const logger = this.options.logger ?? silentLogger();
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
      } else if (path === '/ready') {
        res.writeHead(this.ready ? 200 : 503, { 'content-type': 'text/plain' }).end(`${this.reason}\n`);
      } else if (path === '/status' && this.options.status !== undefined) {
        const status = this.options.status;
        void (async () => {
          let body: string;
          try {
            body = JSON.stringify(await status(), (_k, v: unknown) =>
              typeof v === 'bigint' ? v.toString() : v,
            );
          } catch (err) {
            res.writeHead(500, { 'content-type': 'text/plain' }).end(`${messageOf(err)}\n`);
            return;
          }
          res.writeHead(200, { 'content-type': 'application/json' }).end(`${body}\n`);
        })();
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found; try /ready or /status\n');
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(
          new HaError(
            'EREADY',
            `readiness endpoint ${at.host}:${at.port}: ${err.message}; pick another port`,
            {
              cause: err,
            },
          ),
        ),
      );
      server.listen(at.port, at.host, () => resolve());
    });
    server.on('error', (err) => logger.warn({ err }, 'readiness endpoint error'));
    this.server = server;
  }
}
