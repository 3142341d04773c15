/* A program the verifier must reject (a hash map value dereferenced without the NULL check; recent
 * kernels know a constant-key array lookup cannot fail, so the map must be a hash), so the
 * datapath tests can check the EVERIFIER error and its log tail. clang compiles it cleanly. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} reject_values SEC(".maps");

SEC("tc")
int reject_null_deref(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&reject_values, &key);

	return (int)*v;
}

char LICENSE[] SEC("license") = "GPL";
