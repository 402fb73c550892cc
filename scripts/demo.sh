#!/usr/bin/env bash
# The README's demo command: set up on a fresh machine, then run the demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo_offline.py "$@"
