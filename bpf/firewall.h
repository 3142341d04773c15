/* Types shared by the firewall programs and userspace (src/datapath/firewall/types.ts).
 * A test reads every struct here from the BTF of bpf/firewall.o and compares it with the
 * TypeScript layout, so change both sides together. Fields are ordered largest-alignment first and
 * padded explicitly: hash and LPM maps compare whole keys, so no key byte may be left
 * uninitialised. Addresses are 16 bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d). Ports are
 * host byte order. Times are bpf_ktime_get_ns() (CLOCK_MONOTONIC).
 *
 * The session map (fw_sessions) is the contract HA replication builds on: its key and value
 * layout only grows at the end of the value, never reorders. */
#ifndef RXFLOW_FIREWALL_H
#define RXFLOW_FIREWALL_H

#include <linux/types.h>

/* Verdicts. NONE only appears where no rule decided. */
enum fw_action {
	FW_ACTION_NONE = 0,
	FW_ACTION_ALLOW = 1,
	FW_ACTION_BLOCK = 2,
	FW_ACTION_REDIRECT = 3,
};

/* Why a verdict was reached (audit events). */
enum fw_reason {
	FW_REASON_SESSION = 0,        /* an established session */
	FW_REASON_RULE = 1,           /* a rule of the source network's policy */
	FW_REASON_POLICY_DEFAULT = 2, /* no rule matched: the policy's default action */
	FW_REASON_NO_NETWORK = 3,     /* the source is in no network: the default_action setting */
	FW_REASON_NO_POLICY = 4,      /* the network names a policy that is not loaded: default_action */
};

enum fw_tunnel {
	FW_TUNNEL_NONE = 0,
	FW_TUNNEL_VXLAN = 1,
	FW_TUNNEL_GENEVE = 2,
};

enum fw_direction {
	FW_DIR_INGRESS = 0,
	FW_DIR_EGRESS = 1,
};

/* TCP state of a session, as far as a middlebox sees it. */
enum fw_tcp_state {
	FW_TCP_NONE = 0, /* not TCP */
	FW_TCP_SYN_SENT = 1,
	FW_TCP_SYN_RECV = 2,
	FW_TCP_ESTABLISHED = 3,
	FW_TCP_FIN_WAIT = 4, /* one side sent FIN */
	FW_TCP_CLOSED = 5,   /* both sides sent FIN, or a RST */
};

/* Who wrote a session into the map. */
enum fw_origin {
	FW_ORIGIN_KERNEL = 0,   /* created by the programs from traffic */
	FW_ORIGIN_RESTORED = 1, /* written by userspace (restored from a peer) */
};

/* Indexes of the fw_settings array: each value is a __u32. */
enum fw_setting {
	FW_SET_ENFORCEMENT = 0,               /* 1 enforce; 0 audit mode: blocks are reported, not applied */
	FW_SET_AUDIT_SAMPLING = 1,            /* report 1 in N audit events; 0 or 1: every one */
	FW_SET_SESSION_IDLE_TIMEOUT_S = 2,    /* a session idle this long is expired */
	FW_SET_SESSION_CLOSED_TIMEOUT_S = 3,  /* the same, for TCP sessions that saw FINs or a RST */
	FW_SET_SESSION_UPDATE_INTERVAL_MS = 4,/* least time between two update events of a session; 0: none */
	FW_SET_TUNNEL_MODE = 5,               /* FW_TUNNEL_* */
	FW_SET_HAIRPIN = 6,                   /* 1: allowed tunnel packets go back out with outer headers swapped */
	FW_SET_DEFAULT_ACTION = 7,            /* for sources in no network: FW_ACTION_* */
	FW_SET_AUDIT_ALLOWED = 8,             /* 1: also report verdicts that created sessions */
	FW_SET_GENEVE_OPTION_CLASS = 9,       /* the flow cookie is in the first option of this class */
	FW_SET_GENEVE_COOKIE_TYPE = 10,       /* ... and this type (0-255); 256: any type */
	FW_SET_MAX = 16,
};

/* Indexes of the per-CPU fw_counters array, in packets on the wire (a GSO/GRO skb of N segments
 * counts N). The verdict counters are disjoint:
 *   PACKETS = ALLOWED + BLOCKED + REDIRECTED + AUDIT_PASSED + NON_IP + PARSE_FAILED + OWN_HAIRPIN
 * SESSION_HITS counts the packets of ALLOWED and REDIRECTED that a session decided. */
enum fw_counter {
	FW_CTR_PACKETS = 0,
	FW_CTR_ALLOWED = 1,
	FW_CTR_BLOCKED = 2,              /* dropped */
	FW_CTR_REDIRECTED = 3,           /* redirected, hairpinned tunnel packets included */
	FW_CTR_AUDIT_PASSED = 4,         /* judged block (or of an audit-mode session), passed because enforcement is off */
	FW_CTR_SESSION_HITS = 5,
	FW_CTR_NON_IP = 6,               /* ARP and other ethertypes: passed */
	FW_CTR_PARSE_FAILED = 7,         /* truncated or malformed headers: passed */
	FW_CTR_OWN_HAIRPIN = 8,          /* our own hairpinned packets seen again on egress: passed */
	FW_CTR_SESSION_CREATE_FAILED = 9,/* the verdict stands, but no session was stored */
	FW_CTR_AUDIT_LOST = 10,          /* fw_audit ring buffer full */
	FW_CTR_SESSION_EVENTS_LOST = 11, /* fw_sess_events ring buffer full */
	FW_CTR_MAX = 16,
};

/* Session lifecycle events. The kernel sends CREATED and UPDATED on fw_sess_events; DELETED is
 * produced by userspace when it expires a session (the kernel never deletes one). */
enum fw_session_event_type {
	FW_SESSION_CREATED = 1,
	FW_SESSION_UPDATED = 2,
	FW_SESSION_DELETED = 3,
};

/* fw_networks: an LPM trie from source prefix to policy id. prefixlen counts bits of addr; an IPv4
 * /n is stored as 96 + n over the IPv4-mapped address. */
struct fw_network_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* fw_rules: an LPM trie of destination prefixes per policy, protocol and port. The policy id,
 * protocol, pad and port always match whole (prefixlen = 64 + destination bits); protocol 0 and
 * port 0 mean any, and the program looks up (protocol, port), (protocol, any), (any, any). */
struct fw_rule_key {
	__u32 prefixlen;
	__u32 policy_id;
	__u8 protocol;
	__u8 _pad0;
	__u16 port;
	__u8 addr[16];
};

struct fw_rule {
	__u32 action;         /* FW_ACTION_* */
	__u32 rule_id;        /* 1-based position in the policy file, for audit events */
	__u32 dst_prefixlen;  /* destination bits: the longest prefix of the three lookups wins */
	__u32 _pad0;
};

/* fw_policies: policy id -> what applies when no rule matches. */
struct fw_policy {
	__u32 default_action; /* FW_ACTION_* */
	__u32 redirect_ifindex; /* target of redirect verdicts; 0: the egress device */
};

/* fw_config, index 0: the devices and address of this firewall. */
struct fw_config {
	__u8 ingress_addr[16]; /* tunnel traffic is decapsulated only when sent here; all zero: any */
	__u32 ingress_ifindex;
	__u32 egress_ifindex;  /* default redirect target */
};

/* fw_sessions key: the 5-tuple as the initiator sent it, plus the VNI. Return traffic is found by
 * looking up the reversed tuple. ICMP echo uses the identifier as both ports. */
struct fw_session_key {
	__u8 src_ip[16];
	__u8 dst_ip[16];
	__u32 vni;       /* 0 without a tunnel */
	__u16 src_port;
	__u16 dst_port;
	__u8 protocol;
	__u8 _pad0[3];
};

/* fw_sessions value. Counters are updated with atomic adds (the map is shared by all CPUs). */
struct fw_session {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 last_event_ns;   /* when the last CREATED or UPDATED event was sent */
	__u64 packets_fwd;     /* initiator -> responder */
	__u64 bytes_fwd;       /* frame length as seen by TC (skb->len), including L2 */
	__u64 packets_rev;
	__u64 bytes_rev;
	__u8 cookie[8];        /* GENEVE flow cookie, wire order; zero without one */
	__u8 outer_src_ip[16]; /* tunnel: the outer header of the packet that created the session */
	__u8 outer_dst_ip[16];
	__u8 outer_src_mac[6]; /* the (outer) Ethernet header of that packet */
	__u8 outer_dst_mac[6];
	__u16 outer_src_port;
	__u16 outer_dst_port;
	__u32 ifindex;         /* the interface the creating packet came in on (hairpin) */
	__u32 redirect_ifindex;/* forward packets of a redirect session go here */
	__u32 policy_id;
	__u32 rule_id;         /* 0: decided by a default action */
	__u8 tunnel_type;      /* FW_TUNNEL_* */
	__u8 tcp_state;        /* FW_TCP_* */
	__u8 tcp_flags;        /* OR of the TCP flags of every packet, both ways */
	__u8 action;           /* FW_ACTION_ALLOW or FW_ACTION_REDIRECT; FW_ACTION_BLOCK: an audit-mode
				* session, opened by a packet the policy blocks while enforcement was off */
	__u8 direction;        /* FW_DIR_* of the hook that created it */
	__u8 origin;           /* FW_ORIGIN_* */
	__u8 reason;           /* FW_REASON_* of the verdict that created it */
	__u8 _pad0;
};

/* A record of fw_sess_events: the session as it was when the event was sent. */
struct fw_session_event {
	__u32 type;            /* FW_SESSION_* */
	struct fw_session_key key;
	struct fw_session value;
};

/* A record of fw_audit. */
struct fw_audit_event {
	__u64 time_ns;
	__u8 src_ip[16];
	__u8 dst_ip[16];
	__u32 vni;
	__u32 ifindex;
	__u32 policy_id;
	__u32 rule_id;
	__u32 packet_len;      /* skb->len */
	__u16 src_port;
	__u16 dst_port;
	__u8 protocol;
	__u8 action;           /* the verdict: FW_ACTION_* */
	__u8 reason;           /* FW_REASON_* */
	__u8 direction;        /* FW_DIR_* */
	__u8 tunnel_type;
	__u8 enforced;         /* 0: audit mode, a block verdict was not applied */
	__u8 _pad0[2];
};

#endif
