#!/usr/bin/env bash
# Compiles every bpf/*.c into bpf/<name>.o with BTF (-g). Objects are built on setup, not committed:
# clang comes from Debian with the rest of the toolchain, and a stale committed object could not
# drift from the headers the TypeScript side is checked against.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
if ! command -v clang >/dev/null 2>&1; then
  echo "bpf build: clang not found; run 'bash scripts/setup.sh' (it installs clang and libbpf-dev)" >&2
  exit 1
fi
arch_inc="/usr/include/$(uname -m)-linux-gnu"
status=0
for src in *.c; do
  [ -e "$src" ] || continue
  obj="${src%.c}.o"
  if [ "$obj" -nt "$src" ] && [ -z "$(find . -maxdepth 1 -name '*.h' -newer "$obj" -print -quit)" ]; then
    continue
  fi
  echo "bpf build: $src -> $obj"
  if ! clang -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_x86 -I"$arch_inc" -I. -c "$src" -o "$obj.tmp"; then
    echo "bpf build: compiling bpf/$src failed (see the compiler output above)" >&2
    rm -f "$obj.tmp"
    status=1
    continue
  fi
  mv "$obj.tmp" "$obj"
done
exit $status
