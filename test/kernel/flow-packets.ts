/**
 * Frame building blocks and the shared set-up of the flow program tests: enough of Ethernet,
 * VLAN, IPv4, IPv6, UDP, TCP, ICMP, VXLAN and GENEVE to write the cases the reference pcap does
 * not have. Checksums are left zero: the flow program never reads them.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const flowObject = join(repo, 'bpf', 'flow.o');

/** Empty when the kernel tests can run; otherwise why they skip (never under CI=true). */
export function kernelSkipReason(): string {
  if (process.env.CI === 'true') return '';
  if (process.getuid?.() !== 0) return '(skipped: needs root for BPF; run as root or with CI=true)';
  return '';
}

/** Builds bpf/*.o if a source changed since (no-op otherwise). */
export function buildBpf(): void {
  execFileSync('bash', [join(repo, 'bpf', 'build.sh')], { stdio: ['ignore', 'ignore', 'inherit'] });
}

const concat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
};

const be16 = (n: number): number[] => [(n >> 8) & 0xff, n & 0xff];

export function mac(text: string): number[] {
  return text.split(':').map((h) => parseInt(h, 16));
}

function ipv4Bytes(text: string): number[] {
  return text.split('.').map(Number);
}

/** Expands IPv6 text (with at most one '::', no embedded IPv4) into 16 bytes. */
function ipv6Bytes(text: string): number[] {
  const [head = '', tail] = text.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = [...h, ...new Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.flatMap((g) => be16(parseInt(g, 16)));
}

export const ETH_IPV4 = 0x0800;
export const ETH_IPV6 = 0x86dd;
export const ETH_ARP = 0x0806;
export const ETH_TEB = 0x6558;

export function ethernet(
  o: { dst?: string; src?: string; vlans?: { tpid: number; vid: number }[]; type: number },
  payload: Uint8Array,
): Uint8Array {
  const tags = (o.vlans ?? []).flatMap((v) => [...be16(v.tpid), ...be16(v.vid)]);
  return concat(
    Uint8Array.from([
      ...mac(o.dst ?? '02:00:00:00:00:02'),
      ...mac(o.src ?? '02:00:00:00:00:01'),
      ...tags,
      ...be16(o.type),
    ]),
    payload,
  );
}

export function ipv4(
  o: {
    src: string;
    dst: string;
    proto: number;
    tos?: number;
    options?: number[];
    fragOffset8?: number;
    moreFragments?: boolean;
    ihl?: number;
  },
  payload: Uint8Array,
): Uint8Array {
  const options = o.options ?? [];
  const ihl = o.ihl ?? 5 + options.length / 4;
  const flagsFrag = (o.moreFragments ? 0x2000 : 0) | (o.fragOffset8 ?? 0);
  const header = [
    0x40 | ihl,
    o.tos ?? 0,
    ...be16(20 + options.length + payload.length),
    0,
    1,
    ...be16(flagsFrag),
    64,
    o.proto,
    0,
    0,
    ...ipv4Bytes(o.src),
    ...ipv4Bytes(o.dst),
    ...options,
  ];
  return concat(Uint8Array.from(header), payload);
}

/** ext: extension headers in order, each { next header type of the header itself, body }. */
export function ipv6(
  o: {
    src: string;
    dst: string;
    next: number;
    trafficClass?: number;
    ext?: { type: number; body: number[] }[];
  },
  payload: Uint8Array,
): Uint8Array {
  const ext = o.ext ?? [];
  const chain: number[] = [];
  ext.forEach((e, i) => {
    const next = i + 1 < ext.length ? ext[i + 1]!.type : o.next;
    if (e.type === 44) {
      chain.push(next, 0, ...e.body.slice(0, 6));
    } else {
      // Hop-by-hop, routing and destination options: length in 8-byte units after the first 8.
      const len = 2 + e.body.length;
      if (len % 8) throw new Error(`ipv6 ext header ${e.type}: body must make a multiple of 8 bytes`);
      chain.push(next, len / 8 - 1, ...e.body);
    }
  });
  const first = ext.length ? ext[0]!.type : o.next;
  const tc = o.trafficClass ?? 0;
  const header = [
    0x60 | (tc >> 4),
    (tc & 0xf) << 4,
    0,
    0,
    ...be16(chain.length + payload.length),
    first,
    64,
    ...ipv6Bytes(o.src),
    ...ipv6Bytes(o.dst),
    ...chain,
  ];
  return concat(Uint8Array.from(header), payload);
}

/** The 6 bytes after next-header and reserved of an IPv6 fragment header. */
export function fragmentBody(offset8: number, more: boolean): number[] {
  return [...be16((offset8 << 3) | (more ? 1 : 0)), 0, 0, 0, 7];
}

export function udp(sport: number, dport: number, payload: Uint8Array = new Uint8Array(4)): Uint8Array {
  return concat(
    Uint8Array.from([...be16(sport), ...be16(dport), ...be16(8 + payload.length), 0, 0]),
    payload,
  );
}

export function tcp(sport: number, dport: number, flags: number): Uint8Array {
  return Uint8Array.from([
    ...be16(sport),
    ...be16(dport),
    0,
    0,
    0,
    1,
    0,
    0,
    0,
    0,
    0x50,
    flags,
    0x20,
    0,
    0,
    0,
    0,
    0,
  ]);
}

export function icmp(type: number, code: number): Uint8Array {
  return Uint8Array.from([type, code, 0, 0, 0, 1, 0, 1]);
}

export function vxlan(vni: number, inner: Uint8Array, flags = 0x08): Uint8Array {
  return concat(
    Uint8Array.from([flags, 0, 0, 0, (vni >> 16) & 0xff, (vni >> 8) & 0xff, vni & 0xff, 0]),
    inner,
  );
}

export function geneve(vni: number, proto: number, options: number[], inner: Uint8Array): Uint8Array {
  if (options.length % 4) throw new Error('geneve: options are whole 4-byte words');
  return concat(
    Uint8Array.from([
      options.length / 4,
      0,
      ...be16(proto),
      (vni >> 16) & 0xff,
      (vni >> 8) & 0xff,
      vni & 0xff,
      0,
      ...options,
    ]),
    inner,
  );
}

export interface PcapFrame {
  data: Uint8Array;
  origLen: number;
}

/** Frames of a classic little- or big-endian pcap file. */
export function readPcap(path: string): PcapFrame[] {
  const buf = readFileSync(path);
  const magic = buf.readUInt32LE(0);
  const le = magic === 0xa1b2c3d4 || magic === 0xa1b23c4d;
  if (!le && buf.readUInt32BE(0) !== 0xa1b2c3d4 && buf.readUInt32BE(0) !== 0xa1b23c4d) {
    throw new Error(`read pcap ${path}: not a pcap file (magic ${magic.toString(16)})`);
  }
  const u32 = (o: number): number => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const frames: PcapFrame[] = [];
  for (let o = 24; o + 16 <= buf.length;) {
    const incl = u32(o + 8);
    const orig = u32(o + 12);
    frames.push({ data: new Uint8Array(buf.subarray(o + 16, o + 16 + incl)), origLen: orig });
    o += 16 + incl;
  }
  return frames;
}
