#!/usr/bin/env bash
# Compiles every tools/*.c into dist/tools/<name> (dist/ is build output, never committed). A tool is
# rebuilt only when its source, a tools/*.h header or this script is newer than the binary; any
# compile error fails the build with the compiler's message.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../dist/tools"
mkdir -p "$out"
cd "$here"
if ! command -v gcc >/dev/null 2>&1; then
  echo "tools build: gcc not found; run 'bash scripts/setup.sh' (it installs gcc)" >&2
  exit 1
fi

# Libraries each tool links with.
libs_for() {
  case "$1" in
    kafka-mock) echo "-lrdkafka" ;;
    *) echo "" ;;
  esac
}

status=0
for src in *.c; do
  [ -e "$src" ] || continue
  name="${src%.c}"
  bin="$out/$name"
  if [ "$bin" -nt "$src" ] && [ "$bin" -nt build.sh ] &&
    [ -z "$(find . -maxdepth 1 -name '*.h' -newer "$bin" -print -quit)" ]; then
    continue
  fi
  echo "tools build: $src -> dist/tools/$name"
  # shellcheck disable=SC2046
  if ! gcc -O2 -g -Wall -Wextra -Werror -std=gnu11 -o "$bin.tmp" "$src" $(libs_for "$name"); then
    echo "tools build: compiling tools/$src failed (see the compiler output above)" >&2
    rm -f "$bin.tmp"
    status=1
    continue
  fi
  mv "$bin.tmp" "$bin"
done
exit $status
