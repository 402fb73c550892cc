#!/usr/bin/env bash
# The README's demo command: set up on a fresh machine (Python deps, Redis, Kafka jars),
# start the local services, then run the demo. Arguments go to scripts/demo.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
bash scripts/services.sh up
exec .venv/bin/python scripts/demo.py "$@"
