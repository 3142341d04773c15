// SPDX-License-Identifier: GPL-2.0
/* The kernel's smoothed TCP RTT on the flows, from the tcp_probe tracepoint (tp_btf: no kprobe, no
 * fentry). tcp_probe fires for segments an established socket receives; the socket's srtt_us >> 3
 * is the RTT `ss -ti` shows. The segment's ingress flow is looked up, by the socket's addresses
 * and ports, the interface it arrived on and the socket's namespace, in the flow map the flow
 * programs count into now (flow_maps, shared with the flow object); found, this CPU's slot gets
 * the sample as srtt_us and the smallest as srtt_min_us. A segment on no flow of the map (the
 * interface is not observed, or the frame carried a VLAN tag or a tunnel the key would hold) is
 * counted in rtt_counters and nothing else. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "flow.h"
#include "flow_maps.h"
#include "kernel.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* Index 0: samples put on a flow; 1: samples on no flow of the map. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2);
} rtt_counters SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *c = bpf_map_lookup_elem(&rtt_counters, &index);

	if (c)
		*c += 1;
}

SEC("tp_btf/tcp_probe")
int rtt_tcp_probe(__u64 *ctx)
{
	struct sock___rxflow *sk = (void *)ctx[0];
	struct sk_buff___rxflow *skb = (void *)ctx[1];
	/* The verifier knows ctx[0] as a struct sock: the helper gives the tcp_sock around it. */
	struct tcp_sock___rxflow *tp = (void *)bpf_skc_to_tcp_sock(sk);

	if (!tp || !skb)
		return 0;
	__u32 srtt_us = tp->srtt_us >> 3;

	if (srtt_us == 0)
		return 0;
	struct flow_key key __attribute__((aligned(8)));

	__builtin_memset(&key, 0, sizeof(key));
	unsigned short family = sk->__sk_common.skc_family;

	if (family == AF_INET) {
		key.ip_version = 4;
		key.eth_type = 0x0800;
		key.src_ip[10] = 0xff;
		key.src_ip[11] = 0xff;
		*(__be32 *)(key.src_ip + 12) = sk->__sk_common.skc_daddr;
		key.dst_ip[10] = 0xff;
		key.dst_ip[11] = 0xff;
		*(__be32 *)(key.dst_ip + 12) = sk->__sk_common.skc_rcv_saddr;
	} else if (family == AF_INET6) {
		key.ip_version = 6;
		key.eth_type = 0x86dd;
		__builtin_memcpy(key.src_ip, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(key.dst_ip, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
	} else {
		return 0;
	}
	key.protocol = IPPROTO_TCP;
	key.src_port = __builtin_bswap16(sk->__sk_common.skc_dport);
	key.dst_port = sk->__sk_common.skc_num;
	key.direction = FLOW_DIRECTION_INGRESS;
	key.if_index = skb->skb_iif;
	struct net___rxflow *net = sk->__sk_common.skc_net.net;

	if (net)
		key.netns = net->ns.inum;

	__u32 zero = 0;
	void *flows = bpf_map_lookup_elem(&flow_maps, &zero);
	struct flow_value *cur = flows ? bpf_map_lookup_elem(flows, &key) : 0;

	if (!cur) {
		count(1);
		return 0;
	}
	cur->srtt_us = srtt_us;
	if (cur->srtt_min_us == 0 || srtt_us < cur->srtt_min_us)
		cur->srtt_min_us = srtt_us;
	count(0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
