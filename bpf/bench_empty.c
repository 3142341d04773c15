// SPDX-License-Identifier: GPL-2.0
/* The baseline of bench/flow-program.bench.ts: what BPF_PROG_TEST_RUN costs for a TC program that
 * does nothing, so the flow program's own cost is the difference. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int bench_empty(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
