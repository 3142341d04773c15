/*
 * A Kafka-protocol broker for tests and the demo: librdkafka's mock cluster in a process of its
 * own, so the cluster's threads never share an event loop with the caller and a test can kill it.
 *
 *   kafka-mock [--brokers N]
 *
 * Prints "ready <bootstrap servers>" on stdout, then reads one command per line on stdin and
 * answers each with one line, "ok" or "error <text>":
 *
 *   topic <name> <partitions> [replication]   create a topic
 *   down <broker id>                          disconnect a broker and refuse connections (-1: all)
 *   up <broker id>                            accept connections again (-1: all)
 *   error <api key> <count> <error code>      the next <count> requests of <api key> fail
 *   clear <api key>                           forget pushed errors of <api key>
 *   rtt <broker id> <ms>                      delay every response of a broker
 *   quit                                      destroy the cluster and exit
 *
 * End of input also exits, and so does the death of the parent: a test that dies leaves no broker.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static int debug_logs;

/* librdkafka's default logger writes every broker event to stderr; a parent that does not read
 * the pipe fast enough then blocks the mock's threads. Only errors pass, and only on request. */
static void quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  if (debug_logs || level <= 3) {
    fprintf(stderr, "kafka-mock: %s: %s\n", fac, buf);
  }
}

static int parse_int(const char *text, long min, long max, long *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < min || v > max) {
    return -1;
  }
  *out = v;
  return 0;
}

static void reply_err(rd_kafka_resp_err_t err) {
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    puts("ok");
  } else {
    printf("error %s: %s\n", rd_kafka_err2name(err), rd_kafka_err2str(err));
  }
}

/* Splits a command line into at most max words in place; returns the count. */
static int split(char *line, char **words, int max) {
  int n = 0;
  char *save = NULL;
  for (char *w = strtok_r(line, " \t\r\n", &save); w != NULL && n < max; w = strtok_r(NULL, " \t\r\n", &save)) {
    words[n++] = w;
  }
  return n;
}

static int run_command(rd_kafka_mock_cluster_t *mc, char *line) {
  char *w[6];
  int n = split(line, w, 6);
  long a, b, c;
  if (n == 0) {
    puts("error empty command");
  } else if (strcmp(w[0], "quit") == 0) {
    puts("ok");
    return 1;
  } else if (strcmp(w[0], "topic") == 0 && (n == 3 || n == 4)) {
    if (parse_int(w[2], 1, 100000, &a) != 0 || (n == 4 && parse_int(w[3], 1, 1000, &b) != 0)) {
      puts("error topic: partitions and replication must be positive integers");
    } else {
      reply_err(rd_kafka_mock_topic_create(mc, w[1], (int)a, n == 4 ? (int)b : 1));
    }
  } else if ((strcmp(w[0], "down") == 0 || strcmp(w[0], "up") == 0) && n == 2) {
    if (parse_int(w[1], -1, INT32_MAX, &a) != 0) {
      printf("error %s: broker id must be an integer\n", w[0]);
    } else if (w[0][0] == 'd') {
      reply_err(rd_kafka_mock_broker_set_down(mc, (int32_t)a));
    } else {
      reply_err(rd_kafka_mock_broker_set_up(mc, (int32_t)a));
    }
  } else if (strcmp(w[0], "error") == 0 && n == 4) {
    if (parse_int(w[1], 0, INT16_MAX, &a) != 0 || parse_int(w[2], 1, 1000000, &b) != 0 ||
        parse_int(w[3], -200, 1000, &c) != 0) {
      puts("error error: usage: error <api key> <count> <error code>");
    } else {
      rd_kafka_resp_err_t *errs = malloc(sizeof(*errs) * (size_t)b);
      if (errs == NULL) {
        puts("error error: out of memory");
      } else {
        for (long i = 0; i < b; i++) {
          errs[i] = (rd_kafka_resp_err_t)c;
        }
        rd_kafka_mock_push_request_errors_array(mc, (int16_t)a, (size_t)b, errs);
        free(errs);
        puts("ok");
      }
    }
  } else if (strcmp(w[0], "clear") == 0 && n == 2) {
    if (parse_int(w[1], 0, INT16_MAX, &a) != 0) {
      puts("error clear: api key must be an integer");
    } else {
      rd_kafka_mock_clear_request_errors(mc, (int16_t)a);
      puts("ok");
    }
  } else if (strcmp(w[0], "rtt") == 0 && n == 3) {
    if (parse_int(w[1], -1, INT32_MAX, &a) != 0 || parse_int(w[2], 0, 600000, &b) != 0) {
      puts("error rtt: usage: rtt <broker id> <ms>");
    } else {
      reply_err(rd_kafka_mock_broker_set_rtt(mc, (int32_t)a, (int)b));
    }
  } else {
    printf("error unknown command '%s' with %d argument(s)\n", w[0], n - 1);
  }
  return 0;
}

int main(int argc, char **argv) {
  long brokers = 1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc && parse_int(argv[i + 1], 1, 64, &brokers) == 0) {
      i++;
    } else {
      fprintf(stderr, "kafka-mock: usage: kafka-mock [--brokers N] (N from 1 to 64)\n");
      return 2;
    }
  }
  debug_logs = getenv("RXFLOW_KAFKA_MOCK_DEBUG") != NULL;
  /* Exit with the parent even if it is SIGKILLed and never closes our stdin. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() == 1) {
    return 1;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set_log_cb(conf, quiet_log);
  if (rd_kafka_conf_set(conf, "log_level", debug_logs ? "7" : "3", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
    fprintf(stderr, "kafka-mock: %s\n", errstr);
    return 1;
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (rk == NULL) {
    fprintf(stderr, "kafka-mock: rd_kafka_new: %s\n", errstr);
    return 1;
  }
  rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, (int)brokers);
  if (mc == NULL) {
    fprintf(stderr, "kafka-mock: could not create the mock cluster\n");
    rd_kafka_destroy(rk);
    return 1;
  }
  printf("ready %s\n", rd_kafka_mock_cluster_bootstraps(mc));

  char line[4096];
  while (fgets(line, sizeof(line), stdin) != NULL) {
    if (run_command(mc, line)) {
      break;
    }
  }
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
