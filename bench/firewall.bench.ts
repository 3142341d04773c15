/**
 * Cost of the firewall programs per packet, measured by the kernel with BPF_PROG_TEST_RUN, against
 * an empty TC program (bpf/bench_empty.c) in the same run, with 65536 live sessions:
 * - allowed by session: a packet of an established session (repeated runs of one frame);
 * - allowed by policy: a new flow per packet (single runs of distinct frames): three networks and
 *   rule trie lookups, the session insert and its CREATED event;
 * - blocked: the policy's default action (repeated runs; audit sampled 1 in 10^9 so the figure is
 *   the verdict, and once with every audit event written to the ring);
 * - GENEVE hairpin by session: decapsulation, session hit and the outer header swap (single runs).
 * Needs root.
 */
import { rmSync } from 'node:fs';
import { ObjectSpec } from '../src/datapath/index.js';
import { FirewallCollection } from '../src/datapath/firewall/index.js';
import { parsePolicy } from '../src/config/firewall-policy.js';
import { bpfObjectPath } from '../src/paths.js';
import { bestTestRunNs, meanSingleTestRunNs, synchronousBenchmark, type BenchContext } from './lib.js';
import { parseSetting, parseSettings } from '../src/config/firewall-settings.js';

const LIVE_SESSIONS = 65536;

const POLICY = `
networks:
  - {cidr: 198.51.100.0/24, policy: clients}
  - {cidr: 10.0.0.0/8, policy: internal}
policies:
  clients:
    default_action: block
    rules:
      - {destination: 203.0.113.0/24, protocol: udp, port: 53}
      - {destination: 203.0.113.2, protocol: tcp, port: [80, 443]}
      - {destination: 192.0.2.0/24, action: block}
  internal:
    default_action: allow
`;

const be16 = (n: number): number[] => [(n >> 8) & 0xff, n & 0xff];

/** Ethernet + IPv4 198.51.100.7 -> dst + UDP sport -> dport, 18 bytes of payload. */
function udpFrame(sport: number, dport: number, dst = [203, 0, 113, 2]): Uint8Array {
  return Uint8Array.from([
    ...[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00],
    ...[0x45, 0, 0, 46, 0, 1, 0, 0, 64, 17, 0, 0, 198, 51, 100, 7, ...dst],
    ...be16(sport),
    ...be16(dport),
    ...[0, 26, 0, 0],
    ...new Array<number>(18).fill(0),
  ]);
}

/** The UDP frame inside GENEVE with an 8-byte option of class 0x0108, to 10.9.0.2:6081. */
function geneveFrame(sport: number): Uint8Array {
  const inner = udpFrame(sport, 53);
  const head = [
    ...[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00],
    ...[0x45, 0, ...be16(20 + 8 + 20 + inner.length), 0, 1, 0, 0, 64, 17, 0, 0, 10, 9, 0, 1, 10, 9, 0, 2],
    ...[0xc3, 0x50, 0x17, 0xc1, ...be16(8 + 20 + inner.length), 0, 0],
    ...[3, 0, 0x65, 0x58, 0, 0x10, 0x92, 0, 0x01, 0x08, 1, 2, 1, 2, 3, 4, 5, 6, 7, 8],
  ];
  return Uint8Array.from([...head, ...inner]);
}

function measure(ctx: BenchContext): void {
  if (process.getuid?.() !== 0)
    throw new Error('firewall bench: needs root for BPF_PROG_TEST_RUN; run it as root');
  const repeat = ctx.quick ? 100_000 : 1_000_000;
  const rounds = ctx.quick ? 3 : 7;
  const newFlows = ctx.quick ? 5_000 : 20_000;
  const pinDir = `/sys/fs/bpf/rxfw-bench-${process.pid}`;

  const fw = FirewallCollection.load({
    pinDir,
    ingress: 'lo',
    address: '10.9.0.2',
    settings: parseSettings({ audit_sampling: 1_000_000_000 }),
  });
  const empty = ObjectSpec.open(bpfObjectPath('bench_empty')).load();
  try {
    fw.applyPolicy(parsePolicy(POLICY, 'bench policy', {}));
    const ingress = fw.program('ingress');
    const baseline = empty.program('bench_empty');
    const now = process.hrtime.bigint();
    fw.restoreSessions(
      Array.from({ length: LIVE_SESSIONS - 1 }, (_, i) => ({
        protocol: 17,
        srcAddr: `10.${(i >> 16) & 0xff}.${(i >> 8) & 0xff}.${i & 0xff}`,
        srcPort: 1024 + (i % 50000),
        dstAddr: '203.0.113.2',
        dstPort: 53,
        vni: 0,
        lastSeenNs: now,
      })),
    );
    const established = udpFrame(777, 53);
    ingress.testRun(established);

    const probe = udpFrame(777, 53);
    const emptyNs = bestTestRunNs(baseline, probe, repeat, rounds);
    const base = { name: 'firewall.empty_tc_program', value: emptyNs };
    ctx.report({ ...base, unit: 'ns/packet', note: `repeat ${repeat}, best of ${rounds}` });
    ctx.report({
      name: 'firewall.allowed_by_session',
      value: bestTestRunNs(ingress, established, repeat, rounds),
      unit: 'ns/packet',
      baseline: base,
      note: `${LIVE_SESSIONS} live sessions`,
    });
    ctx.report({
      name: 'firewall.blocked',
      value: bestTestRunNs(ingress, udpFrame(778, 54), repeat, rounds),
      unit: 'ns/packet',
      baseline: base,
      note: 'policy default action, audit sampled out',
    });
    fw.setSetting(parseSetting('audit_sampling', 1));
    // 100k audit events would fill the 1 MiB ring: the reader drains between rounds.
    const audit = fw.auditReader();
    let auditedNs = Infinity;
    for (let r = 0; r < rounds; r++) {
      auditedNs = Math.min(auditedNs, ingress.testRun(udpFrame(779, 54), { repeat: 10_000 }).durationNs);
      audit.drain(() => undefined);
    }
    ctx.report({
      name: 'firewall.blocked_audited',
      value: auditedNs,
      unit: 'ns/packet',
      baseline: base,
      note: 'every block an audit event',
    });
    // Single runs: a repeated run would see the frame it hairpinned (swapped) the run before.
    fw.setSetting(parseSetting('tunnel_mode', 'geneve'));
    fw.setSetting(parseSetting('hairpin', 'on'));
    const gen = geneveFrame(4242);
    ingress.testRun(gen);
    const same = Array.from({ length: newFlows }, () => gen);
    let geneveNs = Infinity;
    let emptyGeneveNs = Infinity;
    for (let r = 0; r < Math.min(rounds, 3); r++) {
      emptyGeneveNs = Math.min(emptyGeneveNs, meanSingleTestRunNs(baseline, same));
      geneveNs = Math.min(geneveNs, meanSingleTestRunNs(ingress, same));
    }
    const geneveBase = { name: 'firewall.empty_tc_program_single_run_geneve', value: emptyGeneveNs };
    ctx.report({ ...geneveBase, unit: 'ns/packet', note: `mean of ${newFlows} single runs` });
    ctx.report({
      name: 'firewall.geneve_hairpin_by_session',
      value: geneveNs,
      unit: 'ns/packet',
      baseline: geneveBase,
      note: 'decapsulate, session hit, swap outer headers',
    });
    fw.setSetting(parseSetting('tunnel_mode', 'none'));

    // A new flow per packet: single runs of distinct frames, against the empty program run the same way.
    const events = fw.sessionEventReader();
    let newNs = Infinity;
    let emptySingleNs = Infinity;
    for (let r = 0; r < Math.min(rounds, 3); r++) {
      const frames = Array.from({ length: newFlows }, (_, i) =>
        udpFrame(1024 + ((r * newFlows + i) % 64000), 53, [203, 0, 113, 10 + r]),
      );
      emptySingleNs = Math.min(emptySingleNs, meanSingleTestRunNs(baseline, frames));
      newNs = Math.min(newNs, meanSingleTestRunNs(ingress, frames));
      events.drain(() => undefined);
    }
    const singleBase = { name: 'firewall.empty_tc_program_single_run', value: emptySingleNs };
    ctx.report({ ...singleBase, unit: 'ns/packet', note: `mean of ${newFlows} single runs` });
    ctx.report({
      name: 'firewall.allowed_by_policy',
      value: newNs,
      unit: 'ns/packet',
      baseline: singleBase,
      note: 'new flow: policy lookups, session insert, created event',
    });
    const c = fw.counters();
    if (c.session_create_failed !== 0 || c.session_events_lost !== 0) {
      throw new Error(
        `firewall bench: ${c.session_create_failed} sessions not created, ${c.session_events_lost} events lost`,
      );
    }
  } finally {
    fw.close({ unpin: true });
    empty.close();
    rmSync(pinDir, { recursive: true, force: true });
  }
}

export default synchronousBenchmark(measure);
