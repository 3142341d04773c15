#!/usr/bin/env bash
# Builds what the package ships and the repository does not commit, before `npm pack` and
# `npm publish`: the BPF objects (bpf/*.o), the native library (dist/native/librxflow.so), the
# demo's tools (dist/tools/) and the JavaScript of src/ (dist/src/). package.json `files` picks
# from these; an installed package needs no compiler. Any build error stops the pack.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 1>&2 # npm pack --json prints its JSON on stdout
bash bpf/build.sh
bash native/build.sh
bash tools/build.sh
# Compiled afresh, so that no module of a deleted source is packed; tests and benches are not.
rm -rf dist/src
npx tsc -p tsconfig.build.json
echo "prepack: built bpf/*.o, dist/native, dist/tools and dist/src"
