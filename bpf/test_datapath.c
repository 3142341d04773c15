/* Test and benchmark programs for src/datapath: not loaded by the agent.
 * count_echo counts IPv4 ICMP echo requests (and nothing else, so a test that sends N pings
 * expects exactly N even while the veth also carries ARP and IPv6 neighbour discovery).
 * fill_ring writes numbered records to the events ring buffer when run with BPF_PROG_TEST_RUN,
 * so a test knows exactly which records the reader must return. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* linux/icmp.h pulls in libc headers that a BPF target cannot build. */
struct test_icmphdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 rest;
};

#define TEST_ICMP_ECHO 8

struct echo_counts {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct echo_counts);
} echo_counts SEC(".maps");

/* Settings and counters of fill_ring, index 0. */
struct rb_config {
	__u32 records_per_run; /* records written per program run */
	__u32 discard_every;   /* 0: none; N: every record with seq % N == N - 1 is reserved, then discarded */
	__u32 fixed_size;      /* 0: 16 + 8 * (seq % 18) bytes; else this size (16..152, multiple of 8) */
	__u32 _pad0;
	__u64 next_seq;
	__u64 reserve_failed;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rb_config);
} rb_config SEC(".maps");

/* Record of fill_ring: slot[i] = seq + i for every 8-byte slot within size. */
struct test_record {
	__u64 seq;
	__u32 size;
	__u32 check; /* (__u32)seq * 2654435761 */
	__u64 slot[17];
};

#define TEST_RECORD_MAX 152

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

/* Same sizes as the flow map of flow.c, for drain tests and the map benchmark. */
struct test_flow_key {
	__u8 b[48];
};

struct test_flow_value {
	__u8 b[96];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct test_flow_key);
	__type(value, struct test_flow_value);
} test_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} test_hash SEC(".maps");

SEC("tc")
int count_echo(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct test_icmphdr *icmp;
	struct echo_counts *c;
	__u32 key = 0;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_ICMP || ip->ihl != 5)
		return TC_ACT_OK;
	icmp = (void *)(ip + 1);
	if ((void *)(icmp + 1) > data_end || icmp->type != TEST_ICMP_ECHO)
		return TC_ACT_OK;
	c = bpf_map_lookup_elem(&echo_counts, &key);
	if (!c)
		return TC_ACT_OK;
	c->packets++;
	c->bytes += skb->len;
	return TC_ACT_OK;
}

struct fill_ctx {
	struct rb_config *cfg;
};

static long fill_one(__u32 index, void *arg)
{
	struct fill_ctx *ctx = arg;
	struct rb_config *cfg = ctx->cfg;
	struct test_record rec = {};
	__u64 seq = __sync_fetch_and_add(&cfg->next_seq, 1);
	__u64 size = cfg->fixed_size;
	void *slot;

	if (size == 0)
		size = 16 + 8 * (seq % 18);
	if (size > TEST_RECORD_MAX)
		size = TEST_RECORD_MAX;
	if (size < 16)
		size = 16;

	if (cfg->discard_every && seq % cfg->discard_every == cfg->discard_every - 1) {
		slot = bpf_ringbuf_reserve(&events, TEST_RECORD_MAX, 0);
		if (!slot) {
			__sync_fetch_and_add(&cfg->reserve_failed, 1);
			return 0;
		}
		bpf_ringbuf_discard(slot, BPF_RB_NO_WAKEUP);
		return 0;
	}

	/* keeps clang from checking the bounds on a copy of size the verifier cannot relate */
	barrier_var(size);
	rec.seq = seq;
	rec.size = size;
	rec.check = (__u32)seq * 2654435761u;
	for (int i = 0; i < 17; i++)
		rec.slot[i] = seq + i;
	if (bpf_ringbuf_output(&events, &rec, size, BPF_RB_NO_WAKEUP))
		__sync_fetch_and_add(&cfg->reserve_failed, 1);
	return 0;
}

SEC("tc")
int fill_ring(struct __sk_buff *skb)
{
	__u32 key = 0;
	struct fill_ctx ctx;

	ctx.cfg = bpf_map_lookup_elem(&rb_config, &key);
	if (!ctx.cfg)
		return TC_ACT_OK;
	bpf_loop(ctx.cfg->records_per_run, fill_one, &ctx, 0);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
