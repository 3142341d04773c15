/**
 * The firewall collection: bpf/firewall.o loaded with its maps pinned under one bpffs directory,
 * its programs attached to TC ingress of the ingress device and TC egress of the egress device (the
 * same device for a host or a one-armed appliance). A second process (the CLI, a pipeline source,
 * a standby's session loader) opens the same maps by their pins with FirewallCollection.open().
 *
 * Everything a restart must keep lives in pinned maps: settings, policy, sessions. Loading again
 * over existing pins reuses them, so a policy update or a program upgrade keeps every session.
 */
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { DatapathError } from '../errors.js';
import { libc } from '../libbpf.js';
import { attachTc, type TcLink } from '../link.js';
import { BpfMap } from '../map.js';
import { withNetns } from '../../net/netns.js';
import { ObjectSpec, type Collection, type Program } from '../object.js';
import { RingBufferReader } from '../ringbuf.js';
import { cidrContains } from '../../net/address.js';
import { bpfObjectPath } from '../../paths.js';
import { FirewallError } from '../../config/firewall-errors.js';
import type { FirewallPolicy } from '../../config/firewall-policy.js';
import { compilePolicy, type MapEntry } from './compile.js';
import {
  SETTINGS,
  formatSettingValue,
  settingSpec,
  type SettingAssignment,
  type SettingName,
  type SettingSpec,
} from '../../config/firewall-settings.js';
import {
  FW_CTR,
  FW_MAPS,
  SESSION,
  SESSION_KEY,
  TCP_STATES,
  TUNNELS,
  decodeConfig,
  decodeSession,
  decodeSessionKey,
  decodeU32,
  encodeConfig,
  encodeSession,
  encodeSessionKey,
  encodeU32,
  parseCidr,
  sumPerCpu,
  type FirewallConfig,
  type FirewallCounterName,
  type FirewallCounters,
  type FirewallSession,
  type SessionKey,
  type TunnelType,
} from './types.js';
import { INSTANCE_RULE, isInstanceName } from '../instance.js';

/**
 * A session key as a string, the same for a key given as fields and for the bytes the map holds,
 * to keep sessions in a Map or Set by key.
 */
export function sessionKeyId(key: SessionKey | Uint8Array): string {
  const bytes = key instanceof Uint8Array ? key : encodeSessionKey(key);
  return Buffer.from(bytes.buffer, bytes.byteOffset, SESSION_KEY.size).toString('latin1');
}

export interface FirewallLoadOptions {
  /** bpffs directory of this firewall, e.g. /sys/fs/bpf/rxflow-firewall-default. */
  pinDir: string;
  /** Device whose TC ingress runs fw_ingress. */
  ingress: string;
  /** Device whose TC egress runs fw_egress; the default redirect target. Default: `ingress`. */
  egress?: string;
  /** The firewall's own address: tunnel traffic is decapsulated only when sent to it. '' or unset: any. */
  address?: string;
  /** Sets tunnel_mode, and hairpin (on for geneve) unless `settings` says otherwise. */
  tunnelMode?: TunnelType;
  /** Network namespace (`ip netns` name or /proc/<pid>/ns/net) of the devices. */
  netns?: string;
  /** Capacity of the session map; only takes effect when the maps are created. */
  maxSessions?: number;
  /**
   * Settings to apply after loading (config/firewall-settings.ts parses them); others keep their
   * pinned values (defaults on first load). They override what `tunnelMode` sets.
   */
  settings?: readonly SettingAssignment[];
  objectPath?: string;
}

export interface SessionFilter {
  /** The initiator's address: an address or a prefix. */
  src?: string;
  /** The responder's address: an address or a prefix. */
  dst?: string;
  /** Either port of the session. */
  port?: number;
}

/** A session as listed: the session and how old and how idle it is. */
export interface SessionListing extends FirewallSession {
  ageMs: number;
  idleMs: number;
}

export interface SettingValue {
  name: SettingName;
  key: number;
  value: number;
  /** The value's name when it has one (on, geneve), else the number. */
  text: string;
  description: string;
}

export interface PolicyApplyResult {
  networks: number;
  policies: number;
  rules: number;
  /** Entries added or changed. */
  written: number;
  /** Entries of the previous policy removed. */
  removed: number;
}

export interface FirewallStatus {
  pinDir: string;
  config: FirewallConfig;
  /** Pinned TC links: <device>-<direction>. */
  links: string[];
  settings: SettingValue[];
  sessions: number;
  maxSessions: number;
  networks: number;
  policies: number;
  rules: number;
}

const COUNTER_NAMES = Object.keys(FW_CTR) as FirewallCounterName[];
const NS_PER_MS = 1_000_000n;

function mapsDir(pinDir: string): string {
  return join(pinDir, 'maps');
}

function ifindexIn(netns: string | undefined, ifname: string, role: string): number {
  const ifindex = withNetns(netns, () => libc().if_nametoindex(ifname));
  if (ifindex === 0) {
    throw new FirewallError(
      'ENOIFACE',
      `firewall ${role} device ${ifname}: no such interface${netns ? ` in netns ${netns}` : ''}; check the name with 'ip link'`,
    );
  }
  return ifindex;
}

function hexOf(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/**
 * A loaded (load) or opened (open) firewall. Methods that need the programs (attach, program)
 * work on a loaded one only; everything else works on either.
 */
export class FirewallCollection {
  readonly pinDir: string;
  readonly links: TcLink[] = [];
  readonly #collection: Collection | undefined;
  readonly #maps: Record<keyof typeof FW_MAPS, BpfMap>;
  readonly #netns: string | undefined;
  readonly #readers: RingBufferReader[] = [];
  #options: FirewallLoadOptions | undefined;
  #closed = false;

  private constructor(
    pinDir: string,
    maps: Record<keyof typeof FW_MAPS, BpfMap>,
    collection: Collection | undefined,
    netns: string | undefined,
  ) {
    this.pinDir = pinDir;
    this.#maps = maps;
    this.#collection = collection;
    this.#netns = netns;
  }

  /**
   * Loads bpf/firewall.o, pinning its maps under `pinDir` (or reusing those pinned there, with
   * their sessions, policy and settings), writes the devices and address, and applies the settings
   * given. Does not attach: call attach().
   */
  static load(options: FirewallLoadOptions): FirewallCollection {
    const egressName = options.egress ?? options.ingress;
    const ingressIfindex = ifindexIn(options.netns, options.ingress, 'ingress');
    const egressIfindex = ifindexIn(options.netns, egressName, 'egress');
    const fresh = !existsSync(join(mapsDir(options.pinDir), FW_MAPS.settings));
    const spec = ObjectSpec.open(options.objectPath ?? bpfObjectPath('firewall'));
    let collection: Collection;
    try {
      if (options.maxSessions !== undefined) spec.setMaxEntries(FW_MAPS.sessions, options.maxSessions);
      collection = spec.load({ pinDir: options.pinDir });
    } catch (err) {
      spec.close();
      throw err;
    }
    const maps = Object.fromEntries(
      Object.entries(FW_MAPS).map(([k, name]) => [k, collection.map(name)]),
    ) as Record<keyof typeof FW_MAPS, BpfMap>;
    const fw = new FirewallCollection(options.pinDir, maps, collection, options.netns);
    fw.#options = options;
    try {
      fw.#maps.config.update(
        encodeU32(0),
        encodeConfig({ ingressAddress: options.address ?? '', ingressIfindex, egressIfindex }),
      );
      if (fresh) for (const s of SETTINGS) fw.#write(s, s.default);
      if (options.tunnelMode !== undefined) {
        const tunnel = settingSpec('tunnel_mode');
        fw.#write(tunnel, tunnel.values![options.tunnelMode]!);
        fw.#write(settingSpec('hairpin'), options.tunnelMode === 'geneve' ? 1 : 0);
      }
      for (const { spec, value } of options.settings ?? []) fw.#write(spec, value);
    } catch (err) {
      fw.close();
      throw err;
    }
    return fw;
  }

  /** Opens the maps of a firewall loaded by another process (or an earlier run) under `pinDir`. */
  static open(pinDir: string): FirewallCollection {
    const dir = mapsDir(pinDir);
    if (!existsSync(join(dir, FW_MAPS.settings))) {
      throw new FirewallError(
        'ENOTLOADED',
        `open firewall at ${pinDir}: no firewall is loaded there; load one with 'rxflow firewall load --ingress <device>' or check --instance and --pin-root`,
      );
    }
    const opened: BpfMap[] = [];
    try {
      const maps = Object.fromEntries(
        Object.entries(FW_MAPS).map(([k, name]) => {
          const m = BpfMap.openPinned(join(dir, name));
          opened.push(m);
          return [k, m];
        }),
      ) as Record<keyof typeof FW_MAPS, BpfMap>;
      return new FirewallCollection(pinDir, maps, undefined, undefined);
    } catch (err) {
      for (const m of opened) m.close();
      throw err;
    }
  }

  /**
   * Detaches a firewall loaded by another process and removes its pins (maps, sessions and links):
   * a pinned TCX link detaches when its pin, the last reference, goes. Returns false when nothing
   * was loaded there.
   */
  static unload(pinDir: string): boolean {
    if (!existsSync(pinDir)) return false;
    rmSync(pinDir, { recursive: true, force: true });
    return true;
  }

  /** fw_ingress on TC ingress of the ingress device, fw_egress on TC egress of the egress device. */
  attach(opts: { mode?: 'auto' | 'tcx' | 'clsact' } = {}): TcLink[] {
    const o = this.#options;
    if (this.#collection === undefined || o === undefined) {
      throw new FirewallError(
        'ENOTLOADED',
        `attach firewall ${this.pinDir}: opened by its pins; attach the one that loaded it`,
      );
    }
    const collection = this.#collection;
    const egress = o.egress ?? o.ingress;
    withNetns(o.netns, () => {
      for (const [prog, ifname, direction] of [
        ['fw_ingress', o.ingress, 'ingress'],
        ['fw_egress', egress, 'egress'],
      ] as const) {
        this.links.push(
          attachTc(collection.program(prog), ifname, direction, {
            mode: opts.mode ?? 'auto',
            pinPath: join(this.pinDir, 'links', `tc-${ifname}-${direction}`),
          }),
        );
      }
    });
    return this.links;
  }

  /** fw_ingress or fw_egress, for BPF_PROG_TEST_RUN. */
  program(direction: 'ingress' | 'egress'): Program {
    if (this.#collection === undefined) {
      throw new FirewallError(
        'ENOTLOADED',
        `firewall ${this.pinDir}: opened by its pins, it has no programs`,
      );
    }
    return this.#collection.program(direction === 'ingress' ? 'fw_ingress' : 'fw_egress');
  }

  /** The raw maps, by role: for tools and tests that need what this class does not offer. */
  map(role: keyof typeof FW_MAPS): BpfMap {
    this.#check('map');
    return this.#maps[role];
  }

  config(): FirewallConfig {
    this.#check('read config');
    const v = this.#maps.config.lookup(encodeU32(0));
    return decodeConfig(v ?? new Uint8Array(24));
  }

  settings(): SettingValue[] {
    this.#check('read settings');
    return SETTINGS.map((s) => this.#value(s));
  }

  getSetting(spec: SettingSpec): SettingValue {
    this.#check('read setting');
    return this.#value(spec);
  }

  /** Sets a setting (parseSetting of config/firewall-settings.ts reads one from text); returns it. */
  setSetting({ spec, value }: SettingAssignment): SettingValue {
    this.#check('set setting');
    this.#write(spec, value);
    return this.#value(spec);
  }

  /** Packets by verdict and the kernel's loss counters, summed over CPUs, since the maps were created. */
  counters(): FirewallCounters {
    this.#check('read counters');
    const out = {} as FirewallCounters;
    for (const name of COUNTER_NAMES) out[name] = this.counter(name);
    return out;
  }

  /** One counter, summed over CPUs. */
  counter(name: FirewallCounterName): number {
    this.#check('read counters');
    const v = this.#maps.counters.lookup(encodeU32(FW_CTR[name]));
    return v ? sumPerCpu(v) : 0;
  }

  /** Every session (one batch read of the map), those matching `filter` when given. */
  sessions(filter: SessionFilter = {}): FirewallSession[] {
    this.#check('list sessions');
    const src = filter.src === undefined ? undefined : parseCidr(filter.src);
    const dst = filter.dst === undefined ? undefined : parseCidr(filter.dst);
    if (
      filter.port !== undefined &&
      (!Number.isInteger(filter.port) || filter.port < 0 || filter.port > 65535)
    ) {
      throw new FirewallError('EARG', `list sessions: port must be 0 to 65535, got ${filter.port}`);
    }
    const { count, keys, values } = this.#maps.sessions.dump();
    const out: FirewallSession[] = [];
    for (let i = 0; i < count; i++) {
      const k = i * SESSION_KEY.size;
      if (src && !cidrContains(src, keys, k + SESSION_KEY.fields.src_ip.offset)) continue;
      if (dst && !cidrContains(dst, keys, k + SESSION_KEY.fields.dst_ip.offset)) continue;
      const key = decodeSessionKey(keys, k);
      if (filter.port !== undefined && key.srcPort !== filter.port && key.dstPort !== filter.port) continue;
      out.push(decodeSession(key, values, i * this.#maps.sessions.valueBufferSize));
    }
    return out;
  }

  /**
   * The keys of the sessions as the map holds them (SESSION_KEY.size bytes each, packed), from one
   * batch read and with nothing decoded; with `open`, closed TCP sessions (ended, kept only for
   * their last packets) are left out.
   */
  sessionKeys(opts: { open?: boolean } = {}): { count: number; keys: Uint8Array } {
    this.#check('list session keys');
    const map = this.#maps.sessions;
    const { count, keys, values } = map.dump();
    if (opts.open !== true) return { count, keys };
    const closed = TCP_STATES.indexOf('closed');
    const state = SESSION.fields.tcp_state.offset;
    let kept = 0;
    for (let i = 0; i < count; i++) {
      if (values[i * map.valueBufferSize + state] === closed) continue;
      if (kept !== i)
        keys.copyWithin(kept * SESSION_KEY.size, i * SESSION_KEY.size, (i + 1) * SESSION_KEY.size);
      kept++;
    }
    return { count: kept, keys: keys.subarray(0, kept * SESSION_KEY.size) };
  }

  /** sessions() with their age and idle time (against this host's monotonic clock, as the kernel's). */
  listSessions(filter: SessionFilter = {}, nowNs: bigint = process.hrtime.bigint()): SessionListing[] {
    return this.sessions(filter).map((s) => ({
      ...s,
      ageMs: Number((nowNs - s.createdNs) / NS_PER_MS),
      idleMs: Number((nowNs - s.lastSeenNs) / NS_PER_MS),
    }));
  }

  /** One session by its key, or undefined. */
  session(key: SessionKey): FirewallSession | undefined {
    this.#check('look up session');
    const v = this.#maps.sessions.lookup(encodeSessionKey(key));
    return v === undefined ? undefined : decodeSession(key, v);
  }

  /**
   * Deletes the sessions idle longer than their timeout (session_idle_timeout_s, or
   * session_closed_timeout_s for closed TCP sessions) and returns them. The kernel already treats
   * such sessions as gone; this frees their slots and is where their deletion becomes an event.
   * Each is read again just before its deletion, so a packet that revived it keeps it.
   *
   * `present`, when given, is called with the key (as the map stores it, valid only during the
   * call) of every session the same read found and left in place: what a caller needs to notice
   * sessions that vanished without an event (the LRU map evicting them) at no extra map read.
   */
  expireSessions(
    nowNs: bigint = process.hrtime.bigint(),
    present?: (key: Uint8Array) => void,
  ): FirewallSession[] {
    this.#check('expire sessions');
    const idle = BigInt(this.#read(settingSpec('session_idle_timeout_s'))) * 1_000_000_000n;
    const closed = BigInt(this.#read(settingSpec('session_closed_timeout_s'))) * 1_000_000_000n;
    const expired = (s: FirewallSession): boolean => {
      const timeout = s.tcpState === 'closed' ? closed : idle;
      return timeout !== 0n && nowNs > s.lastSeenNs && nowNs - s.lastSeenNs > timeout;
    };
    const map = this.#maps.sessions;
    const { count, keys, values } = map.dump();
    // The same test on the dumped bytes: last-seen and TCP state only, no session decoded.
    const view = new DataView(values.buffer, values.byteOffset, values.byteLength);
    const closedState = TCP_STATES.indexOf('closed');
    const expiredAt = (o: number): boolean => {
      const timeout = values[o + SESSION.fields.tcp_state.offset] === closedState ? closed : idle;
      const lastSeen = view.getBigUint64(o + SESSION.fields.last_seen_ns.offset, true);
      return timeout !== 0n && nowNs > lastSeen && nowNs - lastSeen > timeout;
    };
    const out: FirewallSession[] = [];
    const value = new Uint8Array(map.valueBufferSize);
    for (let i = 0; i < count; i++) {
      const kb = keys.subarray(i * SESSION_KEY.size, (i + 1) * SESSION_KEY.size);
      if (!expiredAt(i * map.valueBufferSize)) {
        present?.(kb);
        continue;
      }
      const key = decodeSessionKey(kb);
      if (!map.lookupInto(kb, value)) continue;
      const now = decodeSession(key, value);
      if (!expired(now)) {
        present?.(kb);
        continue;
      }
      if (map.delete(kb)) out.push(now);
    }
    return out;
  }

  /**
   * Writes sessions into the kernel map, e.g. a standby restoring the sessions of its peer. Times
   * must already be this host's monotonic ns. Unless `replace`, a session the kernel already has
   * is left as it is (it is newer). Returns how many were written and skipped.
   */
  restoreSessions(
    sessions: readonly (SessionKey &
      Partial<Omit<FirewallSession, keyof SessionKey>> & { lastSeenNs: bigint })[],
    opts: { replace?: boolean } = {},
  ): { written: number; skipped: number } {
    this.#check('restore sessions');
    const map = this.#maps.sessions;
    const key = new Uint8Array(SESSION_KEY.size);
    const value = new Uint8Array(SESSION.size);
    let written = 0;
    let skipped = 0;
    for (const s of sessions) {
      encodeSessionKey(s, key);
      encodeSession(s, value);
      try {
        map.update(key, value, opts.replace ? 'any' : 'noexist');
        written++;
      } catch (err) {
        if ((err as DatapathError).code !== 'EEXIST') throw err;
        skipped++;
      }
    }
    return { written, skipped };
  }

  /** Deletes sessions by key; returns how many existed. */
  deleteSessions(keys: readonly SessionKey[]): number {
    this.#check('delete sessions');
    const buf = new Uint8Array(SESSION_KEY.size);
    let n = 0;
    for (const k of keys) if (this.#maps.sessions.delete(encodeSessionKey(k, buf))) n++;
    return n;
  }

  /**
   * Makes the policy maps hold exactly `policy`: new and changed entries are written first, then
   * entries the policy no longer has are removed. Sessions are not touched, so established
   * connections keep passing whatever the new policy says about new ones.
   */
  applyPolicy(policy: FirewallPolicy): PolicyApplyResult {
    this.#check('apply policy');
    const compiled = compilePolicy(policy, (ifname) =>
      ifindexIn(this.#netns ?? this.#options?.netns, ifname, 'redirect'),
    );
    let written = 0;
    let removed = 0;
    const sync = (map: BpfMap, entries: MapEntry[], phase: 'write' | 'remove'): void => {
      const want = new Map(entries.map((e) => [hexOf(e.key), e]));
      if (phase === 'write') {
        for (const e of entries) {
          const have = map.lookup(e.key);
          if (have !== undefined && hexOf(have) === hexOf(e.value)) continue;
          map.update(e.key, e.value);
          written++;
        }
        return;
      }
      for (const k of [...map.keys()]) {
        if (want.has(hexOf(k))) continue;
        if (map.delete(k)) removed++;
      }
    };
    // Policies before the rules and networks that name them; removals in the reverse order.
    sync(this.#maps.policies, compiled.policies, 'write');
    sync(this.#maps.rules, compiled.rules, 'write');
    sync(this.#maps.networks, compiled.networks, 'write');
    sync(this.#maps.networks, compiled.networks, 'remove');
    sync(this.#maps.rules, compiled.rules, 'remove');
    sync(this.#maps.policies, compiled.policies, 'remove');
    return {
      networks: compiled.networks.length,
      policies: compiled.policies.length,
      rules: compiled.rules.length,
      written,
      removed,
    };
  }

  status(): FirewallStatus {
    this.#check('read status');
    const linksDir = join(this.pinDir, 'links');
    const count = (m: BpfMap): number => {
      let n = 0;
      for (const _ of m.keys()) n++;
      return n;
    };
    return {
      pinDir: this.pinDir,
      config: this.config(),
      links: existsSync(linksDir)
        ? readdirSync(linksDir)
            .map((f) => f.replace(/^tc-/, ''))
            .sort()
        : [],
      settings: this.settings(),
      sessions: this.#maps.sessions.dump().count,
      maxSessions: this.#maps.sessions.maxEntries,
      networks: count(this.#maps.networks),
      policies: count(this.#maps.policies),
      rules: count(this.#maps.rules),
    };
  }

  /** A reader of the audit ring buffer (one consumer per ring: readers share its position). */
  auditReader(): RingBufferReader {
    this.#check('read audit events');
    const r = new RingBufferReader(this.#maps.audit);
    this.#readers.push(r);
    return r;
  }

  /** A reader of the session event ring buffer (one consumer per ring). */
  sessionEventReader(): RingBufferReader {
    this.#check('read session events');
    const r = new RingBufferReader(this.#maps.sessionEvents);
    this.#readers.push(r);
    return r;
  }

  /**
   * Closes readers and fds. Links are detached unless `keepAttached` (then they stay, pinned, after
   * this process exits); pins are removed only with `unpin`. Idempotent.
   */
  close(opts: { keepAttached?: boolean; unpin?: boolean } = {}): void {
    if (this.#closed) return;
    this.#closed = true;
    let first: Error | undefined;
    if (!opts.keepAttached) {
      withNetns(this.#options?.netns, () => {
        for (const link of this.links.splice(0)) {
          try {
            link.close();
          } catch (err) {
            first ??= err instanceof Error ? err : new Error(String(err));
          }
        }
      });
    }
    for (const r of this.#readers.splice(0)) r.close();
    if (this.#collection) this.#collection.close();
    else for (const m of Object.values(this.#maps)) m.close();
    if (opts.unpin) rmSync(this.pinDir, { recursive: true, force: true });
    if (first !== undefined) throw first;
  }

  #check(op: string): void {
    if (this.#closed)
      throw new DatapathError('ECLOSED', `${op} of firewall ${this.pinDir}: the firewall was closed`);
  }

  #read(spec: SettingSpec): number {
    const v = this.#maps.settings.lookup(encodeU32(spec.key));
    return v === undefined ? 0 : decodeU32(v);
  }

  #write(spec: SettingSpec, value: number): void {
    this.#maps.settings.update(encodeU32(spec.key), encodeU32(value));
  }

  #value(spec: SettingSpec): SettingValue {
    const value = this.#read(spec);
    return {
      name: spec.name as SettingName,
      key: spec.key,
      value,
      text: formatSettingValue(spec, value),
      description: spec.description,
    };
  }
}

/** Where an instance's firewall is pinned: <pinRoot>/rxflow-firewall-<instance>. */
export function firewallPinDir(instance = 'default', pinRoot = '/sys/fs/bpf'): string {
  if (!isInstanceName(instance)) {
    throw new FirewallError('EARG', `firewall instance '${instance}' ${INSTANCE_RULE}`);
  }
  return join(pinRoot, `rxflow-firewall-${instance}`);
}

/** The tunnel mode names, for option choices. */
export const TUNNEL_MODES = TUNNELS;
