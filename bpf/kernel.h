/* SPDX-License-Identifier: GPL-2.0 */
/* Just the kernel fields the programs read, with CO-RE: libbpf relocates the offsets against the
 * running kernel's BTF at load, and only for the fields a program reads, so one definition serves
 * flow.c, drops.c and rtt.c. The ___rxflow suffix keeps them apart from any real definition. */
#ifndef RXFLOW_KERNEL_H
#define RXFLOW_KERNEL_H

#include <linux/types.h>

struct ns_common___rxflow {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net___rxflow {
	struct ns_common___rxflow ns;
} __attribute__((preserve_access_index));

struct net_device___rxflow {
	int ifindex;
	struct {
		struct net___rxflow *net;
	} nd_net;
} __attribute__((preserve_access_index));

struct in6_addr___rxflow {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common___rxflow {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct {
		struct net___rxflow *net;
	} skc_net;
	struct in6_addr___rxflow skc_v6_daddr;
	struct in6_addr___rxflow skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock___rxflow {
	struct sock_common___rxflow __sk_common;
} __attribute__((preserve_access_index));

struct tcp_sock___rxflow {
	__u32 srtt_us; /* smoothed RTT << 3, in microseconds */
} __attribute__((preserve_access_index));

struct sk_buff___rxflow {
	struct net_device___rxflow *dev;
	struct sock___rxflow *sk;
	unsigned int len;
	int skb_iif; /* the interface the packet arrived on */
	__be16 protocol;
	__u16 network_header;
	__u16 mac_header;
	unsigned char *head;
	unsigned char *data;
	/* The tag the kernel took out of the frame (802.1Q acceleration); since Linux 6.2 a tag is
	 * there when vlan_proto is not 0. */
	__be16 vlan_proto;
	__u16 vlan_tci;
} __attribute__((preserve_access_index));

/* Before Linux 6.2, a bit told whether vlan_tci holds a tag. */
struct sk_buff___rxflow_vlan_present {
	__u8 vlan_present : 1;
} __attribute__((preserve_access_index));

#endif
