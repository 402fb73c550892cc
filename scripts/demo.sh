#!/usr/bin/env bash
# The README's demo command: set up on a fresh machine (Python deps, Redis, Kafka jars), then
# run `skewless demo`, which starts the local services, streams, reads, backfills, verifies and
# writes a report (docs/demo.md). Arguments go to `skewless demo` (e.g. --events 20000).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
exec .venv/bin/skewless demo "$@"
