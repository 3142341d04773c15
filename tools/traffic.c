/*
 * Exact traffic for tests: every sender counts what the kernel accepted (the return value of each
 * send call, or TCP_INFO for TCP) and prints it as one JSON line on stdout, so a test can compare
 * what was sent with what a counter saw. Errors go to stderr with a non-zero exit status.
 *
 *   traffic udp-send --dst ADDR --port P --count N --size BYTES [--src-port P] [--flows F]
 *                    [--interval-us U]
 *       F flows (source ports P..P+F-1, or one ephemeral port) each send N datagrams of BYTES
 *       payload bytes.
 *       -> {"sent":F*N,"payloadBytes":F*N*BYTES,"retries":R,"srcPortFirst":..,"srcPortLast":..}
 *   traffic udp-sink --port P [--family 4|6] --count N [--timeout-ms T]
 *       -> "listening", then {"received":n,"payloadBytes":b} after N datagrams or the timeout
 *   traffic tcp-send --dst ADDR --port P --bytes K [--src-port P]
 *       connect, send K bytes, shut down the write side, wait for the peer to close, report
 *       -> {"sent":K,"segsOut":..,"segsIn":..,"dataSegsOut":..,"retransmits":..,"srcPort":..}
 *   traffic tcp-sink --port P [--family 4|6] [--timeout-ms T]
 *       accept one connection, read to its end, close and wait for the client's last ACK
 *       -> "listening", then {"received":K,"segsOut":..,"segsIn":..,"retransmits":..}
 *   traffic frame-send --ifname IF --frame HEX --count N
 *       send the Ethernet frame HEX (as on the wire, no FCS) N times on IF through a packet
 *       socket, for frames no socket of a protocol would build (ARP, any ethertype, VLAN stacks,
 *       tunnels, IPv6 extension headers)
 *       -> {"sent":N,"bytes":N*len}
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <linux/tcp.h> /* glibc's struct tcp_info lacks the segment counters */
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct opts {
  const char *dst, *ifname, *frame;
  long port, count, size, src_port, flows, interval_us, bytes, family, timeout_ms;
};

static void die(const char *what) {
  fprintf(stderr, "traffic: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(const char *msg) {
  fprintf(stderr, "traffic: %s\n", msg);
  exit(2);
}

static long num(const char *name, const char *text, long min, long max) {
  char *end = NULL;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < min || v > max) {
    fprintf(stderr, "traffic: %s must be an integer from %ld to %ld, got '%s'\n", name, min, max, text);
    exit(2);
  }
  return v;
}

static void parse(int argc, char **argv, struct opts *o) {
  memset(o, 0, sizeof(*o));
  o->port = -1;
  o->count = -1;
  o->size = -1;
  o->bytes = -1;
  o->flows = 1;
  o->family = 4;
  o->timeout_ms = 10000;
  for (int i = 2; i < argc; i += 2) {
    if (i + 1 >= argc) {
      usage("every option takes a value");
    }
    const char *k = argv[i], *v = argv[i + 1];
    if (strcmp(k, "--dst") == 0) {
      o->dst = v;
    } else if (strcmp(k, "--ifname") == 0) {
      o->ifname = v;
    } else if (strcmp(k, "--frame") == 0) {
      o->frame = v;
    } else if (strcmp(k, "--port") == 0) {
      o->port = num(k, v, 1, 65535);
    } else if (strcmp(k, "--count") == 0) {
      o->count = num(k, v, 0, 1000000000);
    } else if (strcmp(k, "--size") == 0) {
      o->size = num(k, v, 0, 65507);
    } else if (strcmp(k, "--src-port") == 0) {
      o->src_port = num(k, v, 1, 65535);
    } else if (strcmp(k, "--flows") == 0) {
      o->flows = num(k, v, 1, 65535);
    } else if (strcmp(k, "--interval-us") == 0) {
      o->interval_us = num(k, v, 0, 10000000);
    } else if (strcmp(k, "--bytes") == 0) {
      o->bytes = num(k, v, 0, 1L << 40);
    } else if (strcmp(k, "--family") == 0) {
      o->family = num(k, v, 4, 6);
    } else if (strcmp(k, "--timeout-ms") == 0) {
      o->timeout_ms = num(k, v, 1, 3600000);
    } else {
      fprintf(stderr, "traffic: unknown option '%s'\n", k);
      exit(2);
    }
  }
}

/* Fills ss from an address and port; returns its length. */
static socklen_t sockaddr_of(const char *addr, long port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, addr, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    return sizeof(*v4);
  }
  if (inet_pton(AF_INET6, addr, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    return sizeof(*v6);
  }
  fprintf(stderr, "traffic: '%s' is not an IPv4 or IPv6 address\n", addr);
  exit(2);
}

static socklen_t any_addr(int family, long port, struct sockaddr_storage *ss) {
  return sockaddr_of(family == AF_INET6 ? "::" : "0.0.0.0", port, ss);
}

static long local_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
    die("getsockname");
  }
  return ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                  : ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void bind_port(int fd, int family, long port) {
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
    die("setsockopt SO_REUSEADDR");
  }
  struct sockaddr_storage ss;
  socklen_t len = any_addr(family, port, &ss);
  if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
    char what[64];
    snprintf(what, sizeof(what), "bind port %ld", port);
    die(what);
  }
}

static void pause_us(long us) {
  if (us > 0) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
  }
}

static int udp_send(const struct opts *o) {
  if (o->dst == NULL || o->port < 0 || o->count < 0 || o->size < 0) {
    usage("udp-send needs --dst, --port, --count and --size");
  }
  if (o->flows > 1 && o->src_port == 0) {
    usage("udp-send with --flows above 1 needs --src-port (the first source port)");
  }
  if (o->src_port + o->flows - 1 > 65535) {
    usage("udp-send: --src-port + --flows - 1 must not exceed 65535");
  }
  struct sockaddr_storage to;
  socklen_t tolen = sockaddr_of(o->dst, o->port, &to);
  char *payload = malloc((size_t)o->size + 1);
  if (payload == NULL) {
    die("malloc");
  }
  for (long i = 0; i < o->size; i++) {
    payload[i] = (char)(i & 0xff);
  }
  long sent = 0, retries = 0, first = 0, last = 0;
  for (long f = 0; f < o->flows; f++) {
    int fd = socket(to.ss_family, SOCK_DGRAM, 0);
    if (fd < 0) {
      die("socket");
    }
    /* Not connected: a connected socket would fail its next send with ECONNREFUSED after the
     * peer's port-unreachable, and that datagram would never leave. */
    bind_port(fd, to.ss_family, o->src_port == 0 ? 0 : o->src_port + f);
    long port = local_port(fd);
    if (f == 0) {
      first = port;
    }
    last = port;
    for (long i = 0; i < o->count; i++) {
      ssize_t n = sendto(fd, payload, (size_t)o->size, 0, (struct sockaddr *)&to, tolen);
      if (n < 0 && (errno == ENOBUFS || errno == EAGAIN || errno == EINTR)) {
        /* The datagram was not queued: send it again so the count stays exact. */
        retries++;
        i--;
        pause_us(100);
        continue;
      }
      if (n < 0) {
        die("sendto");
      }
      if (n != o->size) {
        fprintf(stderr, "traffic: short send: %zd of %ld bytes\n", n, o->size);
        return 1;
      }
      sent++;
      pause_us(o->interval_us);
    }
    close(fd);
  }
  printf("{\"sent\":%ld,\"payloadBytes\":%ld,\"retries\":%ld,\"srcPortFirst\":%ld,\"srcPortLast\":%ld}\n", sent,
         sent * o->size, retries, first, last);
  free(payload);
  return 0;
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int family_of(const struct opts *o) {
  if (o->family != 4 && o->family != 6) {
    usage("--family must be 4 or 6");
  }
  return o->family == 6 ? AF_INET6 : AF_INET;
}

static int udp_sink(const struct opts *o) {
  if (o->port < 0 || o->count < 0) {
    usage("udp-sink needs --port and --count");
  }
  int family = family_of(o);
  int fd = socket(family, SOCK_DGRAM, 0);
  if (fd < 0) {
    die("socket");
  }
  int rcvbuf = 32 << 20;
  /* A burst must not overflow the socket: the count would then measure the buffer, not the wire. */
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
  bind_port(fd, family, o->port);
  printf("listening\n");
  fflush(stdout);
  static char buf[65536];
  long received = 0, bytes = 0, deadline = now_ms() + o->timeout_ms;
  while (received < o->count) {
    long left = deadline - now_ms();
    if (left <= 0) {
      break;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, (int)left);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r < 0) {
      die("poll");
    }
    if (r == 0) {
      break;
    }
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      continue;
    }
    if (n < 0) {
      die("recv");
    }
    received++;
    bytes += n;
  }
  printf("{\"received\":%ld,\"payloadBytes\":%ld}\n", received, bytes);
  close(fd);
  return 0;
}

static void tcp_stats(int fd, struct tcp_info *ti) {
  socklen_t len = sizeof(*ti);
  memset(ti, 0, sizeof(*ti));
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len) != 0) {
    die("getsockopt TCP_INFO");
  }
}

/* Reads until end of stream; returns the byte count. */
static long drain(int fd, long timeout_ms) {
  static char buf[65536];
  long total = 0, deadline = now_ms() + timeout_ms;
  for (;;) {
    long left = deadline - now_ms();
    if (left <= 0) {
      errno = ETIMEDOUT;
      die("waiting for the peer to close");
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, (int)left);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r < 0) {
      die("poll");
    }
    if (r == 0) {
      continue;
    }
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      die("recv");
    }
    if (n == 0) {
      return total;
    }
    total += n;
  }
}

static int tcp_send(const struct opts *o) {
  if (o->dst == NULL || o->port < 0 || o->bytes < 0) {
    usage("tcp-send needs --dst, --port and --bytes");
  }
  struct sockaddr_storage to;
  socklen_t tolen = sockaddr_of(o->dst, o->port, &to);
  int fd = socket(to.ss_family, SOCK_STREAM, 0);
  if (fd < 0) {
    die("socket");
  }
  if (o->src_port != 0) {
    bind_port(fd, to.ss_family, o->src_port);
  }
  if (connect(fd, (struct sockaddr *)&to, tolen) != 0) {
    die("connect");
  }
  static char chunk[65536];
  memset(chunk, 'x', sizeof(chunk));
  long sent = 0;
  while (sent < o->bytes) {
    size_t want = (size_t)(o->bytes - sent < (long)sizeof(chunk) ? o->bytes - sent : (long)sizeof(chunk));
    ssize_t n = send(fd, chunk, want, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      die("send");
    }
    sent += n;
  }
  if (shutdown(fd, SHUT_WR) != 0) {
    die("shutdown");
  }
  /* The peer closes after reading everything; by the time its FIN is read here, the ACK of that
   * FIN has been sent, so the counters below cover the whole connection. */
  long got = drain(fd, o->timeout_ms);
  struct tcp_info ti;
  tcp_stats(fd, &ti);
  printf("{\"sent\":%ld,\"received\":%ld,\"segsOut\":%u,\"segsIn\":%u,\"dataSegsOut\":%u,\"retransmits\":%u,"
         "\"srcPort\":%ld}\n",
         sent, got, ti.tcpi_segs_out, ti.tcpi_segs_in, ti.tcpi_data_segs_out, ti.tcpi_total_retrans,
         local_port(fd));
  close(fd);
  return 0;
}

static int tcp_sink(const struct opts *o) {
  if (o->port < 0) {
    usage("tcp-sink needs --port");
  }
  int family = family_of(o);
  int lfd = socket(family, SOCK_STREAM, 0);
  if (lfd < 0) {
    die("socket");
  }
  bind_port(lfd, family, o->port);
  if (listen(lfd, 1) != 0) {
    die("listen");
  }
  printf("listening\n");
  fflush(stdout);
  struct pollfd p = {.fd = lfd, .events = POLLIN};
  int r;
  do {
    r = poll(&p, 1, (int)o->timeout_ms);
  } while (r < 0 && errno == EINTR);
  if (r <= 0) {
    errno = r == 0 ? ETIMEDOUT : errno;
    die("waiting for a connection");
  }
  int fd = accept(lfd, NULL, NULL);
  if (fd < 0) {
    die("accept");
  }
  close(lfd);
  long got = drain(fd, o->timeout_ms);
  /* Send our FIN now and wait until the client has acknowledged it (state CLOSE), so the counters
   * include the FIN and the delayed ACK of the client's FIN that may ride on it. */
  if (shutdown(fd, SHUT_WR) != 0) {
    die("shutdown");
  }
  struct tcp_info ti;
  long deadline = now_ms() + o->timeout_ms;
  for (tcp_stats(fd, &ti); ti.tcpi_state != 7 /* TCP_CLOSE */; tcp_stats(fd, &ti)) {
    if (now_ms() > deadline) {
      errno = ETIMEDOUT;
      die("waiting for the client to acknowledge our FIN");
    }
    pause_us(1000);
  }
  /* The SYN-ACK went out from the listener's request socket: the accepted socket starts counting
   * after it (its segs_in starts at 1 for the SYN, its segs_out at 0), so add it here. */
  printf("{\"received\":%ld,\"segsOut\":%u,\"segsIn\":%u,\"retransmits\":%u}\n", got, ti.tcpi_segs_out + 1,
         ti.tcpi_segs_in, ti.tcpi_total_retrans);
  close(fd);
  return 0;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int frame_send(const struct opts *o) {
  if (o->ifname == NULL || o->frame == NULL || o->count < 0) {
    usage("frame-send needs --ifname, --frame and --count");
  }
  size_t hex_len = strlen(o->frame);
  unsigned char frame[9216];
  size_t len = hex_len / 2;
  if (hex_len % 2 != 0 || len < 14 || len > sizeof(frame)) {
    usage("frame-send: --frame must be an even number of hex digits, 14 to 9216 bytes");
  }
  for (size_t i = 0; i < len; i++) {
    int hi = hex_digit(o->frame[2 * i]), lo = hex_digit(o->frame[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      usage("frame-send: --frame must be hex digits only");
    }
    frame[i] = (unsigned char)(hi << 4 | lo);
  }
  unsigned ifindex = if_nametoindex(o->ifname);
  if (ifindex == 0) {
    die(o->ifname);
  }
  /* Protocol 0: the socket receives nothing, it only sends. */
  int fd = socket(AF_PACKET, SOCK_RAW, 0);
  if (fd < 0) {
    die("socket AF_PACKET");
  }
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof(sll));
  sll.sll_family = AF_PACKET;
  sll.sll_ifindex = (int)ifindex;
  sll.sll_halen = 6;
  memcpy(sll.sll_addr, frame, 6);
  long sent = 0;
  while (sent < o->count) {
    ssize_t n = sendto(fd, frame, len, 0, (struct sockaddr *)&sll, sizeof(sll));
    if (n < 0 && (errno == ENOBUFS || errno == EAGAIN || errno == EINTR)) {
      pause_us(100);
      continue;
    }
    if (n < 0) {
      die("sendto");
    }
    if ((size_t)n != len) {
      fprintf(stderr, "traffic: frame-send: sent %zd of %zu bytes\n", n, len);
      exit(1);
    }
    sent++;
  }
  printf("{\"sent\":%ld,\"bytes\":%ld}\n", sent, sent * (long)len);
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage("usage: traffic udp-send|udp-sink|tcp-send|tcp-sink|frame-send --option value ...");
  }
  struct opts o;
  parse(argc, argv, &o);
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (strcmp(argv[1], "udp-send") == 0) {
    return udp_send(&o);
  }
  if (strcmp(argv[1], "udp-sink") == 0) {
    return udp_sink(&o);
  }
  if (strcmp(argv[1], "tcp-send") == 0) {
    return tcp_send(&o);
  }
  if (strcmp(argv[1], "tcp-sink") == 0) {
    return tcp_sink(&o);
  }
  if (strcmp(argv[1], "frame-send") == 0) {
    return frame_send(&o);
  }
  fprintf(stderr, "traffic: unknown mode '%s': use udp-send, udp-sink, tcp-send, tcp-sink or frame-send\n",
          argv[1]);
  return 2;
}
