/**
 * A Kafka 3.5 face for librdkafka's mock cluster, for bench/kafka-clients.bench.ts only: the mock
 * of librdkafka before 2.1 answers ApiVersions up to v2 and Metadata up to v2, and
 * @platformatic/kafka asks for ApiVersions v3 and Metadata v9. Listens once per mock broker on
 * 127.0.0.1 and forwards every request byte for byte to its broker, except two it answers itself:
 * ApiVersions v3 (the mock's ranges, Metadata given as 9 only) and Metadata of any version (asked
 * upstream as v1, answered in the client's version, with the shim's addresses for the brokers, so
 * the clients produce through it too). Every client goes through it in the comparison, so each
 * pays the same extra hop. Responses are matched by correlation id: those it answers itself may
 * overtake forwarded ones, which the clients measured here allow.
 *
 * startShimProcess() runs it in a child process, so its work is neither on the measured client's
 * event loop nor in its CPU time.
 */
import { fork, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const API_VERSIONS = 18;
const METADATA = 3;

interface Range {
  key: number;
  min: number;
  max: number;
}

class Writer {
  private readonly parts: Buffer[] = [];
  int8(n: number): this {
    const b = Buffer.alloc(1);
    b.writeInt8(n);
    return this.push(b);
  }
  int16(n: number): this {
    const b = Buffer.alloc(2);
    b.writeInt16BE(n);
    return this.push(b);
  }
  int32(n: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32BE(n);
    return this.push(b);
  }
  uvarint(n: number): this {
    const out: number[] = [];
    while (n >= 0x80) {
      out.push((n & 0x7f) | 0x80);
      n >>>= 7;
    }
    out.push(n);
    return this.push(Buffer.from(out));
  }
  string(s: string | null): this {
    if (s === null) return this.int16(-1);
    const b = Buffer.from(s);
    return this.int16(b.length).push(b);
  }
  compactString(s: string | null): this {
    if (s === null) return this.uvarint(0);
    const b = Buffer.from(s);
    return this.uvarint(b.length + 1).push(b);
  }
  push(b: Buffer): this {
    this.parts.push(b);
    return this;
  }
  /** The frame: size, then the parts. */
  frame(): Buffer {
    const body = Buffer.concat(this.parts);
    const size = Buffer.alloc(4);
    size.writeInt32BE(body.length);
    return Buffer.concat([size, body]);
  }
}

class Reader {
  constructor(
    private readonly b: Buffer,
    public pos = 0,
  ) {}
  int8(): number {
    return this.b.readInt8((this.pos += 1) - 1);
  }
  int16(): number {
    return this.b.readInt16BE((this.pos += 2) - 2);
  }
  int32(): number {
    return this.b.readInt32BE((this.pos += 4) - 4);
  }
  uvarint(): number {
    let n = 0;
    let shift = 0;
    for (;;) {
      const byte = this.b[this.pos++]!;
      n |= (byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return n >>> 0;
      shift += 7;
    }
  }
  string(): string | null {
    const n = this.int16();
    if (n < 0) return null;
    return this.b.toString('utf8', this.pos, (this.pos += n));
  }
  compactString(): string | null {
    const n = this.uvarint();
    if (n === 0) return null;
    return this.b.toString('utf8', this.pos, (this.pos += n - 1));
  }
  tags(): void {
    for (let n = this.uvarint(); n > 0; n--) {
      this.uvarint();
      this.pos += this.uvarint();
    }
  }
}

/** Splits a byte stream into Kafka frames (size-prefixed). */
function framer(onFrame: (frame: Buffer) => void): (chunk: Buffer) => void {
  let pending: Buffer = Buffer.alloc(0);
  return (chunk) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    while (pending.length >= 4) {
      const size = pending.readInt32BE(0);
      if (pending.length < 4 + size) break;
      onFrame(pending.subarray(4, 4 + size));
      pending = pending.subarray(4 + size);
    }
  };
}

interface Partition {
  error: number;
  index: number;
  leader: number;
  replicas: number[];
  isr: number[];
}
interface Topic {
  error: number;
  name: string;
  internal: boolean;
  partitions: Partition[];
}
interface Metadata {
  brokers: { node: number; host: string; port: number }[];
  controller: number;
  topics: Topic[];
}

/** One request and its answer on a fresh connection. */
function ask(port: number, request: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', reject);
    socket.on(
      'data',
      framer((frame) => {
        socket.end();
        resolve(frame);
      }),
    );
    socket.write(request);
  });
}

async function upstreamVersions(port: number): Promise<Range[]> {
  const frame = await ask(port, new Writer().int16(API_VERSIONS).int16(0).int32(1).string('shim').frame());
  const r = new Reader(frame, 4);
  if (r.int16() !== 0) throw new Error('kafka shim: ApiVersions v0 failed');
  const ranges: Range[] = [];
  for (let n = r.int32(); n > 0; n--) ranges.push({ key: r.int16(), min: r.int16(), max: r.int16() });
  return ranges;
}

async function upstreamMetadata(port: number, topics: string[] | null): Promise<Metadata> {
  const w = new Writer().int16(METADATA).int16(1).int32(1).string('shim');
  if (topics === null) w.int32(-1);
  else {
    w.int32(topics.length);
    for (const t of topics) w.string(t);
  }
  const r = new Reader(await ask(port, w.frame()), 4);
  const brokers: Metadata['brokers'] = [];
  for (let n = r.int32(); n > 0; n--) {
    const node = r.int32();
    const host = r.string() ?? '';
    const p = r.int32();
    r.string(); // rack
    brokers.push({ node, host, port: p });
  }
  const controller = r.int32();
  const list: Topic[] = [];
  for (let n = r.int32(); n > 0; n--) {
    const error = r.int16();
    const name = r.string() ?? '';
    const internal = r.int8() !== 0;
    const partitions: Partition[] = [];
    for (let m = r.int32(); m > 0; m--) {
      const p: Partition = { error: r.int16(), index: r.int32(), leader: r.int32(), replicas: [], isr: [] };
      for (let k = r.int32(); k > 0; k--) p.replicas.push(r.int32());
      for (let k = r.int32(); k > 0; k--) p.isr.push(r.int32());
      partitions.push(p);
    }
    list.push({ error, name, internal, partitions });
  }
  return { brokers, controller, topics: list };
}

/** A Metadata response of `version` (1, 2 or 9) for `correlationId`. */
function metadataResponse(m: Metadata, version: number, correlationId: number): Buffer {
  const w = new Writer().int32(correlationId);
  if (version >= 9) {
    w.uvarint(0)
      .int32(0)
      .uvarint(m.brokers.length + 1);
    for (const b of m.brokers)
      w.int32(b.node).compactString(b.host).int32(b.port).compactString(null).uvarint(0);
    w.compactString(null)
      .int32(m.controller)
      .uvarint(m.topics.length + 1);
    for (const t of m.topics) {
      w.int16(t.error)
        .compactString(t.name)
        .int8(t.internal ? 1 : 0)
        .uvarint(t.partitions.length + 1);
      for (const p of t.partitions) {
        w.int16(p.error).int32(p.index).int32(p.leader).int32(-1);
        for (const nodes of [p.replicas, p.isr, []]) {
          w.uvarint(nodes.length + 1);
          for (const node of nodes) w.int32(node);
        }
        w.uvarint(0);
      }
      w.int32(-2147483648).uvarint(0);
    }
    return w.int32(-2147483648).uvarint(0).frame();
  }
  w.int32(m.brokers.length);
  for (const b of m.brokers) w.int32(b.node).string(b.host).int32(b.port).string(null);
  if (version >= 2) w.string(null);
  w.int32(m.controller).int32(m.topics.length);
  for (const t of m.topics) {
    w.int16(t.error)
      .string(t.name)
      .int8(t.internal ? 1 : 0)
      .int32(t.partitions.length);
    for (const p of t.partitions) {
      w.int16(p.error).int32(p.index).int32(p.leader).int32(p.replicas.length);
      for (const node of p.replicas) w.int32(node);
      w.int32(p.isr.length);
      for (const node of p.isr) w.int32(node);
    }
  }
  return w.frame();
}

/** The topics a Metadata request names (null: all), by its version's layout. */
function requestedTopics(r: Reader, version: number): string[] | null {
  if (version >= 9) {
    const n = r.uvarint();
    if (n === 0) return null;
    const topics: string[] = [];
    for (let i = 1; i < n; i++) {
      topics.push(r.compactString() ?? '');
      r.tags();
    }
    return topics;
  }
  const n = r.int32();
  if (n < 0) return null;
  const topics: string[] = [];
  for (let i = 0; i < n; i++) topics.push(r.string() ?? '');
  return topics;
}

export class KafkaShim {
  private constructor(
    private readonly servers: net.Server[],
    readonly brokers: string[],
  ) {}

  static async start(upstream: string[]): Promise<KafkaShim> {
    const ports = upstream.map((b) => Number(b.slice(b.lastIndexOf(':') + 1)));
    const ranges = await upstreamVersions(ports[0]!);
    const servers = ports.map(() => net.createServer());
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))));
    const own = servers.map((s) => (s.address() as net.AddressInfo).port);
    const byUpstreamPort = new Map(ports.map((p, i) => [p, own[i]!]));
    const sockets = new Set<net.Socket>();
    servers.forEach((server, i) => {
      server.on('connection', (client) => {
        const broker = net.connect(ports[i]!, '127.0.0.1');
        sockets.add(client).add(broker);
        const close = (): void => {
          client.destroy();
          broker.destroy();
        };
        client.on('error', close).on('close', close);
        broker.on('error', close).on('close', close);
        broker.on('data', (chunk) => client.write(chunk));
        client.on(
          'data',
          framer((frame) => {
            const r = new Reader(frame);
            const key = r.int16();
            const version = r.int16();
            const correlationId = r.int32();
            if (key === API_VERSIONS && version === 3) {
              const w = new Writer()
                .int32(correlationId)
                .int16(0)
                .uvarint(ranges.length + 1);
              for (const x of ranges) {
                const [min, max] = x.key === METADATA ? [9, 9] : [x.min, x.max];
                w.int16(x.key).int16(min).int16(max).uvarint(0);
              }
              client.write(w.int32(0).uvarint(0).frame());
              return;
            }
            if (key === METADATA) {
              r.string(); // client id
              if (version >= 9) r.tags();
              const topics = requestedTopics(r, version);
              void upstreamMetadata(ports[i]!, topics).then(
                (m) => {
                  for (const b of m.brokers) {
                    b.port = byUpstreamPort.get(b.port) ?? b.port;
                    b.host = '127.0.0.1';
                  }
                  client.write(metadataResponse(m, version, correlationId));
                },
                () => close(),
              );
              return;
            }
            const size = Buffer.alloc(4);
            size.writeInt32BE(frame.length);
            broker.write(Buffer.concat([size, frame]));
          }),
        );
      });
    });
    const shim = new KafkaShim(
      servers,
      own.map((p) => `127.0.0.1:${p}`),
    );
    shim.sockets = sockets;
    return shim;
  }

  private sockets = new Set<net.Socket>();

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await Promise.all(this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

/** The shim in a child process (this module run with the upstream brokers as arguments). */
export async function startShimProcess(
  upstream: string[],
): Promise<{ brokers: string[]; stop(): Promise<void> }> {
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), upstream, { stdio: 'inherit' });
  const brokers = await new Promise<string[]>((resolve, reject) => {
    child.once('message', (m) => resolve(m as string[]));
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`kafka shim: exited with ${code}`)));
  });
  return {
    brokers,
    stop: () =>
      new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.send !== undefined) {
  const shim = await KafkaShim.start(process.argv.slice(2));
  process.once('SIGTERM', () => void shim.stop().then(() => process.exit(0)));
  process.send(shim.brokers);
}
