// A TCX link created in a network namespace on the calling thread, for a koffi call made on a
// libuv worker thread: the kernel holds the call for an RCU grace period (about 13 ms a link on a
// 2-CPU VM), which the agent's event loop must not wait out. Namespace membership belongs to the
// thread, so entering the namespace, resolving the interface name and creating the link happen
// here, in one call on one thread, and the thread goes back to its own namespace before it
// returns. Pinning the link is left to the caller: bpffs paths do not depend on the namespace.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// Where rxflow_tcx_link_create failed, in out[1].
enum {
  RXFLOW_TCX_OK = 0,
  RXFLOW_TCX_OPEN_NETNS = 1, // the namespace path could not be opened
  RXFLOW_TCX_ENTER = 2,      // setns into it failed
  RXFLOW_TCX_IFINDEX = 3,    // no interface of that name there
  RXFLOW_TCX_LINK = 4,       // bpf(BPF_LINK_CREATE) failed
  RXFLOW_TCX_LEAVE = 5,      // setns back failed: this thread is left in the other namespace
};

static int link_create(int prog_fd, unsigned ifindex, int attach_type) {
  union bpf_attr attr;
  memset(&attr, 0, sizeof(attr));
  attr.link_create.prog_fd = (uint32_t)prog_fd;
  attr.link_create.target_ifindex = ifindex;
  attr.link_create.attach_type = (uint32_t)attach_type;
  int fd = (int)syscall(__NR_bpf, BPF_LINK_CREATE, &attr, sizeof(attr));
  return fd < 0 ? -errno : fd;
}

// Creates a TCX link of prog_fd on interface `ifname` of the network namespace at `netns_path`
// (NULL: the thread's own). Returns the link fd, or -errno with out[1] saying which step failed;
// out[0] is the interface's ifindex once resolved.
int rxflow_tcx_link_create(const char *netns_path, const char *ifname, int prog_fd, int attach_type,
                           int32_t *out) {
  out[0] = 0;
  out[1] = RXFLOW_TCX_OK;
  int home = -1, target = -1;
  if (netns_path != NULL) {
    target = open(netns_path, O_RDONLY | O_CLOEXEC);
    if (target < 0) {
      out[1] = RXFLOW_TCX_OPEN_NETNS;
      return -errno;
    }
    home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    int entered = home >= 0 && setns(target, CLONE_NEWNET) == 0;
    int err = errno;
    close(target);
    if (!entered) {
      if (home >= 0) close(home);
      out[1] = RXFLOW_TCX_ENTER;
      return -err;
    }
  }
  int result;
  unsigned ifindex = if_nametoindex(ifname);
  if (ifindex == 0) {
    out[1] = RXFLOW_TCX_IFINDEX;
    result = -ENODEV;
  } else {
    out[0] = (int32_t)ifindex;
    result = link_create(prog_fd, ifindex, attach_type);
    if (result < 0) out[1] = RXFLOW_TCX_LINK;
  }
  if (home < 0) return result;
  int left = setns(home, CLONE_NEWNET) == 0;
  int err = errno;
  close(home);
  if (left) return result;
  // The link was made where it was asked for, but this thread cannot be trusted any more: closing
  // the only fd of an unpinned link detaches it.
  if (result >= 0) close(result);
  out[1] = RXFLOW_TCX_LEAVE;
  return -err;
}
