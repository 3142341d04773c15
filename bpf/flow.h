/* Types shared by the flow program and userspace (src/datapath/flow-types.ts).
 * Every struct here is read from the object's BTF by a test and compared with the TypeScript
 * layout, so change both sides together. Fields are ordered largest-alignment first and padded
 * explicitly: the hash map hashes the whole key, so no byte of it may be left uninitialised. */
#ifndef RXFLOW_FLOW_H
#define RXFLOW_FLOW_H

#include <linux/types.h>

#define FLOW_DIRECTION_INGRESS 0
#define FLOW_DIRECTION_EGRESS 1

#define FLOW_TUNNEL_NONE 0
#define FLOW_TUNNEL_VXLAN 1
#define FLOW_TUNNEL_GENEVE 2

/* Why a packet went to the ring buffer instead of the map. */
#define FLOW_EVENT_MAP_FULL 1   /* bpf_map_update_elem returned -E2BIG */
#define FLOW_EVENT_MAP_ERROR 2  /* any other update failure (-ENOMEM, -EBUSY), or no flow map in flow_maps */

/* Indexes of the per-CPU loss and activity counters (flow_counters map). They count packets on
 * the wire: a GSO/GRO skb of N segments counts N. Apart from PACKETS they are disjoint, so every
 * packet is accounted exactly once:
 *   PACKETS = SAMPLED_OUT + PARSE_FAILED + NON_IP + PARSE_LIMIT + (packets in the flow maps)
 *           + MAP_FULL + MAP_UPDATE_FAILED + RB_RESERVE_FAILED
 * and the ring buffer received events carrying MAP_FULL + MAP_UPDATE_FAILED packets. The flow maps
 * are flow_map_a and flow_map_b (struct flow_key -> per-CPU struct flow_value): the programs count
 * into the one slot 0 of the array-of-maps flow_maps names, while userspace drains the other (see
 * bpf/flow.c and src/datapath/flow-maps.ts). */
enum flow_counter {
	FLOW_CTR_PACKETS = 0,          /* packets the program saw */
	FLOW_CTR_SAMPLED_OUT = 1,      /* skipped by 1-in-N sampling */
	FLOW_CTR_PARSE_FAILED = 2,     /* truncated or malformed headers: not counted in any flow */
	FLOW_CTR_MAP_FULL = 3,         /* sent to the ring buffer because the map was full */
	FLOW_CTR_MAP_UPDATE_FAILED = 4,/* sent to the ring buffer because the update failed otherwise */
	FLOW_CTR_RB_RESERVE_FAILED = 5,/* lost: neither map nor ring buffer took the packet */
	/* Retired: non-IP frames are now layer-2 flows and a tunnel with a non-IP inner frame counts
	 * on its outer flow. Kept at its index so a counter map pinned by an older object still reads
	 * (and is reported) the same; this object never counts it. */
	FLOW_CTR_NON_IP = 6,
	/* Well-formed frames that go deeper than the parser walks: more than MAX_VLAN_TAGS tags in the
	 * data, or an IPv6 chain of more than MAX_IPV6_EXT_HEADERS extension headers (outer or inner
	 * layer). Counted here and not on a flow: a flow of what could be read would carry an
	 * ethertype that is a VLAN tag or a protocol number that is an extension header, mixed under
	 * one key with whatever else stops at the same depth, and nothing in a record could say so
	 * (IPFIX has no element for it); the counter keeps the exact number and says why. */
	FLOW_CTR_PARSE_LIMIT = 7,
	FLOW_CTR_MAX = 8,
};

/* Addresses are 16 bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d) so one key serves both. */
struct flow_key {
	__u8 src_ip[16];
	__u8 dst_ip[16];
	__u32 if_index;     /* skb->ifindex: the interface the program is attached to */
	__u32 vni;          /* VXLAN/GENEVE VNI, 0 without a tunnel */
	__u32 netns;        /* inode of the network namespace of the device (as /proc/<pid>/ns/net
			     * shows it); 0 where the kernel would not say. ifindexes are per namespace: without
			     * it, links of two namespaces with one ifindex would count into the same flows. */
	__u16 src_port;     /* host byte order; 0 for protocols without ports and non-first fragments */
	__u16 dst_port;
	__u16 eth_type;     /* ethertype of the (inner) IP packet: 0x0800 or 0x86dd; of the frame for a layer-2 flow */
	__u8 protocol;
	__u8 direction;     /* FLOW_DIRECTION_* */
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 tunnel_type;   /* FLOW_TUNNEL_* */
	__u8 ip_version;    /* 4 or 6; 0 for a layer-2 flow (see below) */
	/* 802.1Q/802.1ad VLAN ids (12 bits) of the outermost frame, 0 without a tag: vlan_id of the
	 * outer tag (the one the kernel took out of the data into skb metadata, or else the first in
	 * the data), inner_vlan_id of the second (QinQ customer tag). Part of the key: the same
	 * addresses on two VLANs of one trunk are two flows. */
	__u16 vlan_id;
	__u16 inner_vlan_id;
};

/* A frame that is not IP (ARP, LLDP, 0x88b5, ...) is a layer-2 flow: ip_version 0, eth_type its
 * ethertype after the VLAN tags, and the source and destination MAC in the first 6 bytes of src_ip
 * and dst_ip (the rest zero). The MACs sit in the address bytes rather than in fields of their own
 * so the key the map hashes on every packet does not grow for the IP flows. */

/* Per-CPU value of the flow maps. The outer tunnel fields are functions of the inner flow and the VNI, so they
 * ride in the value rather than widening the key the map hashes on every packet. Each CPU fills
 * its own copy on the first packet it counts; counters then change, the rest stays as first seen. */
struct flow_value {
	__u64 packets;
	/* Frame octets as on the wire: skb->len plus the 4 bytes of a VLAN tag the kernel moved from
	 * the frame into skb metadata (a veth, or a NIC with VLAN offload, does so before TC runs);
	 * without FCS. IPFIX layer2OctetDeltaCount. */
	__u64 bytes;
	/* IP octets, IP header and payload (IPFIX octetDeltaCount): of the inner IP packet for a
	 * VXLAN/GENEVE flow, 0 for a layer-2 flow. */
	__u64 ip_bytes;
	__u64 first_seen_ns; /* bpf_ktime_get_coarse_ns(): CLOCK_MONOTONIC to the last timer tick */
	__u64 last_seen_ns;
	__u64 cookie;        /* GENEVE: first 8 bytes of the options, as they appear on the wire */
	__u8 outer_src_ip[16];
	__u8 outer_dst_ip[16];
	__u16 outer_src_port;
	__u16 outer_dst_port;
	__u16 tcp_flags;     /* OR of the TCP flags byte of every packet */
	__u8 dscp;           /* of the (inner) IP header */
	__u8 _pad0;
	__u8 src_mac[6];     /* outermost Ethernet header, as the interface saw the frame */
	__u8 dst_mac[6];
	__u32 sampling;      /* 1-in-N sampling in force when this CPU first counted the flow; 0 or 1: none */
	/* FLOW_FEATURE_RTT: the TCP handshake round trip in microseconds, 0 when none was measured.
	 * It sits on the ingress flow of the packet that completed the measurement: the SYN-ACK on
	 * the client side (SYN sent -> SYN-ACK received), the handshake's ACK on the server side
	 * (SYN-ACK sent -> ACK received), each matched by its acknowledgment number. */
	__u32 handshake_rtt_us;
	/* The kernel's smoothed RTT of the flow's socket (tcp_sock srtt_us >> 3) as tcp_probe samples
	 * it on received segments, in microseconds: the smallest and the latest this CPU saw, 0 when
	 * none (bpf/rtt.c writes them, on the ingress flow of the sampled segment). */
	__u32 srtt_min_us;
	__u32 srtt_us;
	/* FLOW_FEATURE_DNS: the latest DNS query of the flow that was answered, on the flow of its
	 * response (ingress on a client, egress on a server): microseconds from the query to the
	 * response (0: none answered), the transaction id, the response code (RCODE, 4 bits) and
	 * when the response passed (bpf_ktime_get_ns() / 1000, the low 32 bits: wraps every 71
	 * minutes), which orders the answers of the flow's CPUs. */
	__u32 dns_latency_us;
	__u16 dns_id;
	__u8 dns_rcode;
	__u8 _pad1;
	__u32 dns_answered_us;
};

/* A single-packet flow the map could not take, submitted to the flow_events ring buffer. The
 * reason follows the key (60 bytes) and ends on a multiple of 8, so value is 8-aligned with no
 * padding between them. */
struct flow_event {
	struct flow_key key;
	__u32 reason;        /* FLOW_EVENT_* */
	struct flow_value value;
};

/* Run-time settings, index 0 of the flow_config array map. */
struct flow_config {
	__u32 sampling;      /* 1-in-N; 0 or 1 counts every packet */
	__u32 features;      /* FLOW_FEATURE_* */
	__u16 dns_port;      /* FLOW_FEATURE_DNS: the DNS servers' port, UDP and TCP; 0 is 53 */
	__u16 _pad0;
};

/* Bits of flow_config.features: what the programs measure besides counting. Off, a feature costs
 * the hit path one test of this word. */
#define FLOW_FEATURE_RTT 1 /* TCP handshake RTT (flow_value.handshake_rtt_us) */
#define FLOW_FEATURE_DNS 2 /* DNS latency, id and rcode (flow_value.dns_*) */
#define FLOW_FEATURE_DNS_NAME 4 /* with FLOW_FEATURE_DNS: the query name (flow_dns_names) */

/* A handshake packet sent (SYN or SYN-ACK, egress), waiting in flow_rtt_pending under the key of
 * the ingress packet that answers it. */
struct rtt_pending {
	__u64 sent_ns;       /* bpf_ktime_get_ns() at the send */
	__u32 ack;           /* acknowledgment number the answer carries: the sent sequence number + 1 */
	__u32 _pad0;
};

/* A DNS query seen, waiting in flow_dns_pending for its response: under the key of the flow the
 * response will count on (addresses and ports swapped, the other direction) and the query's
 * transaction id. */
struct dns_pending_key {
	struct flow_key key;
	__u16 id;            /* as on the wire (network order) */
	__u16 _pad0;
};

struct dns_pending {
	__u64 sent_ns;       /* bpf_ktime_get_ns() when the query passed */
};

/* The longest name in a DNS message: 255 octets in wire form (RFC 1035 2.3.4). */
#define DNS_NAME_MAX 255

/* FLOW_FEATURE_DNS_NAME: the query name of the latest answered query of a flow, in flow_dns_names
 * under the flow's key (that of its response). Not per flow slot: the flow value would grow by the
 * name for every flow, and most flows are not DNS. The name is the question section's QNAME of the
 * response as on the wire (length-prefixed labels ending with a zero octet), at most
 * DNS_NAME_MAX octets of it; id is the one the response put on the flow (flow_value.dns_id), so
 * userspace pairs a name with the answer it belongs to. */
struct dns_name {
	__u16 id;            /* host order, as flow_value.dns_id */
	__u8 len;            /* octets of name read from the message */
	__u8 _pad0;
	__u8 name[DNS_NAME_MAX + 1];
};

#endif
