#!/usr/bin/env bash
# The README's test command: set up everything on a fresh machine, then lint, type-check
# and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
echo "== ruff"
.venv/bin/ruff check engine connectors tests definitions benchmarks scripts
.venv/bin/ruff format --check engine connectors tests definitions benchmarks scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$code"
