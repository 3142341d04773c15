#!/usr/bin/env bash
# Prepares this machine for rxflow: system packages (only those missing), npm packages, the BPF
# objects and the TypeScript build, and a bpffs mount. Safe to run again: every step checks first.
set -uo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
fail() {
  printf 'setup: error: %s\n' "$*" >&2
  exit 1
}

# Debian packages and why: clang/llvm/libbpf-dev build the BPF objects; libbpf1 is loaded through
# koffi; bpftool, iproute2 and iperf3 drive and inspect the datapath in tests and benchmarks;
# nats-server, librdkafka1 (its mock cluster is the Kafka broker of the tests) and kcat are the
# real servers and clients of the tests; prometheus ships promtool; linux-libc-dev the UAPI headers.
# libzstd1 and liblz4-1 are the kafka sink's zstd and lz4 codecs (through koffi); the zstd and lz4
# tools decompress its batches in the tests, independently of the sink. nfdump (nfcapd), tshark and
# softflowd are the independent IPFIX collector, decoder and exporter of the ipfix tests;
# nftables drops packets for a known reason in the drop tests.
packages=(clang llvm libbpf-dev libbpf1 bpftool iproute2 iperf3 nats-server librdkafka1 librdkafka-dev
  kcat prometheus linux-libc-dev ethtool procps iputils-ping gcc libzstd1 liblz4-1 zstd lz4 systemd
  nfdump tshark softflowd python3-jsonschema nftables)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    fail "missing Debian packages: ${missing[*]}; run this script as root, or install them with: apt-get install ${missing[*]}"
  fi
  command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: install these packages by hand: ${missing[*]}"
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq >/tmp/rxflow-apt-update.log 2>&1 ||
    fail "apt-get update failed (log: /tmp/rxflow-apt-update.log); check the network and apt sources"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/tmp/rxflow-apt-install.log 2>&1; then
    tail -n 20 /tmp/rxflow-apt-install.log >&2
    fail "apt-get install failed (full log: /tmp/rxflow-apt-install.log)"
  fi
else
  say "Debian packages present"
fi

command -v node >/dev/null 2>&1 || fail "node not found: install Node.js 20 or newer"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || fail "Node.js $(node --version) is too old: rxflow needs Node.js 20 or newer"

# npm ci only when the lock file changed since the last install.
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.rxflow-lock-hash 2>/dev/null)" != "$lock_hash" ]; then
  say "installing npm packages (npm ci)"
  if ! npm ci --no-audit --no-fund >/tmp/rxflow-npm-ci.log 2>&1; then
    tail -n 20 /tmp/rxflow-npm-ci.log >&2
    fail "npm ci failed (full log: /tmp/rxflow-npm-ci.log)"
  fi
  echo "$lock_hash" >node_modules/.rxflow-lock-hash
else
  say "npm packages present"
fi

say "building BPF objects"
bash bpf/build.sh || fail "BPF build failed: fix the C error shown above"

say "building the native library (dist/native/librxflow.so)"
bash native/build.sh || fail "native build failed: see the compiler output above"

if [ -f tools/build.sh ]; then
  say "building test and demo tools"
  bash tools/build.sh || fail "tools build failed: see the compiler output above"
fi

say "building TypeScript"
if ! npx tsc -p tsconfig.json; then
  fail "TypeScript build failed: fix the type errors shown above"
fi

if [ "$(id -u)" -eq 0 ]; then
  if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
    say "mounting bpffs on /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf || fail "could not mount bpffs on /sys/fs/bpf"
  fi
else
  say "not root: skipping the bpffs mount (kernel features need root)"
fi
say "ready"
