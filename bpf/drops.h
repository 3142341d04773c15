/* Types shared by the drop program (bpf/drops.c) and userspace (src/datapath/drops.ts). As in
 * flow.h, a test reads them from the object's BTF and holds them against the TypeScript layout. */
#ifndef RXFLOW_DROPS_H
#define RXFLOW_DROPS_H

#include <linux/types.h>

/* Size of the per-reason array: enum skb_drop_reason has about 130 values in 6.18 (and a
 * subsystem may OR its id into the upper 16 bits, SKB_DROP_REASON_SUBSYS_MASK); reasons at or past
 * the end count at DROP_REASON_OTHER, so none is lost. */
#define DROP_REASON_SLOTS 512
#define DROP_REASON_OTHER (DROP_REASON_SLOTS - 1)

/* Per-CPU value of the drop maps (struct flow_key -> struct drop_value): the drops of a flow the
 * flow map knew when the packet was freed. */
struct drop_value {
	__u64 packets;
	__u64 bytes;         /* IP octets, as octetDeltaCount (droppedOctetDeltaCount) */
	__u64 last_drop_ns;  /* bpf_ktime_get_ns() of the latest drop on this CPU */
	__u32 reason;        /* enum skb_drop_reason of that drop */
	__u8 tcp_state;      /* skb->sk->__sk_common.skc_state for TCP with a socket; 0: none */
	__u8 _pad0[3];
};

/* Per-CPU value of drop_reasons, indexed by the reason: every drop, and those not on a flow of the
 * flow map (the flow was unknown, the packet not IP, or the drop map full). */
struct drop_reason_count {
	__u64 packets;
	__u64 bytes;
	__u64 unmatched_packets;
	__u64 unmatched_bytes;
};

#endif
