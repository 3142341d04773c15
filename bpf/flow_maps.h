/* SPDX-License-Identifier: GPL-2.0 */
/* The flow object's flow_maps as a program that shares them declares them (drops.c, rtt.c), so
 * libbpf accepts the map userspace hands over as this object's (bpf_map__reuse_fd: no second map
 * is created). Sizes rather than types: such a program may not use the structs, whose BTF would
 * then be bare forward declarations libbpf cannot size. */
#ifndef RXFLOW_FLOW_MAPS_H
#define RXFLOW_FLOW_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "flow.h"

struct flow_map_def {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(key_size, sizeof(struct flow_key));
	__uint(value_size, sizeof(struct flow_value));
	__uint(max_entries, 65536);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 1);
	__array(values, struct flow_map_def);
} flow_maps SEC(".maps");

#endif
