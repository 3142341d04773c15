// SPDX-License-Identifier: GPL-2.0
/* Flow accounting on TC ingress and egress. The programs observe and never drop: every path
 * returns FLOW_PASS. Packets are aggregated per flow in a per-CPU hash map that userspace reads
 * and deletes on a timer; packets the map cannot take go to a ring buffer as single-packet flows;
 * whatever neither takes is counted, so userspace can account for every packet. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>

/* TC_ACT_UNSPEC is TCX_NEXT: the packet goes on to the next program on the hook (a firewall
 * attached after us) and, at the end of the chain, passes. TC_ACT_OK would end the chain there
 * and silently bypass whatever is attached behind the observer. */
#define FLOW_PASS TC_ACT_UNSPEC
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "flow.h"
#include "kernel.h"
#include "parse.h"
#include "double_buffer.h"

/* The kernel's sk_buff behind a TC context (linux 6.3+); weak, so an older kernel still loads the
 * programs, without the namespace. */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

#define E2BIG 7
#define VXLAN_PORT_BE bpf_htons(4789)
#define GENEVE_PORT_BE bpf_htons(6081)

/* The flow maps are double-buffered behind flow_maps, whose one slot names the map the programs
 * count into. A program updates its entry in place after the lookup, so userspace must never delete
 * from the map a program may be writing to: bpf_map_lookup_and_delete_batch could copy and delete
 * an entry between a program's lookup and its increment, and the increment would be lost. Instead
 * userspace points the slot at the other map (the kernel returns from a map-in-map update only
 * after an RCU grace period, i.e. once every program that could have read the old slot has ended),
 * then drains the map no program can reach any more (bpf/double_buffer.h). Both maps share one
 * definition, also the inner-map template of flow_maps, and bpf/flow_maps.h repeats its size for
 * the programs that share the maps: resize them together. */
RXFLOW_DOUBLE_BUFFERED_HASH(flow, struct flow_key, struct flow_value, 65536);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} flow_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, FLOW_CTR_MAX);
} flow_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct flow_config);
	__uint(max_entries, 1);
} flow_config SEC(".maps");

/* Handshake packets sent and not answered yet (FLOW_FEATURE_RTT). LRU: SYNs nobody answers (a
 * scan, a flood) push out the oldest instead of filling the map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct rtt_pending);
	__uint(max_entries, 16384);
} flow_rtt_pending SEC(".maps");

/* DNS queries not answered yet (FLOW_FEATURE_DNS). LRU: queries nobody answers push out the
 * oldest instead of filling the map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct dns_pending_key);
	__type(value, struct dns_pending);
	__uint(max_entries, 16384);
} flow_dns_pending SEC(".maps");

/* Query names of answered queries (FLOW_FEATURE_DNS_NAME), by the response's flow; drained at
 * every eviction. LRU and sized by userspace: a burst of answers beyond it pushes out the oldest
 * names, never a flow. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct dns_name);
	__uint(max_entries, 1);
} flow_dns_names SEC(".maps");

/* Where a name is assembled before it goes into flow_dns_names: too large for the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct dns_name);
	__uint(max_entries, 1);
} flow_dns_name_scratch SEC(".maps");

static __always_inline void count(__u32 index, __u32 n)
{
	__u64 *c = bpf_map_lookup_elem(&flow_counters, &index);

	if (c)
		*c += n;
}

/* Skips up to two 802.1Q/802.1ad tags. On TC ingress the outer tag is often already in
 * skb->vlan_tci rather than in the data; either way the ethertype after the tags is what counts.
 * A third tag in the data is PARSE_LIMIT (see FLOW_CTR_PARSE_LIMIT). */
static __always_inline int skip_vlans(void *data, void *data_end, __u32 *off, __be16 *proto,
				      __u16 *vids)
{
#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		if (*proto != ETH_P_8021Q_BE && *proto != ETH_P_8021AD_BE)
			break;
		struct vlan_tag *vh = data + *off;

		if ((void *)(vh + 1) > data_end)
			return PARSE_SHORT;
		vids[i] = bpf_ntohs(vh->tci) & 0x0fff;
		*proto = vh->proto;
		*off += sizeof(*vh);
	}
	if (*proto == ETH_P_8021Q_BE || *proto == ETH_P_8021AD_BE)
		return PARSE_LIMIT;
	return PARSE_OK;
}

static __always_inline int ipv6_ext_header(__u8 next)
{
	return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	       next == IPPROTO_AH || next == IPPROTO_FRAGMENT;
}

/* Parses the IP header at *off (proto is its ethertype), with IPv6 extension headers, into the
 * key. On return *off is the transport header and *l4 says whether one is present (a non-first
 * fragment has none). */
static __always_inline int parse_ip(void *data, void *data_end, __u32 *off, __be16 proto,
				    struct flow_key *key, struct flow_value *val, int *l4, __u32 *ip_len)
{
	if (proto == ETH_P_IP_BE) {
		struct iphdr *ip = data + *off;

		if ((void *)(ip + 1) > data_end)
			return PARSE_SHORT;
		if (ip->version != 4 || ip->ihl < 5)
			return PARSE_MALFORMED;
		__u32 hlen = ip->ihl * 4;

		if (data + *off + hlen > data_end)
			return PARSE_SHORT;
		key->ip_version = 4;
		key->eth_type = 0x0800;
		*ip_len = bpf_ntohs(ip->tot_len);
		key->protocol = ip->protocol;
		val->dscp = ip->tos >> 2;
		set_ipv4_mapped(key->src_ip, ip->saddr);
		set_ipv4_mapped(key->dst_ip, ip->daddr);
		/* Only the first fragment carries the transport header. */
		*l4 = (ip->frag_off & bpf_htons(0x1fff)) == 0;
		*off += hlen;
		return PARSE_OK;
	}
	if (proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6 = data + *off;

		if ((void *)(ip6 + 1) > data_end)
			return PARSE_SHORT;
		if (ip6->version != 6)
			return PARSE_MALFORMED;
		key->ip_version = 6;
		key->eth_type = 0x86dd;
		/* 0 is a jumbogram (RFC 2675): the caller then counts from skb->len. */
		*ip_len = ip6->payload_len ? bpf_ntohs(ip6->payload_len) + sizeof(*ip6) : 0;
		val->dscp = ((ip6->priority << 4) | (ip6->flow_lbl[0] >> 4)) >> 2;
		__builtin_memcpy(key->src_ip, &ip6->saddr, 16);
		__builtin_memcpy(key->dst_ip, &ip6->daddr, 16);
		__u8 next = ip6->nexthdr;

		*off += sizeof(*ip6);
		*l4 = 1;
#pragma unroll
		for (int i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
			if (!ipv6_ext_header(next))
				break;
			__u8 *eh = data + *off;

			if ((void *)(eh + 8) > data_end)
				return PARSE_SHORT;
			if (next == IPPROTO_FRAGMENT) {
				next = eh[0];
				*off += 8;
				/* Offset bits of the fragment header: non-zero means no transport header. */
				if ((eh[2] << 5 | eh[3] >> 3) != 0) {
					*l4 = 0;
					break;
				}
				continue;
			}
			__u32 len = next == IPPROTO_AH ? ((__u32)eh[1] + 2) * 4 : ((__u32)eh[1] + 1) * 8;

			next = eh[0];
			*off += len;
		}
		/* Still an extension header after the last one walked (a non-first fragment, which
		 * ends the walk on purpose, has no transport header to look for): the transport
		 * protocol is unknown, and recording the extension header as the protocol would
		 * misname the flow. */
		if (*l4 && ipv6_ext_header(next))
			return PARSE_LIMIT;
		key->protocol = next;
		return PARSE_OK;
	}
	return PARSE_NON_IP;
}

/* Reads the transport header at off. *tunnel_off is set to the encapsulated frame if the packet
 * is VXLAN or GENEVE and tunnels are allowed (outer packet only). */
static __always_inline int parse_l4(void *data, void *data_end, __u32 off, struct flow_key *key,
				    struct flow_value *val, int allow_tunnel, __u32 *tunnel_off,
				    __be16 *tunnel_proto, __u32 *l4_end)
{
	__u8 proto = key->protocol;

	*l4_end = off;
	if (proto == IPPROTO_TCP) {
		struct tcp_head *th = data + off;

		if ((void *)(th + 1) > data_end)
			return PARSE_SHORT;
		key->src_port = bpf_ntohs(th->source);
		key->dst_port = bpf_ntohs(th->dest);
		val->tcp_flags = th->flags;
		*l4_end = off + (th->doff >> 4) * 4;
		return PARSE_OK;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = data + off;

		if ((void *)(uh + 1) > data_end)
			return PARSE_SHORT;
		key->src_port = bpf_ntohs(uh->source);
		key->dst_port = bpf_ntohs(uh->dest);
		*l4_end = off + sizeof(*uh);
		if (!allow_tunnel)
			return PARSE_OK;
		off += sizeof(*uh);
		if (uh->dest == VXLAN_PORT_BE) {
			struct vxlan_head *vx = data + off;

			if ((void *)(vx + 1) > data_end)
				return PARSE_SHORT;
			/* Without the I flag there is no VNI: an ordinary UDP flow to port 4789. */
			if (!(vx->flags & 0x08))
				return PARSE_OK;
			key->tunnel_type = FLOW_TUNNEL_VXLAN;
			key->vni = tunnel_vni(vx->vni);
			*tunnel_off = off + sizeof(*vx);
			*tunnel_proto = ETH_P_TEB_BE;
			return PARSE_OK;
		}
		if (uh->dest == GENEVE_PORT_BE) {
			struct geneve_head *gh = data + off;

			if ((void *)(gh + 1) > data_end)
				return PARSE_SHORT;
			if ((gh->ver_opt_len >> 6) != 0 ||
			    (gh->proto != ETH_P_TEB_BE && gh->proto != ETH_P_IP_BE &&
			     gh->proto != ETH_P_IPV6_BE))
				return PARSE_OK;
			__u32 opt_len = (gh->ver_opt_len & 0x3f) * 4;
			__u8 *opts = data + off + sizeof(*gh);

			if ((void *)opts + opt_len > data_end)
				return PARSE_SHORT;
			/* The verifier tracks opts + opt_len separately: bound the cookie read itself. */
			if (opt_len >= 8) {
				if ((void *)(opts + 8) > data_end)
					return PARSE_SHORT;
				__builtin_memcpy(&val->cookie, opts, 8);
			} else if (opt_len == 4) {
				if ((void *)(opts + 4) > data_end)
					return PARSE_SHORT;
				__builtin_memcpy(&val->cookie, opts, 4);
			}
			off += sizeof(*gh);
			key->tunnel_type = FLOW_TUNNEL_GENEVE;
			key->vni = tunnel_vni(gh->vni);
			*tunnel_off = off + opt_len;
			*tunnel_proto = gh->proto;
			return PARSE_OK;
		}
		return PARSE_OK;
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		struct icmp_head *ih = data + off;

		if ((void *)(ih + 1) > data_end)
			return PARSE_SHORT;
		key->icmp_type = ih->type;
		key->icmp_code = ih->code;
		return PARSE_OK;
	}
	return PARSE_OK;
}

struct parse_pos {
	__u32 off;     /* where the next header starts */
	__be16 proto;  /* its ethertype; ETH_P_TEB for an Ethernet header */
	__u16 _pad0;
	__u32 hdr_len; /* end of the innermost transport header: what every GSO segment repeats */
	__u32 ip_off;  /* where the IP header the flow counts starts (the inner one of a tunnel) */
	__u32 ip_len;  /* its total length from the header; 0: count from skb->len */
	__u16 vids[MAX_VLAN_TAGS]; /* VLAN ids of the tags in the outer frame's data */
	__u32 l4_off;  /* where the transport header the flow counts starts */
	__u32 _pad1;
};

/* One encapsulation layer: Ethernet (if pos says so), VLAN tags, IP, transport header and, on the
 * outer layer, a VXLAN or GENEVE header, which moves pos to the encapsulated frame.
 * Global rather than inlined: the verifier checks a global function once on its own instead of
 * once for every path that reaches it, and inlined twice (outer and inner layer, then again after
 * a pull) the combinations of IPv6 extension-header chains exceed the verifier's budget. */
__attribute__((noinline)) int flow_parse_layer(struct __sk_buff *skb, struct flow_key *key,
					       struct flow_value *val, struct parse_pos *pos, int outer)
{
	if (!key || !val || !pos)
		return PARSE_MALFORMED;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 off = pos->off;
	__be16 proto = pos->proto;
	int rc, l4 = 0;

	/* Gives the verifier a bound on the offset; no real header chain gets near it. */
	if (off > MAX_LAYER_OFF)
		return PARSE_MALFORMED;
	if (proto == ETH_P_TEB_BE) {
		struct ethhdr *eth = data + off;

		if ((void *)(eth + 1) > data_end)
			return PARSE_SHORT;
		if (outer) {
			__builtin_memcpy(val->dst_mac, eth->h_dest, 6);
			__builtin_memcpy(val->src_mac, eth->h_source, 6);
		}
		proto = eth->h_proto;
		off += sizeof(*eth);
		__u16 vids[MAX_VLAN_TAGS] = { 0, 0 };

		rc = skip_vlans(data, data_end, &off, &proto, vids);
		if (rc)
			return rc;
		if (outer) {
			pos->vids[0] = vids[0];
			pos->vids[1] = vids[1];
		}
	}
	__u32 ip_off = off, ip_len = 0;

	rc = parse_ip(data, data_end, &off, proto, key, val, &l4, &ip_len);
	pos->hdr_len = off;
	if (rc == PARSE_OK) {
		pos->ip_off = ip_off;
		pos->ip_len = ip_len;
	}
	if (rc == PARSE_NON_IP && outer) {
		/* A layer-2 flow: the MACs (already in val) and the ethertype are all there is. */
		__builtin_memcpy(key->src_ip, val->src_mac, 6);
		__builtin_memcpy(key->dst_ip, val->dst_mac, 6);
		key->eth_type = bpf_ntohs(proto);
		return PARSE_OK;
	}
	if (rc || !l4)
		return rc;

	__u32 inner_off = 0;
	__be16 inner_proto = 0;
	__u32 l4_end = off;

	pos->l4_off = off;
	rc = parse_l4(data, data_end, off, key, val, outer, &inner_off, &inner_proto, &l4_end);
	pos->hdr_len = l4_end;
	if (rc == PARSE_OK && outer && key->tunnel_type) {
		pos->off = inner_off;
		pos->proto = inner_proto;
	}
	return rc;
}

/* Fills key and val (both zeroed by the caller) from the frame. For VXLAN and GENEVE the key
 * describes the inner flow and val keeps the outer addresses and ports; an inner frame that is not
 * IP (ARP across the overlay, say) counts on the outer UDP flow instead, as if it were not a
 * tunnel. */
static __always_inline int parse_frame(struct __sk_buff *skb, struct flow_key *key,
				       struct flow_value *val, struct parse_pos *out)
{
	struct parse_pos pos = { .off = 0, .proto = ETH_P_TEB_BE };
	int rc = flow_parse_layer(skb, key, val, &pos, 1);

	*out = pos;
	if (rc || !key->tunnel_type)
		return rc;

	/* Encapsulated: the outer header becomes tunnel metadata, the inner frame the flow. */
	__builtin_memcpy(val->outer_src_ip, key->src_ip, 16);
	__builtin_memcpy(val->outer_dst_ip, key->dst_ip, 16);
	val->outer_src_port = key->src_port;
	val->outer_dst_port = key->dst_port;
	__builtin_memset(key->src_ip, 0, 32);
	key->src_port = 0;
	key->dst_port = 0;
	__u8 outer_dscp = val->dscp;

	val->dscp = 0;
	rc = flow_parse_layer(skb, key, val, &pos, 0);
	if (rc != PARSE_NON_IP) {
		out->hdr_len = pos.hdr_len;
		out->l4_off = pos.l4_off;
		out->ip_off = pos.ip_off;
		out->ip_len = pos.ip_len;
		return rc;
	}
	/* Nothing of the inner layer was written into key or val: put the outer flow back. */
	__builtin_memcpy(key->src_ip, val->outer_src_ip, 32);
	key->src_port = val->outer_src_port;
	key->dst_port = val->outer_dst_port;
	key->vni = 0;
	key->tunnel_type = FLOW_TUNNEL_NONE;
	val->dscp = outer_dscp;
	val->cookie = 0;
	__builtin_memset(val->outer_src_ip, 0, 36);
	return PARSE_OK;
}

static __always_inline void account(struct flow_value *cur, const struct flow_value *pkt, __u64 now)
{
	/* A per-CPU slot is zero until this CPU counts its first packet of the flow. */
	if (cur->packets == 0) {
		*cur = *pkt;
		return;
	}
	cur->packets += pkt->packets;
	cur->bytes += pkt->bytes;
	cur->ip_bytes += pkt->ip_bytes;
	cur->last_seen_ns = now;
	cur->tcp_flags |= pkt->tcp_flags;
	if (pkt->handshake_rtt_us)
		cur->handshake_rtt_us = pkt->handshake_rtt_us;
}

#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* FLOW_FEATURE_RTT on a TCP packet. A SYN or SYN-ACK sent (egress) waits in flow_rtt_pending
 * under the key of the ingress packet that will answer it; an ingress packet with ACK set whose
 * acknowledgment number is the one awaited completes the measurement, and its round trip in
 * microseconds goes into val (0: nothing measured). cur_flags: the TCP flags the flow already
 * has on this CPU: once it has an ACK, only a SYN-ACK is looked up, so an established connection
 * costs a few tests per packet. */
static __always_inline void handshake_rtt(struct __sk_buff *skb, const struct flow_key *key,
					  const struct parse_pos *pos, struct flow_value *val,
					  __u16 cur_flags)
{
	__u8 flags = val->tcp_flags;

	/* A RST answering a SYN (a closed port) is no handshake. The server's ACK is looked for
	 * until the flow has seen an ACK on this CPU; a SYN-ACK always, so a connection refused and
	 * then retried on the same ports still gets its handshake timed. */
	if (key->direction == FLOW_DIRECTION_EGRESS
		    ? !(flags & TCP_SYN)
		    : !(flags & TCP_ACK) || (flags & TCP_RST) ||
			      (!(flags & TCP_SYN) && (cur_flags & TCP_ACK)))
		return;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 off = pos->l4_off;

	/* Opaque to the compiler, so the bound below is tested on the register the verifier sees. */
	asm volatile("" : "+r"(off));
	if (off > MAX_LAYER_OFF)
		return;
	struct tcp_head *th = data + off;

	if ((void *)(th + 1) > data_end)
		return;
	/* Read before any helper call: a call invalidates the packet pointers. */
	__u32 seq = bpf_ntohl(th->seq), ack = bpf_ntohl(th->ack_seq);

	if (key->direction == FLOW_DIRECTION_EGRESS) {
		struct flow_key answer __attribute__((aligned(8))) = *key;
		struct rtt_pending p = {
			.sent_ns = bpf_ktime_get_ns(),
			.ack = seq + 1,
		};

		__builtin_memcpy(answer.src_ip, key->dst_ip, 16);
		__builtin_memcpy(answer.dst_ip, key->src_ip, 16);
		answer.src_port = key->dst_port;
		answer.dst_port = key->src_port;
		answer.direction = FLOW_DIRECTION_INGRESS;
		bpf_map_update_elem(&flow_rtt_pending, &answer, &p, BPF_ANY);
		return;
	}
	struct rtt_pending *p = bpf_map_lookup_elem(&flow_rtt_pending, key);

	if (!p || p->ack != ack)
		return;
	__u64 rtt_us = (bpf_ktime_get_ns() - p->sent_ns) / 1000;

	bpf_map_delete_elem(&flow_rtt_pending, key);
	val->handshake_rtt_us = rtt_us > 0xffffffff ? 0xffffffff : rtt_us ? rtt_us : 1;
}

/* The fixed header of a DNS message (RFC 1035 4.1.1). */
struct dns_head {
	__be16 id;
	__u8 flags_hi;       /* QR (0x80), opcode, AA, TC, RD */
	__u8 flags_lo;       /* RA, Z, AD, CD, RCODE (low 4 bits) */
	__be16 qdcount;
	__be16 ancount;
	__be16 nscount;
	__be16 arcount;
};

#define DNS_QR 0x80

/* FLOW_FEATURE_DNS_NAME: keeps the question's name of an answered response (at off, right after
 * the header) under the response's flow. Whatever the message holds there, at most DNS_NAME_MAX
 * octets, is copied as is: userspace reads the labels and refuses what is not a name. */
static __always_inline void dns_name(struct __sk_buff *skb, const struct flow_key *key, __u32 off,
				     __u16 id)
{
	__u32 zero = 0;
	struct dns_name *n = bpf_map_lookup_elem(&flow_dns_name_scratch, &zero);

	if (!n || skb->len <= off)
		return;
	__u32 len = skb->len - off;

	if (len > DNS_NAME_MAX)
		len = DNS_NAME_MAX;
	/* 1 to 255 already; said again on the register the helper gets, where the verifier looks
	 * (it tracks the compiler's comparisons on a copy): 1 to 256, the size of name. */
	asm volatile("%0 -= 1; %0 &= 0xff; %0 += 1" : "+r"(len));
	if (bpf_skb_load_bytes(skb, off, n->name, len))
		return;
	n->id = id;
	n->len = len;
	bpf_map_update_elem(&flow_dns_names, key, n, BPF_ANY);
}

/* Messages of one TCP segment looked at: a resolver may write several queries in one segment
 * (glibc sends the A and AAAA queries of a name together), and a server their answers. */
#define DNS_TCP_MESSAGES 4

/* FLOW_FEATURE_DNS on one DNS message at off. A query (QR clear) to the DNS port waits in
 * flow_dns_pending under the key of the flow its response will count on and its transaction id;
 * a response (QR set) from the DNS port that finds its query there completes the measurement: its
 * latency in microseconds, id and rcode go into val and into cur, this CPU's slot of the flow if
 * it has one (account() leaves them alone: the hit path of other packets tests nothing), and with
 * FLOW_FEATURE_DNS_NAME the question's name goes to flow_dns_names. Only these packets read the
 * fine clock. */
static __always_inline void dns_message(struct __sk_buff *skb, const struct flow_key *key, __u32 off,
					struct flow_value *val, struct flow_value *cur, __u16 port,
					__u32 features)
{
	/* A helper rather than packet pointers: TCP carries the payload in the skb's pages. */
	struct dns_head dh;

	if (bpf_skb_load_bytes(skb, off, &dh, sizeof(dh)))
		return;
	__u16 id = dh.id;
	__u8 hi = dh.flags_hi, lo = dh.flags_lo;
	struct dns_pending_key pk __attribute__((aligned(8)));

	__builtin_memset(&pk, 0, sizeof(pk));
	pk.id = id;
	if (!(hi & DNS_QR)) {
		if (key->dst_port != port)
			return;
		struct dns_pending p = { .sent_ns = bpf_ktime_get_ns() };

		pk.key = *key;
		__builtin_memcpy(pk.key.src_ip, key->dst_ip, 16);
		__builtin_memcpy(pk.key.dst_ip, key->src_ip, 16);
		pk.key.src_port = key->dst_port;
		pk.key.dst_port = key->src_port;
		pk.key.direction = key->direction ^ 1;
		bpf_map_update_elem(&flow_dns_pending, &pk, &p, BPF_ANY);
		return;
	}
	if (key->src_port != port)
		return;
	pk.key = *key;
	struct dns_pending *p = bpf_map_lookup_elem(&flow_dns_pending, &pk);

	if (!p)
		return;
	__u64 now = bpf_ktime_get_ns();
	__u64 us = (now - p->sent_ns) / 1000;

	bpf_map_delete_elem(&flow_dns_pending, &pk);
	val->dns_latency_us = us > 0xffffffff ? 0xffffffff : us ? us : 1;
	val->dns_id = bpf_ntohs(id);
	val->dns_rcode = lo & 0x0f;
	val->dns_answered_us = now / 1000;
	if ((features & FLOW_FEATURE_DNS_NAME) && dh.qdcount)
		dns_name(skb, key, off + sizeof(dh), val->dns_id);
	/* An empty slot (packets 0) takes the whole of val in account(). */
	if (cur) {
		cur->dns_latency_us = val->dns_latency_us;
		cur->dns_id = val->dns_id;
		cur->dns_rcode = val->dns_rcode;
		cur->dns_answered_us = val->dns_answered_us;
	}
}

/* FLOW_FEATURE_DNS on a UDP or TCP packet to or from the DNS port: the message of a datagram, or
 * over TCP each message (RFC 1035 4.2.2: a 2-byte length, then the message) that starts in the
 * segment, the first DNS_TCP_MESSAGES of them. A segment is taken to start with a message, as
 * resolvers and servers write them; one carrying the rest of a longer message is read as if it
 * started one, which pairs nothing unless its bytes happen to name a waiting query's id. */
static __always_inline void dns_latency(struct __sk_buff *skb, const struct flow_key *key,
					const struct parse_pos *pos, struct flow_value *val,
					struct flow_value *cur, __u16 port, __u32 features)
{
	if (key->dst_port != port && key->src_port != port)
		return;
	__u32 off = pos->hdr_len;

	if (key->protocol != IPPROTO_TCP) {
		dns_message(skb, key, off, val, cur, port, features);
		return;
	}
	for (int i = 0; i < DNS_TCP_MESSAGES; i++) {
		__be16 len;

		if (bpf_skb_load_bytes(skb, off, &len, sizeof(len)))
			return;
		dns_message(skb, key, off + 2, val, cur, port, features);
		off += 2 + bpf_ntohs(len);
		if (off + sizeof(struct dns_head) > skb->len)
			return;
	}
}

static __always_inline void emit_event(const struct flow_key *key, const struct flow_value *val,
				       __u32 reason)
{
	struct flow_event *ev = bpf_ringbuf_reserve(&flow_events, sizeof(*ev), 0);

	if (!ev) {
		count(FLOW_CTR_RB_RESERVE_FAILED, val->packets);
		return;
	}
	ev->key = *key;
	ev->reason = reason;
	ev->value = *val;
	/* Userspace drains on a timer: a wakeup per event would cost more than the event. */
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	count(reason == FLOW_EVENT_MAP_FULL ? FLOW_CTR_MAP_FULL : FLOW_CTR_MAP_UPDATE_FAILED, val->packets);
}

static __always_inline int flow_observe(struct __sk_buff *skb, __u8 direction)
{
	__u32 zero = 0;
	__u32 sampling = 0, features = 0;
	struct flow_config *cfg;

	/* A GSO skb (TC egress runs before segmentation) or a GRO skb (ingress, after merging)
	 * stands for gso_segs packets on the wire. */
	__u32 segs = skb->gso_segs > 1 ? skb->gso_segs : 1;

	count(FLOW_CTR_PACKETS, segs);
	cfg = bpf_map_lookup_elem(&flow_config, &zero);
	if (cfg) {
		sampling = cfg->sampling;
		features = cfg->features;
	}
	if (sampling > 1 && bpf_get_prandom_u32() % sampling != 0) {
		count(FLOW_CTR_SAMPLED_OUT, segs);
		return FLOW_PASS;
	}

	/* The hash covers every key byte, so the key is zeroed whole before it is filled. */
	struct flow_key key __attribute__((aligned(8)));
	struct flow_value val;

	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memset(&val, 0, sizeof(val));
	struct parse_pos pos;
	int rc = parse_frame(skb, &key, &val, &pos);

	/* Headers beyond the linear area (a paged skb from a driver that pulls only the outer
	 * headers): pull them in once and parse again. Never taken for linear frames. */
	if (rc == PARSE_SHORT && skb->len > skb->data_end - skb->data) {
		__u32 want = skb->len < PULL_LEN ? skb->len : PULL_LEN;

		if (bpf_skb_pull_data(skb, want) == 0) {
			__builtin_memset(&key, 0, sizeof(key));
			__builtin_memset(&val, 0, sizeof(val));
			rc = parse_frame(skb, &key, &val, &pos);
		}
	}
	if (rc == PARSE_LIMIT) {
		count(FLOW_CTR_PARSE_LIMIT, segs);
		return FLOW_PASS;
	}
	if (rc != PARSE_OK) {
		count(FLOW_CTR_PARSE_FAILED, segs);
		return FLOW_PASS;
	}

	key.if_index = skb->ifindex;
	/* The namespace of the device the program runs on. bpf_get_netns_cookie() is no substitute:
	 * for TC it answers the namespace of skb->sk, which a veth keeps from the sending side. Plain
	 * loads through the kernel's pointers cost nothing measurable (117 ns a known-flow hit with or
	 * without them, bench/flow-program.bench.ts); bpf_probe_read_kernel() for each of the three
	 * hops cost 63 ns a packet. */
	if (bpf_cast_to_kern_ctx) {
		struct sk_buff___rxflow *kskb = bpf_cast_to_kern_ctx(skb);

		key.netns = kskb->dev->nd_net.net->ns.inum;
	}
	key.direction = direction;
	/* A tag the kernel took out of the frame (skb metadata) is the outermost one: a tag still in
	 * the data is then the inner one. */
	__u32 tag_out = skb->vlan_present ? 4 : 0;

	if (tag_out) {
		key.vlan_id = skb->vlan_tci & 0x0fff;
		key.inner_vlan_id = pos.vids[0];
	} else {
		key.vlan_id = pos.vids[0];
		key.inner_vlan_id = pos.vids[1];
	}

	/* The coarse clock: CLOCK_MONOTONIC as of the last timer tick (4 ms at HZ=250, at most 10 ms
	 * on any kernel), which is all flowStart/flowEnd in milliseconds and the idle timeout need.
	 * bpf_ktime_get_ns() reads the clock source on every packet and was a third of the known-flow
	 * hit (122 ns against 103 ns coarse, bench/flow-program.bench.ts, same run). Features that time
	 * single packets (handshake RTT, DNS latency) read the fine clock on those packets only. */
	__u64 now = bpf_ktime_get_coarse_ns();

	/* Every packet is counted somewhere: an empty slot (never, once libbpf filled it at load)
	 * sends the packet to the ring buffer like a failed update. */
	void *flows = bpf_map_lookup_elem(&flow_maps, &zero);

	/* Every segment carries the headers up to the innermost transport header again, and the
	 * tag the kernel took out. */
	val.packets = segs;
	val.bytes = skb->len + (__u64)(segs - 1) * pos.hdr_len + (__u64)segs * tag_out;
	/* IP octets: the header's length for a single packet (Ethernet padding of a short frame is
	 * not IP); for a GSO/GRO skb, whose header lengths describe no segment, what every segment
	 * carries from the IP header on. */
	if (key.ip_version == 0)
		val.ip_bytes = 0;
	else if (segs == 1 && pos.ip_len)
		val.ip_bytes = pos.ip_len;
	else
		val.ip_bytes = skb->len - pos.ip_off + (__u64)(segs - 1) * (pos.hdr_len - pos.ip_off);
	val.first_seen_ns = now;
	val.last_seen_ns = now;
	val.sampling = sampling;
	if (!flows) {
		emit_event(&key, &val, FLOW_EVENT_MAP_ERROR);
		return FLOW_PASS;
	}

	struct flow_value *cur = bpf_map_lookup_elem(flows, &key);

	/* One test of the word while every feature is off. */
	if (features) {
		if ((features & FLOW_FEATURE_RTT) && key.protocol == IPPROTO_TCP)
			handshake_rtt(skb, &key, &pos, &val, cur ? cur->tcp_flags : 0);
		if ((features & FLOW_FEATURE_DNS) &&
		    (key.protocol == IPPROTO_UDP || key.protocol == IPPROTO_TCP))
			dns_latency(skb, &key, &pos, &val, cur,
				    cfg && cfg->dns_port ? cfg->dns_port : 53, features);
	}
	if (cur) {
		account(cur, &val, now);
		return FLOW_PASS;
	}

	long err = bpf_map_update_elem(flows, &key, &val, BPF_NOEXIST);

	if (err == 0)
		return FLOW_PASS;
	if (err == -EEXIST) {
		/* Another CPU created the flow between our lookup and update. */
		cur = bpf_map_lookup_elem(flows, &key);
		if (cur) {
			account(cur, &val, now);
			return FLOW_PASS;
		}
	}
	emit_event(&key, &val, err == -E2BIG ? FLOW_EVENT_MAP_FULL : FLOW_EVENT_MAP_ERROR);
	return FLOW_PASS;
}

/* Never called, never loaded (libbpf only loads subprograms a program calls): its signature keeps
 * struct flow_event and enum flow_counter in the object's BTF, where userspace checks its layouts. */
__attribute__((noinline)) int flow_btf_types(struct flow_event *ev, enum flow_counter c)
{
	return ev ? (int)c : 0;
}

SEC("tc")
int flow_ingress(struct __sk_buff *skb)
{
	return flow_observe(skb, FLOW_DIRECTION_INGRESS);
}

SEC("tc")
int flow_egress(struct __sk_buff *skb)
{
	return flow_observe(skb, FLOW_DIRECTION_EGRESS);
}

char LICENSE[] SEC("license") = "GPL";
