#!/usr/bin/env bash
# The whole test suite: setup, lint, format check, then every test. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: lint"
npx eslint .
echo "test: format check"
npx prettier --check . >/dev/null || { npx prettier --check .; exit 1; }
echo "test: vitest"
exec npx vitest run "$@"
