#!/usr/bin/env bash
# Compiles native/*.c into one shared library, dist/native/librxflow.so, loaded with koffi by the
# modules that use it (dist/ is build output, never committed). Rebuilt only when a source or this
# script is newer than the library.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../dist/native"
lib="$out/librxflow.so"
mkdir -p "$out"
cd "$here"
if ! command -v gcc >/dev/null 2>&1; then
  echo "native build: gcc not found; run 'bash scripts/setup.sh' (it installs gcc)" >&2
  exit 1
fi
if [ -f "$lib" ] && [ "$lib" -nt build.sh ] && [ -z "$(find . -maxdepth 1 -name '*.c' -newer "$lib" -print -quit)" ]; then
  exit 0
fi
echo "native build: native/*.c -> dist/native/librxflow.so"
if ! gcc -O2 -g -Wall -Wextra -Werror -std=gnu11 -shared -fPIC -o "$lib.tmp" ./*.c; then
  echo "native build: compiling native/*.c failed (see the compiler output above)" >&2
  rm -f "$lib.tmp"
  exit 1
fi
mv "$lib.tmp" "$lib"
