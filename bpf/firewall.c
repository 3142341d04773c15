// SPDX-License-Identifier: GPL-2.0
/* The firewall: TC programs that give real verdicts. A packet of an established session passes
 * (or is redirected) without a policy lookup, whichever way it goes; any other packet is judged by
 * the policy of its source network: rules on destination prefix, protocol and port, else the
 * policy's default action. Allowed packets open a session; in audit mode (enforcement off) so
 * do blocked ones, which pass, keyed by the initiator as well. In tunnel mode (VXLAN or GENEVE) the
 * policy and the session apply to the inner packet, and with hairpin on, allowed packets go back
 * out the interface they came in on with outer MACs, addresses and UDP ports swapped (a gateway
 * load balancer appliance). Types shared with userspace are in firewall.h. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "firewall.h"
#include "parse.h"

/* TC_ACT_OK is TCX_PASS: the verdict is final, later programs on the hook do not run.
 * TC_ACT_UNSPEC (TCX_NEXT) is for packets the firewall has no opinion on (not IP, unparsable). */
#define FW_PASS TC_ACT_OK
#define FW_DROP TC_ACT_SHOT
#define FW_NO_OPINION TC_ACT_UNSPEC

#define VXLAN_PORT 4789
#define GENEVE_PORT 6081
#define IPPROTO_SCTP_ 132

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define MAX_GENEVE_OPTIONS 8
/* Masks an offset the caller just checked against MAX_LAYER_OFF. In asm so clang cannot drop it:
 * without it clang checks one copy of the register and indexes the packet with another, which
 * the verifier sees unbounded. */
#define BOUND_OFF(x) asm volatile("%0 &= 0x7ff" : "+r"(x))

/* Prefix bits of a rule key before the destination address: policy id, protocol, pad, port. */
#define RULE_KEY_FIXED_BITS 64

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct fw_network_key);
	__type(value, __u32);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} fw_networks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct fw_rule_key);
	__type(value, struct fw_rule);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} fw_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct fw_policy);
	__uint(max_entries, 4096);
} fw_policies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, FW_SET_MAX);
} fw_settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_config);
	__uint(max_entries, 1);
} fw_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, FW_CTR_MAX);
} fw_counters SEC(".maps");

/* LRU: a full session map evicts the least recently used session instead of refusing a new one. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct fw_session_key);
	__type(value, struct fw_session);
	__uint(max_entries, 262144);
} fw_sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} fw_audit SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} fw_sess_events SEC(".maps");

struct geneve_opt {
	__be16 opt_class;
	__u8 type;
	__u8 len; /* 3 reserved bits, data length in 4-byte words (5 bits) */
};

/* One encapsulation layer: (Ethernet,) IP and the transport header. */
struct fw_layer {
	__u8 src_ip[16];
	__u8 dst_ip[16];
	__u8 src_mac[6];
	__u8 dst_mac[6];
	__u32 l3_off;
	__u32 l4_off;
	__u32 end_off;   /* after the transport header */
	__u16 src_port;
	__u16 dst_port;
	__u8 protocol;
	__u8 ip_version;
	__u8 has_l4;     /* 0 for a non-first fragment */
	__u8 tcp_flags;
};

/* A tunnel header: what to look for (set by the caller) and what the header says. */
struct fw_tunnel_info {
	__u32 mode;        /* in: FW_TUNNEL_VXLAN or FW_TUNNEL_GENEVE */
	__u32 opt_class;   /* in: GENEVE option class of the cookie */
	__u32 cookie_type; /* in: its type; 256: any */
	__u32 inner_off;
	__u32 vni;
	__u8 cookie[8];
	__u8 inner_eth; /* the inner frame starts with Ethernet */
	__u8 _pad[3];
};

/* What the programs know about the packet at hand, passed to the global functions below. */
struct fw_pkt {
	struct fw_layer outer;
	struct fw_tunnel_info tun;
	__u64 now;
	__u32 segs;
	__u32 len;
	__u8 dir;
	__u8 tunnel; /* FW_TUNNEL_* the packet was decapsulated from */
	__u8 flags;  /* TCP flags of the (inner) packet */
	__u8 _pad;
};

static __always_inline __u32 setting(__u32 index)
{
	__u32 *v = bpf_map_lookup_elem(&fw_settings, &index);

	return v ? *v : 0;
}

static __always_inline void count(__u32 index, __u32 n)
{
	__u64 *c = bpf_map_lookup_elem(&fw_counters, &index);

	if (c)
		*c += n;
}

/* Parses (Ethernet, up to two VLAN tags,) IPv4 or IPv6 with extension headers, and the TCP, UDP or
 * ICMP header at `off`. Global rather than inlined: the verifier checks it once, not once per
 * caller and layer. */
__attribute__((noinline)) int fw_parse_layer(struct __sk_buff *skb, struct fw_layer *l, __u32 start,
					     __u32 eth)
{
	__u64 off = start;

	if (!l)
		return PARSE_MALFORMED;
	if (off > MAX_LAYER_OFF)
		return PARSE_MALFORMED;
	BOUND_OFF(off);

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__be16 proto = ETH_P_IP_BE;

	if (eth) {
		struct ethhdr *eh = data + off;

		if ((void *)(eh + 1) > data_end)
			return PARSE_SHORT;
		__builtin_memcpy(l->dst_mac, eh->h_dest, 6);
		__builtin_memcpy(l->src_mac, eh->h_source, 6);
		proto = eh->h_proto;
		off += sizeof(*eh);
#pragma unroll
		for (int i = 0; i < MAX_VLAN_TAGS; i++) {
			if (proto != ETH_P_8021Q_BE && proto != ETH_P_8021AD_BE)
				break;
			if (off > MAX_LAYER_OFF)
				return PARSE_MALFORMED;
			struct vlan_tag *vh = data + off;

			if ((void *)(vh + 1) > data_end)
				return PARSE_SHORT;
			proto = vh->proto;
			off += sizeof(*vh);
		}
	} else {
		/* A tunnel carrying IP directly: the version nibble says which. */
		__u8 *v = data + off;

		if ((void *)(v + 1) > data_end)
			return PARSE_SHORT;
		proto = (*v >> 4) == 6 ? ETH_P_IPV6_BE : ETH_P_IP_BE;
	}

	if (off > MAX_LAYER_OFF)
		return PARSE_MALFORMED;
	l->l3_off = off;
	if (proto == ETH_P_IP_BE) {
		struct iphdr *ip = data + off;

		if ((void *)(ip + 1) > data_end)
			return PARSE_SHORT;
		if (ip->version != 4 || ip->ihl < 5)
			return PARSE_MALFORMED;
		l->ip_version = 4;
		l->protocol = ip->protocol;
		set_ipv4_mapped(l->src_ip, ip->saddr);
		set_ipv4_mapped(l->dst_ip, ip->daddr);
		l->has_l4 = (ip->frag_off & bpf_htons(0x1fff)) == 0;
		off += ip->ihl * 4;
	} else if (proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return PARSE_SHORT;
		if (ip6->version != 6)
			return PARSE_MALFORMED;
		l->ip_version = 6;
		__builtin_memcpy(l->src_ip, &ip6->saddr, 16);
		__builtin_memcpy(l->dst_ip, &ip6->daddr, 16);
		__u8 next = ip6->nexthdr;

		off += sizeof(*ip6);
		l->has_l4 = 1;
#pragma unroll
		for (int i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS &&
			    next != IPPROTO_AH && next != IPPROTO_FRAGMENT)
				break;
			if (off > MAX_LAYER_OFF)
				return PARSE_MALFORMED;
			__u8 *eh = data + off;

			if ((void *)(eh + 8) > data_end)
				return PARSE_SHORT;
			if (next == IPPROTO_FRAGMENT) {
				next = eh[0];
				off += 8;
				if ((eh[2] << 5 | eh[3] >> 3) != 0) {
					l->has_l4 = 0;
					break;
				}
				continue;
			}
			__u64 len = next == IPPROTO_AH ? ((__u64)eh[1] + 2) * 4 : ((__u64)eh[1] + 1) * 8;

			next = eh[0];
			off += len;
		}
		l->protocol = next;
	} else {
		return PARSE_NON_IP;
	}

	if (off > MAX_LAYER_OFF)
		return PARSE_MALFORMED;
	l->l4_off = off;
	l->end_off = off;
	if (!l->has_l4)
		return PARSE_OK;

	if (l->protocol == IPPROTO_TCP) {
		struct tcp_head *th = data + off;

		if ((void *)(th + 1) > data_end)
			return PARSE_SHORT;
		l->src_port = bpf_ntohs(th->source);
		l->dst_port = bpf_ntohs(th->dest);
		l->tcp_flags = th->flags;
		l->end_off = off + (th->doff >> 4) * 4;
	} else if (l->protocol == IPPROTO_UDP || l->protocol == IPPROTO_SCTP_) {
		/* SCTP's ports sit where UDP's do. */
		struct udphdr *uh = data + off;

		if ((void *)(uh + 1) > data_end)
			return PARSE_SHORT;
		l->src_port = bpf_ntohs(uh->source);
		l->dst_port = bpf_ntohs(uh->dest);
		l->end_off = off + sizeof(*uh);
	} else if (l->protocol == IPPROTO_ICMP || l->protocol == IPPROTO_ICMPV6) {
		struct icmp_head *ih = data + off;

		if ((void *)(ih + 1) > data_end)
			return PARSE_SHORT;
		/* Echo request and reply share the identifier: as both ports, the reply's reversed
		 * tuple finds the request's session. */
		if (ih->type == 8 || ih->type == 0 || ih->type == 128 || ih->type == 129) {
			l->src_port = bpf_ntohs(ih->id);
			l->dst_port = l->src_port;
		}
		l->end_off = off + sizeof(*ih);
	}
	return PARSE_OK;
}

/* Parses the VXLAN or GENEVE header at `off` (just after the outer UDP header). The GENEVE flow
 * cookie is the data of the first option of class `opt_class` and type `cookie_type` (256: any
 * type), up to 8 bytes. Returns PARSE_NON_IP for a header that is not a tunnel this firewall
 * decapsulates (then the packet is judged as plain UDP). */
__attribute__((noinline)) int fw_parse_tunnel(struct __sk_buff *skb, struct fw_tunnel_info *t,
					      __u32 start)
{
	__u64 off = start;

	if (!t)
		return PARSE_MALFORMED;
	__u32 mode = t->mode;
	__u32 opt_class = t->opt_class;
	__u32 cookie_type = t->cookie_type;

	if (off > MAX_LAYER_OFF)
		return PARSE_MALFORMED;
	BOUND_OFF(off);

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (mode == FW_TUNNEL_VXLAN) {
		struct vxlan_head *vx = data + off;

		if ((void *)(vx + 1) > data_end)
			return PARSE_SHORT;
		if (!(vx->flags & 0x08))
			return PARSE_NON_IP;
		t->vni = tunnel_vni(vx->vni);
		t->inner_off = off + sizeof(*vx);
		t->inner_eth = 1;
		return PARSE_OK;
	}
	if (mode != FW_TUNNEL_GENEVE)
		return PARSE_NON_IP;

	struct geneve_head *gh = data + off;

	if ((void *)(gh + 1) > data_end)
		return PARSE_SHORT;
	if ((gh->ver_opt_len >> 6) != 0)
		return PARSE_NON_IP;
	if (gh->proto == ETH_P_TEB_BE)
		t->inner_eth = 1;
	else if (gh->proto != ETH_P_IP_BE && gh->proto != ETH_P_IPV6_BE)
		return PARSE_NON_IP;
	t->vni = tunnel_vni(gh->vni);

	__u64 opt = off + sizeof(*gh);
	__u64 opt_end = opt + (gh->ver_opt_len & 0x3f) * 4;
	int found = 0;

#pragma unroll
	for (int i = 0; i < MAX_GENEVE_OPTIONS; i++) {
		if (opt + sizeof(struct geneve_opt) > opt_end || opt > MAX_LAYER_OFF)
			break;
		struct geneve_opt *o = data + opt;

		if ((void *)(o + 1) > data_end)
			return PARSE_SHORT;
		__u64 dlen = (o->len & 0x1f) * 4;

		if (!found && bpf_ntohs(o->opt_class) == opt_class &&
		    (cookie_type > 255 || o->type == cookie_type) && dlen > 0) {
			__u8 *d = (void *)(o + 1);

			if (dlen >= 8) {
				if ((void *)(d + 8) > data_end)
					return PARSE_SHORT;
				__builtin_memcpy(t->cookie, d, 8);
			} else {
				if ((void *)(d + 4) > data_end)
					return PARSE_SHORT;
				__builtin_memcpy(t->cookie, d, 4);
			}
			found = 1;
		}
		opt += sizeof(struct geneve_opt) + dlen;
	}
	t->inner_off = opt_end;
	return PARSE_OK;
}

struct fw_verdict {
	__u32 action;
	__u32 reason;
	__u32 policy_id;
	__u32 rule_id;
	__u32 redirect_ifindex;
};

static __always_inline void best_rule(struct fw_rule_key *rk, struct fw_rule **best)
{
	struct fw_rule *r = bpf_map_lookup_elem(&fw_rules, rk);

	if (r && (!*best || r->dst_prefixlen > (*best)->dst_prefixlen))
		*best = r;
}

/* The policy's verdict for a packet without a session. Global: three trie lookups and their
 * comparisons are verified once. */
__attribute__((noinline)) int fw_judge(const struct fw_session_key *key, struct fw_verdict *v)
{
	if (!key || !v)
		return 0;

	struct fw_network_key nk = { .prefixlen = 128 };

	__builtin_memcpy(nk.addr, key->src_ip, 16);
	__u32 *policy_id = bpf_map_lookup_elem(&fw_networks, &nk);

	if (!policy_id) {
		v->action = setting(FW_SET_DEFAULT_ACTION);
		v->reason = FW_REASON_NO_NETWORK;
		return 0;
	}
	v->policy_id = *policy_id;
	struct fw_policy *pol = bpf_map_lookup_elem(&fw_policies, policy_id);

	if (!pol) {
		v->action = setting(FW_SET_DEFAULT_ACTION);
		v->reason = FW_REASON_NO_POLICY;
		return 0;
	}
	v->redirect_ifindex = pol->redirect_ifindex;

	struct fw_rule_key rk = {
		.prefixlen = RULE_KEY_FIXED_BITS + 128,
		.policy_id = *policy_id,
		.protocol = key->protocol,
	};
	struct fw_rule *best = 0;
	__u8 proto = key->protocol;

	__builtin_memcpy(rk.addr, key->dst_ip, 16);
	/* Ties go to the more specific protocol and port: later lookups must be strictly longer. */
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP_) {
		rk.port = key->dst_port;
		best_rule(&rk, &best);
	}
	rk.port = 0;
	best_rule(&rk, &best);
	rk.protocol = 0;
	best_rule(&rk, &best);
	if (best) {
		v->action = best->action;
		v->rule_id = best->rule_id;
		v->reason = FW_REASON_RULE;
	} else {
		v->action = pol->default_action;
		v->reason = FW_REASON_POLICY_DEFAULT;
	}
	return 0;
}

static __always_inline void audit(struct __sk_buff *skb, const struct fw_session_key *key,
				  const struct fw_verdict *v, __u8 dir, __u8 tunnel, __u8 enforced)
{
	__u32 sampling = setting(FW_SET_AUDIT_SAMPLING);

	if (sampling > 1 && bpf_get_prandom_u32() % sampling != 0)
		return;
	struct fw_audit_event *ev = bpf_ringbuf_reserve(&fw_audit, sizeof(*ev), 0);

	if (!ev) {
		count(FW_CTR_AUDIT_LOST, 1);
		return;
	}
	ev->time_ns = bpf_ktime_get_ns();
	__builtin_memcpy(ev->src_ip, key->src_ip, 16);
	__builtin_memcpy(ev->dst_ip, key->dst_ip, 16);
	ev->vni = key->vni;
	ev->ifindex = skb->ifindex;
	ev->policy_id = v->policy_id;
	ev->rule_id = v->rule_id;
	ev->packet_len = skb->len;
	ev->src_port = key->src_port;
	ev->dst_port = key->dst_port;
	ev->protocol = key->protocol;
	ev->action = v->action;
	ev->reason = v->reason;
	ev->direction = dir;
	ev->tunnel_type = tunnel;
	ev->enforced = enforced;
	ev->_pad0[0] = 0;
	ev->_pad0[1] = 0;
	/* Userspace drains on a timer: a wakeup per event would cost more than the event. */
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

static __always_inline void session_event(__u32 type, const struct fw_session_key *key,
					  const struct fw_session *s)
{
	struct fw_session_event *ev = bpf_ringbuf_reserve(&fw_sess_events, sizeof(*ev), 0);

	if (!ev) {
		count(FW_CTR_SESSION_EVENTS_LOST, 1);
		return;
	}
	ev->type = type;
	ev->key = *key;
	ev->value = *s;
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

/* The next TCP state after a packet with `flags` going forward (initiator to responder) or back. */
static __always_inline __u8 tcp_next(__u8 state, __u8 flags, int fwd)
{
	if (flags & TCP_RST)
		return FW_TCP_CLOSED;
	if (flags & TCP_FIN) {
		/* Both FINs seen (the OR of flags of both directions cannot tell who sent one, so the
		 * second FIN is the one arriving while FIN_WAIT). */
		if (state == FW_TCP_FIN_WAIT || state == FW_TCP_CLOSED)
			return FW_TCP_CLOSED;
		return FW_TCP_FIN_WAIT;
	}
	if (state == FW_TCP_SYN_SENT && !fwd && (flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK))
		return FW_TCP_SYN_RECV;
	if (state == FW_TCP_SYN_RECV && fwd && (flags & TCP_ACK))
		return FW_TCP_ESTABLISHED;
	return state;
}

static __always_inline int expired(const struct fw_session *s, __u64 now)
{
	__u32 timeout_s = s->tcp_state == FW_TCP_CLOSED ? setting(FW_SET_SESSION_CLOSED_TIMEOUT_S)
							: setting(FW_SET_SESSION_IDLE_TIMEOUT_S);
	__u64 last = s->last_seen_ns;

	/* 0 means no timeout. A restored session may carry a last-seen time slightly ahead of ours. */
	return timeout_s != 0 && now > last && now - last > (__u64)timeout_s * 1000000000ULL;
}

/* Accounts a packet of an existing session and sends an UPDATED event when its TCP state changed
 * or the update interval passed since the last event. */
static __always_inline void session_hit(struct fw_session *s, const struct fw_session_key *key,
					int fwd, __u32 segs, __u32 len, __u8 flags, __u64 now)
{
	if (fwd) {
		__sync_fetch_and_add(&s->packets_fwd, segs);
		__sync_fetch_and_add(&s->bytes_fwd, len);
	} else {
		__sync_fetch_and_add(&s->packets_rev, segs);
		__sync_fetch_and_add(&s->bytes_rev, len);
	}
	s->last_seen_ns = now;

	int changed = 0;

	if (key->protocol == IPPROTO_TCP) {
		__u8 next = tcp_next(s->tcp_state, flags, fwd);

		if ((s->tcp_flags | flags) != s->tcp_flags)
			s->tcp_flags |= flags;
		if (next != s->tcp_state) {
			s->tcp_state = next;
			changed = 1;
		}
	}
	__u32 interval_ms = setting(FW_SET_SESSION_UPDATE_INTERVAL_MS);

	if (changed || (interval_ms != 0 && now - s->last_event_ns >= (__u64)interval_ms * 1000000ULL)) {
		s->last_event_ns = now;
		session_event(FW_SESSION_UPDATED, key, s);
	}
}

/* Swaps the outer MACs, IP addresses and UDP ports and sends the packet back out the interface
 * it came in on. Swapping keeps the IPv4 header and UDP checksums valid: both are sums in which
 * the two addresses and the two ports only trade places. Global: its buffers get their own frame. */
__attribute__((noinline)) int fw_hairpin(struct __sk_buff *skb, __u32 l3_off, __u32 l4_off,
					 __u32 ip_version)
{
	__u8 buf[32], tmp[16];
	__u16 ports[2], p;

	if (bpf_skb_load_bytes(skb, 0, buf, 12))
		return FW_DROP;
	__builtin_memcpy(tmp, buf, 6);
	__builtin_memcpy(buf, buf + 6, 6);
	__builtin_memcpy(buf + 6, tmp, 6);
	if (bpf_skb_store_bytes(skb, 0, buf, 12, 0))
		return FW_DROP;

	if (ip_version == 4) {
		if (bpf_skb_load_bytes(skb, l3_off + 12, buf, 8))
			return FW_DROP;
		__builtin_memcpy(tmp, buf, 4);
		__builtin_memcpy(buf, buf + 4, 4);
		__builtin_memcpy(buf + 4, tmp, 4);
		if (bpf_skb_store_bytes(skb, l3_off + 12, buf, 8, 0))
			return FW_DROP;
	} else {
		if (bpf_skb_load_bytes(skb, l3_off + 8, buf, 32))
			return FW_DROP;
		__builtin_memcpy(tmp, buf, 16);
		__builtin_memcpy(buf, buf + 16, 16);
		__builtin_memcpy(buf + 16, tmp, 16);
		if (bpf_skb_store_bytes(skb, l3_off + 8, buf, 32, 0))
			return FW_DROP;
	}
	if (bpf_skb_load_bytes(skb, l4_off, ports, 4))
		return FW_DROP;
	p = ports[0];
	ports[0] = ports[1];
	ports[1] = p;
	if (bpf_skb_store_bytes(skb, l4_off, ports, 4, 0))
		return FW_DROP;
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline int hairpin(struct __sk_buff *skb, const struct fw_pkt *p)
{
	return fw_hairpin(skb, p->outer.l3_off, p->outer.l4_off, p->outer.ip_version);
}

static __always_inline int addr_is_zero(const __u8 *a)
{
	__u64 x[2];

	__builtin_memcpy(x, a, 16);
	return (x[0] | x[1]) == 0;
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	__u64 x[2], y[2];

	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1];
}

static __always_inline void reverse_key(struct fw_session_key *r, const struct fw_session_key *k)
{
	__builtin_memcpy(r->src_ip, k->dst_ip, 16);
	__builtin_memcpy(r->dst_ip, k->src_ip, 16);
	r->vni = k->vni;
	r->src_port = k->dst_port;
	r->dst_port = k->src_port;
	r->protocol = k->protocol;
	r->_pad0[0] = 0;
	r->_pad0[1] = 0;
	r->_pad0[2] = 0;
}

/* Stores a new session for a packet the policy allowed (or blocked, in audit mode), keyed as the
 * packet goes, and sends its CREATED event. `replace` overwrites a stale entry of the same key. Global: the session value is
 * built in its own frame. */
__attribute__((noinline)) int fw_open_session(struct __sk_buff *skb, const struct fw_pkt *p,
					      const struct fw_session_key *key,
					      const struct fw_verdict *v, __u32 replace)
{
	if (!p || !key || !v)
		return 0;

	__u8 flags = p->flags;
	struct fw_session ns = {
		.created_ns = p->now,
		.last_seen_ns = p->now,
		.last_event_ns = p->now,
		.packets_fwd = p->segs,
		.bytes_fwd = p->len,
		.ifindex = skb->ifindex,
		.redirect_ifindex = v->redirect_ifindex,
		.policy_id = v->policy_id,
		.rule_id = v->rule_id,
		.tunnel_type = p->tunnel,
		.tcp_flags = flags,
		.action = v->action,
		.direction = p->dir,
		.origin = FW_ORIGIN_KERNEL,
		.reason = v->reason,
	};

	if (key->protocol == IPPROTO_TCP)
		ns.tcp_state = (flags & (TCP_SYN | TCP_ACK)) == TCP_SYN ? FW_TCP_SYN_SENT
									: tcp_next(FW_TCP_ESTABLISHED, flags, 1);
	__builtin_memcpy(ns.outer_src_mac, p->outer.src_mac, 6);
	__builtin_memcpy(ns.outer_dst_mac, p->outer.dst_mac, 6);
	if (p->tunnel) {
		__builtin_memcpy(ns.cookie, p->tun.cookie, 8);
		__builtin_memcpy(ns.outer_src_ip, p->outer.src_ip, 16);
		__builtin_memcpy(ns.outer_dst_ip, p->outer.dst_ip, 16);
		ns.outer_src_port = p->outer.src_port;
		ns.outer_dst_port = p->outer.dst_port;
	}
	long err = bpf_map_update_elem(&fw_sessions, key, &ns, replace ? BPF_ANY : BPF_NOEXIST);

	if (err == 0) {
		session_event(FW_SESSION_CREATED, key, &ns);
		return 0;
	}
	if (err == -EEXIST) {
		/* Another CPU opened it between our lookup and update. */
		struct fw_session *s = bpf_map_lookup_elem(&fw_sessions, key);

		if (s)
			session_hit(s, key, 1, p->segs, p->len, flags, p->now);
		return 0;
	}
	count(FW_CTR_SESSION_CREATE_FAILED, p->segs);
	return 0;
}

/* Parses the packet into p: the outer layer and, for tunnel traffic of this firewall, the tunnel
 * header and the inner layer. Returns a parse_result, or -1 for our own hairpinned packet. */
static __always_inline int parse_packet(struct __sk_buff *skb, struct fw_pkt *p, struct fw_layer *inner,
					__u32 hairpin_on)
{
	int rc = fw_parse_layer(skb, &p->outer, 0, 1);

	/* Headers beyond the linear area: pull them in once and parse again. */
	if (rc == PARSE_SHORT && skb->len > skb->data_end - skb->data) {
		if (bpf_skb_pull_data(skb, skb->len < PULL_LEN ? skb->len : PULL_LEN) == 0) {
			__builtin_memset(&p->outer, 0, sizeof(p->outer));
			rc = fw_parse_layer(skb, &p->outer, 0, 1);
		}
	}
	if (rc != PARSE_OK)
		return rc;

	__u32 mode = setting(FW_SET_TUNNEL_MODE);

	if (mode == FW_TUNNEL_NONE || p->outer.protocol != IPPROTO_UDP || !p->outer.has_l4)
		return PARSE_OK;

	__u16 port = mode == FW_TUNNEL_GENEVE ? GENEVE_PORT : VXLAN_PORT;

	if (p->dir == FW_DIR_EGRESS && hairpin_on && p->outer.src_port == port &&
	    p->outer.dst_port != port)
		return -1;
	if (p->outer.dst_port != port)
		return PARSE_OK;

	__u32 zero = 0;
	struct fw_config *cfg = bpf_map_lookup_elem(&fw_config, &zero);
	/* Tunnel traffic of this firewall is sent to its address on ingress, from it on egress. */
	if (cfg && !addr_is_zero(cfg->ingress_addr) &&
	    !addr_eq(cfg->ingress_addr, p->dir == FW_DIR_INGRESS ? p->outer.dst_ip : p->outer.src_ip))
		return PARSE_OK;

	p->tun.mode = mode;
	p->tun.opt_class = setting(FW_SET_GENEVE_OPTION_CLASS);
	p->tun.cookie_type = setting(FW_SET_GENEVE_COOKIE_TYPE);
	rc = fw_parse_tunnel(skb, &p->tun, p->outer.end_off);
	if (rc == PARSE_NON_IP)
		return PARSE_OK; /* not a tunnel header after all: plain UDP */
	if (rc != PARSE_OK)
		return rc;
	rc = fw_parse_layer(skb, inner, p->tun.inner_off, p->tun.inner_eth);
	if (rc == PARSE_OK)
		p->tunnel = mode;
	return rc;
}

static __always_inline int fw_process(struct __sk_buff *skb, __u8 dir)
{
	struct fw_pkt p = {};
	struct fw_layer inner = {};

	/* A GSO skb (egress, before segmentation) or a GRO skb (ingress) stands for gso_segs packets. */
	p.segs = skb->gso_segs > 1 ? skb->gso_segs : 1;
	p.len = skb->len;
	p.dir = dir;
	count(FW_CTR_PACKETS, p.segs);

	__u32 hairpin_on = setting(FW_SET_HAIRPIN);
	int rc = parse_packet(skb, &p, &inner, hairpin_on);

	if (rc == -1) {
		/* Our own hairpinned packet on its way out: judged on ingress already. */
		count(FW_CTR_OWN_HAIRPIN, p.segs);
		return FW_NO_OPINION;
	}
	if (rc == PARSE_NON_IP) {
		count(FW_CTR_NON_IP, p.segs);
		return FW_NO_OPINION;
	}
	if (rc != PARSE_OK) {
		count(FW_CTR_PARSE_FAILED, p.segs);
		return FW_NO_OPINION;
	}

	const struct fw_layer *l = p.tunnel ? &inner : &p.outer;
	struct fw_session_key key = {};

	__builtin_memcpy(key.src_ip, l->src_ip, 16);
	__builtin_memcpy(key.dst_ip, l->dst_ip, 16);
	key.vni = p.tunnel ? p.tun.vni : 0;
	key.src_port = l->src_port;
	key.dst_port = l->dst_port;
	key.protocol = l->protocol;
	p.flags = l->tcp_flags;
	p.now = bpf_ktime_get_ns();

	int fwd = 1;
	struct fw_session_key rkey = {};
	struct fw_session *s = bpf_map_lookup_elem(&fw_sessions, &key);

	if (!s) {
		reverse_key(&rkey, &key);
		s = bpf_map_lookup_elem(&fw_sessions, &rkey);
		fwd = 0;
	}
	/* A fresh SYN on a closed session's tuple is a new connection: the policy decides again. */
	int reopen = s && fwd && key.protocol == IPPROTO_TCP && s->tcp_state == FW_TCP_CLOSED &&
		     (p.flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	int stale = s && (reopen || expired(s, p.now));
	__u32 action;
	__u32 redirect_ifindex = 0;
	/* One verdict for both ways below: the stack is shared with fw_hairpin's frame. */
	struct fw_verdict v = {};

	if (s && !stale && s->action == FW_ACTION_BLOCK) {
		/* An audit-mode session: a connection the policy blocks, opened while enforcement was off.
		 * Its forward packets are reported as the policy's block verdict each, as enforcement
		 * would drop each; the replies pass unreported. Once enforcement is on, it passes no more. */
		v.action = FW_ACTION_BLOCK;
		v.reason = s->reason;
		v.policy_id = s->policy_id;
		v.rule_id = s->rule_id;
		if (setting(FW_SET_ENFORCEMENT) != 0) {
			if (fwd)
				audit(skb, &key, &v, dir, p.tunnel, 1);
			count(FW_CTR_BLOCKED, p.segs);
			return FW_DROP;
		}
		session_hit(s, fwd ? &key : &rkey, fwd, p.segs, p.len, p.flags, p.now);
		if (fwd)
			audit(skb, &key, &v, dir, p.tunnel, 0);
		count(FW_CTR_AUDIT_PASSED, p.segs);
		if (p.tunnel && hairpin_on)
			return hairpin(skb, &p);
		return FW_PASS;
	}
	if (s && !stale) {
		session_hit(s, fwd ? &key : &rkey, fwd, p.segs, p.len, p.flags, p.now);
		count(FW_CTR_SESSION_HITS, p.segs);
		action = s->action;
		if (action == FW_ACTION_REDIRECT) {
			if (fwd)
				redirect_ifindex = s->redirect_ifindex;
			else
				action = FW_ACTION_ALLOW;
		}
	} else {
		fw_judge(&key, &v);
		action = v.action == FW_ACTION_NONE ? FW_ACTION_ALLOW : v.action;
		v.action = action;
		if (action == FW_ACTION_BLOCK) {
			__u8 enforced = setting(FW_SET_ENFORCEMENT) != 0;

			audit(skb, &key, &v, dir, p.tunnel, enforced);
			if (enforced) {
				count(FW_CTR_BLOCKED, p.segs);
				return FW_DROP;
			}
			count(FW_CTR_AUDIT_PASSED, p.segs);
			/* The connection is tracked as enforcement would track an allowed one, keyed by its
			 * initiator: its replies then find it instead of being judged as new connections of
			 * their own (and opening a session keyed by the responder). */
			if (stale && !fwd)
				bpf_map_delete_elem(&fw_sessions, &rkey);
			fw_open_session(skb, &p, &key, &v, stale && fwd);
			if (p.tunnel && hairpin_on)
				return hairpin(skb, &p);
			return FW_PASS;
		}
		if (action == FW_ACTION_REDIRECT && !v.redirect_ifindex) {
			__u32 zero = 0;
			struct fw_config *cfg = bpf_map_lookup_elem(&fw_config, &zero);

			v.redirect_ifindex = cfg ? cfg->egress_ifindex : 0;
		}
		redirect_ifindex = v.redirect_ifindex;
		if (setting(FW_SET_AUDIT_ALLOWED))
			audit(skb, &key, &v, dir, p.tunnel, 1);
		/* A stale entry keyed the other way round is replaced by one keyed as this packet goes. */
		if (stale && !fwd)
			bpf_map_delete_elem(&fw_sessions, &rkey);
		fw_open_session(skb, &p, &key, &v, stale && fwd);
	}

	if (p.tunnel && hairpin_on) {
		count(FW_CTR_REDIRECTED, p.segs);
		return hairpin(skb, &p);
	}
	if (action == FW_ACTION_REDIRECT && redirect_ifindex) {
		count(FW_CTR_REDIRECTED, p.segs);
		return bpf_redirect(redirect_ifindex, 0);
	}
	count(FW_CTR_ALLOWED, p.segs);
	return FW_PASS;
}

/* Keeps every enum of firewall.h in the object's BTF (clang drops types nothing uses). */
struct fw_btf_enums {
	enum fw_action action;
	enum fw_reason reason;
	enum fw_tunnel tunnel;
	enum fw_direction direction;
	enum fw_tcp_state tcp_state;
	enum fw_origin origin;
	enum fw_setting setting;
	enum fw_counter counter;
	enum fw_session_event_type event;
};

/* Never called, never loaded: its signature keeps the event structs and the enums in the
 * object's BTF, where userspace checks its layouts. */
__attribute__((noinline)) int fw_btf_types(struct fw_session_event *se, struct fw_audit_event *ae,
					   struct fw_btf_enums *e)
{
	return se && ae && e ? 1 : 0;
}

SEC("tc")
int fw_ingress(struct __sk_buff *skb)
{
	return fw_process(skb, FW_DIR_INGRESS);
}

SEC("tc")
int fw_egress(struct __sk_buff *skb)
{
	return fw_process(skb, FW_DIR_EGRESS);
}

char LICENSE[] SEC("license") = "GPL";
