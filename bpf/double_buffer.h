/* SPDX-License-Identifier: GPL-2.0 */
/* A per-CPU hash map double-buffered behind a one-slot array of maps, as the flow and drop maps
 * are: NAME##_map_a and NAME##_map_b of type struct NAME##_map_def, and NAME##_maps, whose slot
 * names the map the programs count into. Userspace points the slot at the other map (the kernel
 * returns from a map-in-map update only after an RCU grace period) and then drains the map no
 * program can reach any more, so no increment is lost between a program's lookup and its update
 * (see bpf/flow.c). The slot starts at NAME##_map_a, set only when libbpf creates the outer map:
 * one reused from its pin keeps the slot it had. */
#ifndef RXFLOW_DOUBLE_BUFFER_H
#define RXFLOW_DOUBLE_BUFFER_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define RXFLOW_DOUBLE_BUFFERED_HASH(NAME, KEY, VALUE, ENTRIES)                                    \
	struct NAME##_map_def {                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_HASH);                                           \
		__type(key, KEY);                                                                 \
		__type(value, VALUE);                                                             \
		__uint(max_entries, ENTRIES);                                                     \
	};                                                                                        \
	struct NAME##_map_def NAME##_map_a SEC(".maps");                                          \
	struct NAME##_map_def NAME##_map_b SEC(".maps");                                          \
	struct {                                                                                  \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);                                         \
		__type(key, __u32);                                                               \
		__uint(max_entries, 1);                                                           \
		__array(values, struct NAME##_map_def);                                           \
	} NAME##_maps SEC(".maps") = {                                                            \
		.values = { [0] = &NAME##_map_a },                                                \
	}

#endif
