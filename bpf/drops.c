// SPDX-License-Identifier: GPL-2.0
/* Packet drops with the kernel's reason, on the kfree_skb tracepoint (tp_btf: no kprobe, no
 * fentry). consume_skb has its own tracepoint since 5.x, so every skb freed here is a drop; one
 * freed with SKB_CONSUMED would not be, and is skipped all the same.
 *
 * The freed skb's headers are parsed into the flow key of bpf/flow.c: the interface, namespace and
 * direction are those of skb->dev, tried as ingress and then as egress against the flow map the
 * flow programs count into now (flow_maps, shared with the flow object). A drop on a known flow
 * counts on that flow in the double-buffered drop maps, drained with the flow maps; every drop
 * counts by reason in drop_reasons, and one on no known flow as unmatched there too, so userspace
 * can account for every drop. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "flow.h"
#include "flow_maps.h"
#include "drops.h"
#include "kernel.h"
#include "parse.h"
#include "double_buffer.h"

#define SKB_CONSUMED 1
#define MAC_HEADER_UNSET 0xffff

/* Double-buffered as the flow maps (see bpf/flow.c): the program updates entries in place, so
 * userspace only drains the map slot 0 of drop_maps no longer names. */
RXFLOW_DOUBLE_BUFFERED_HASH(drop, struct flow_key, struct drop_value, 16384);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct drop_reason_count);
	__uint(max_entries, DROP_REASON_SLOTS);
} drop_reasons SEC(".maps");

/* The network header and the 20 bytes after it, read in one call: with no IPv4 options or IPv6
 * extension headers (nearly every packet) the transport header is among them. */
union net_head {
	struct {
		struct iphdr ip;
		__u8 l4[20];
	} v4;
	struct {
		struct ipv6hdr ip6;
		__u8 l4[20];
	} v6;
};

/* Parses the IP and transport headers at head + nh into the key (zeroed by the caller), and the
 * packet's length as its IP header says (0 where it does not: an IPv6 jumbogram). Returns 0 when
 * the key names an IP flow. */
static __always_inline int parse_headers(unsigned char *head, __u32 nh, __be16 proto,
					 struct flow_key *key, __u32 *ip_len)
{
	union net_head h;
	__u8 more[20];
	const __u8 *l4p;
	__u32 l4 = 0;
	int first = 1;

	if (proto == ETH_P_IP_BE) {
		if (bpf_probe_read_kernel(&h.v4, sizeof(h.v4), head + nh))
			return -1;
		if (h.v4.ip.version != 4 || h.v4.ip.ihl < 5)
			return -1;
		key->ip_version = 4;
		key->eth_type = 0x0800;
		*ip_len = bpf_ntohs(h.v4.ip.tot_len);
		key->protocol = h.v4.ip.protocol;
		set_ipv4_mapped(key->src_ip, h.v4.ip.saddr);
		set_ipv4_mapped(key->dst_ip, h.v4.ip.daddr);
		first = (h.v4.ip.frag_off & bpf_htons(0x1fff)) == 0;
		l4 = nh + h.v4.ip.ihl * 4;
		l4p = h.v4.l4;
		if (h.v4.ip.ihl != 5)
			l4p = 0;
	} else if (proto == ETH_P_IPV6_BE) {
		if (bpf_probe_read_kernel(&h.v6, sizeof(h.v6), head + nh))
			return -1;
		if (h.v6.ip6.version != 6)
			return -1;
		key->ip_version = 6;
		key->eth_type = 0x86dd;
		*ip_len = h.v6.ip6.payload_len ? bpf_ntohs(h.v6.ip6.payload_len) + sizeof(h.v6.ip6) : 0;
		__builtin_memcpy(key->src_ip, &h.v6.ip6.saddr, 16);
		__builtin_memcpy(key->dst_ip, &h.v6.ip6.daddr, 16);
		__u8 next = h.v6.ip6.nexthdr;

		l4 = nh + sizeof(h.v6.ip6);
		l4p = h.v6.l4;
#pragma unroll
		for (int i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS &&
			    next != IPPROTO_AH && next != IPPROTO_FRAGMENT)
				break;
			__u8 eh[4];

			l4p = 0;
			if (bpf_probe_read_kernel(eh, sizeof(eh), head + l4))
				return -1;
			if (next == IPPROTO_FRAGMENT) {
				next = eh[0];
				l4 += 8;
				if ((eh[2] << 5 | eh[3] >> 3) != 0) {
					first = 0;
					break;
				}
				continue;
			}
			__u32 len = next == IPPROTO_AH ? ((__u32)eh[1] + 2) * 4 : ((__u32)eh[1] + 1) * 8;

			next = eh[0];
			l4 += len;
		}
		key->protocol = next;
	} else {
		return -1;
	}
	if (!first)
		return 0;
	__u8 p = key->protocol;

	if (p != IPPROTO_TCP && p != IPPROTO_UDP && p != IPPROTO_ICMP && p != IPPROTO_ICMPV6)
		return 0;
	if (!l4p) {
		if (bpf_probe_read_kernel(more, sizeof(more), head + l4))
			return -1;
		l4p = more;
	}
	if (p == IPPROTO_ICMP || p == IPPROTO_ICMPV6) {
		key->icmp_type = l4p[0];
		key->icmp_code = l4p[1];
	} else {
		/* TCP and UDP both start with the two ports. */
		key->src_port = (__u16)l4p[0] << 8 | l4p[1];
		key->dst_port = (__u16)l4p[2] << 8 | l4p[3];
	}
	return 0;
}

/* The VLAN ids of the key as bpf/flow.c sets them, so a drop of tagged traffic finds its flow: the
 * tag in skb metadata first, then those still in the data between the MAC and network headers. */
static __always_inline void vlan_ids(struct sk_buff___rxflow *skb, unsigned char *head, __u16 mh,
				     __u16 nh, struct flow_key *key)
{
	__u16 vids[MAX_VLAN_TAGS] = {};

	if (mh != MAC_HEADER_UNSET && nh >= mh + ETH_HLEN + 4) {
		/* From the ethertype of the Ethernet header on: TPID and TCI of up to two tags. */
		__be16 tags[2 * MAX_VLAN_TAGS];

		if (bpf_probe_read_kernel(tags, sizeof(tags), head + mh + ETH_HLEN - 2) == 0) {
#pragma unroll
			for (int i = 0; i < MAX_VLAN_TAGS; i++) {
				__u16 tpid = bpf_ntohs(tags[2 * i]);

				if (nh < mh + ETH_HLEN + 4 * (i + 1) ||
				    (tpid != ETH_P_8021Q && tpid != ETH_P_8021AD))
					break;
				vids[i] = bpf_ntohs(tags[2 * i + 1]) & 0x0fff;
			}
		}
	}
	int present;

	if (bpf_core_field_exists(struct sk_buff___rxflow_vlan_present, vlan_present))
		present = BPF_CORE_READ_BITFIELD((struct sk_buff___rxflow_vlan_present *)skb, vlan_present);
	else
		present = skb->vlan_proto != 0;
	if (present) {
		key->vlan_id = skb->vlan_tci & 0x0fff;
		key->inner_vlan_id = vids[0];
	} else {
		key->vlan_id = vids[0];
		key->inner_vlan_id = vids[1];
	}
}

static __always_inline void count_reason(__u32 reason, __u64 bytes, int unmatched)
{
	__u32 slot = reason < DROP_REASON_SLOTS ? reason : DROP_REASON_OTHER;
	struct drop_reason_count *c = bpf_map_lookup_elem(&drop_reasons, &slot);

	if (!c)
		return;
	c->packets += 1;
	c->bytes += bytes;
	if (unmatched) {
		c->unmatched_packets += 1;
		c->unmatched_bytes += bytes;
	}
}

/* Counts the drop on the key's flow; 0 if the flow map knows the flow and the drop map took it. */
static __always_inline int count_flow(void *flows, void *drops, struct flow_key *key,
				      struct drop_value *val)
{
	if (!bpf_map_lookup_elem(flows, key))
		return -1;
	struct drop_value *cur = bpf_map_lookup_elem(drops, key);

	if (cur) {
		cur->packets += 1;
		cur->bytes += val->bytes;
		cur->last_drop_ns = val->last_drop_ns;
		cur->reason = val->reason;
		cur->tcp_state = val->tcp_state;
		return 0;
	}
	if (bpf_map_update_elem(drops, key, val, BPF_NOEXIST) == 0)
		return 0;
	/* Another CPU created the entry meanwhile; a full map counts the drop as unmatched. */
	cur = bpf_map_lookup_elem(drops, key);
	if (!cur)
		return -1;
	cur->packets += 1;
	cur->bytes += val->bytes;
	cur->last_drop_ns = val->last_drop_ns;
	cur->reason = val->reason;
	cur->tcp_state = val->tcp_state;
	return 0;
}

SEC("tp_btf/kfree_skb")
int drops_kfree_skb(__u64 *ctx)
{
	struct sk_buff___rxflow *skb = (void *)ctx[0];
	__u32 reason = (__u32)ctx[2];

	if (!skb || reason == SKB_CONSUMED)
		return 0;

	/* tp_btf hands the program a typed pointer: plain loads through it (checked by the verifier,
	 * faults caught) cost a fraction of a bpf_probe_read_kernel() call each. */
	unsigned char *head = skb->head;
	__u32 data_off = skb->data - head;
	__u16 nh = skb->network_header;
	__u16 mh = skb->mac_header;
	__u32 len = skb->len;
	/* The frame as TC counted it: from the MAC header where one is set, else from the network
	 * header (a locally generated packet freed before it got one). */
	__u32 start = mh != MAC_HEADER_UNSET && mh <= data_off ? mh : nh;
	__u64 bytes = start <= data_off ? len + (data_off - start) : len;

	struct flow_key key __attribute__((aligned(8)));
	struct drop_value val;
	__u32 ip_len = 0;

	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memset(&val, 0, sizeof(val));
	struct net_device___rxflow *dev = skb->dev;

	if (!dev || parse_headers(head, nh, skb->protocol, &key, &ip_len)) {
		count_reason(reason, bytes, 1);
		return 0;
	}
	key.if_index = dev->ifindex;
	key.netns = dev->nd_net.net->ns.inum;
	vlan_ids(skb, head, mh, nh, &key);

	/* droppedOctetDeltaCount counts IP octets, as octetDeltaCount: the IP header's length (not
	 * the padding of a short frame), or where it says none or more than the skb holds (a GSO
	 * packet), the skb from the network header on. */
	__u32 from_nh = nh <= data_off ? len + (data_off - nh) : len - (nh - data_off);

	val.packets = 1;
	val.bytes = ip_len && ip_len <= from_nh ? ip_len : from_nh;
	/* bpf_ktime_get_coarse_ns() would be cheaper; tracing programs may not call it. */
	val.last_drop_ns = bpf_ktime_get_ns();
	val.reason = reason;
	if (key.protocol == IPPROTO_TCP) {
		struct sock___rxflow *sk = skb->sk;

		if (sk)
			val.tcp_state = sk->__sk_common.skc_state;
	}

	__u32 zero = 0;
	void *flows = bpf_map_lookup_elem(&flow_maps, &zero);
	void *drops = bpf_map_lookup_elem(&drop_maps, &zero);

	if (!flows || !drops) {
		count_reason(reason, bytes, 1);
		return 0;
	}
	key.direction = FLOW_DIRECTION_INGRESS;
	if (count_flow(flows, drops, &key, &val) == 0) {
		count_reason(reason, bytes, 0);
		return 0;
	}
	key.direction = FLOW_DIRECTION_EGRESS;
	int rc = count_flow(flows, drops, &key, &val);

	count_reason(reason, bytes, rc != 0);
	return 0;
}

/* Never called, never loaded: keeps struct drop_reason_count and drop_value in the BTF. */
__attribute__((noinline)) int drops_btf_types(struct drop_reason_count *c, struct drop_value *v)
{
	return c && v;
}

char LICENSE[] SEC("license") = "GPL";
