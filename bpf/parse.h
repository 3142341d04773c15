/* SPDX-License-Identifier: GPL-2.0 */
/* Header parsing pieces shared by flow.c and firewall.c: ethertypes, parse limits and results,
 * the on-wire header structs the kernel headers do not give in a usable form, and small helpers.
 * Everything is static __always_inline or a macro, so each program keeps its own copy and the
 * verifier sees the same code as before it was shared. */
#ifndef RXFLOW_PARSE_H
#define RXFLOW_PARSE_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>

#define EEXIST 17

#define ETH_P_8021Q_BE bpf_htons(0x8100)
#define ETH_P_8021AD_BE bpf_htons(0x88a8)
#define ETH_P_IP_BE bpf_htons(0x0800)
#define ETH_P_IPV6_BE bpf_htons(0x86dd)
#define ETH_P_TEB_BE bpf_htons(0x6558)

#define MAX_VLAN_TAGS 2
/* RFC 8200's recommended order: hop-by-hop, destination options, routing, fragment, AH,
 * destination options. ESP ends the chain (what follows is encrypted). */
#define MAX_IPV6_EXT_HEADERS 6
/* Enough linear bytes for the deepest header chain the parsers follow (outer VLANs, IPv6 with
 * extension headers, UDP, GENEVE options, inner Ethernet, IP and L4). */
#define PULL_LEN 512
/* Where an encapsulated frame may start at most; bounds offsets read back from the stack or
 * passed between functions. */
#define MAX_LAYER_OFF 1024

enum parse_result {
	PARSE_OK = 0,
	PARSE_NON_IP,
	PARSE_SHORT, /* a header ends past data_end */
	PARSE_MALFORMED,
	PARSE_LIMIT, /* well-formed, but deeper than the parser walks (VLAN tags, IPv6 extension headers) */
};

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

/* The fixed TCP header with the flags as one byte (linux/tcp.h splits them into bitfields). */
struct tcp_head {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;
	__u8 flags;
	__be16 window;
	__be16 check;
	__be16 urg_ptr;
};

struct icmp_head {
	__u8 type;
	__u8 code;
	__be16 check;
	__be16 id; /* echo request and reply */
	__be16 seq;
};

struct vxlan_head {
	__u8 flags; /* 0x08: VNI valid */
	__u8 reserved[3];
	__u8 vni[3];
	__u8 reserved2;
};

struct geneve_head {
	__u8 ver_opt_len; /* version (2 bits) and options length in 4-byte words (6 bits) */
	__u8 flags;
	__be16 proto;
	__u8 vni[3];
	__u8 reserved;
};

/* The 24-bit VNI of a VXLAN or GENEVE header. */
static __always_inline __u32 tunnel_vni(const __u8 *vni)
{
	return (__u32)vni[0] << 16 | (__u32)vni[1] << 8 | vni[2];
}

/* Writes an IPv4 address as IPv4-mapped IPv6 (::ffff:a.b.c.d) into 16 bytes that are already
 * zero: both programs parse into zeroed keys and layers, and skipping the memset of the first ten
 * bytes is measurable in the per-packet cost. */
static __always_inline void set_ipv4_mapped(__u8 *dst, __be32 addr)
{
	dst[10] = 0xff;
	dst[11] = 0xff;
	*(__be32 *)(dst + 12) = addr;
}

#endif
