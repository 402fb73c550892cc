#!/usr/bin/env bash
# Build the release wheel, install it into a fresh venv with no cargo/rustc on PATH, and run
# a small import + backfill from that venv (scripts/smoke_backfill.py). Proves a user
# without a Rust toolchain can run skewless from the wheel alone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
.venv/bin/maturin build --release --quiet --out "$out/dist" >/dev/null
wheel="$(ls "$out"/dist/skewless-*.whl)"
echo "wheel: $(basename "$wheel")"
py="$(.venv/bin/python -c 'import sys; print(sys._base_executable)')"
"$py" -m venv "$out/venv"
# no Rust toolchain on PATH: only the venv, the system's basic tools, and Python itself
clean_path="$out/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
env PATH="$clean_path" CARGO=/nonexistent RUSTC=/nonexistent \
  "$out/venv/bin/python" -m pip install -q "$wheel"
if env PATH="$clean_path" sh -c 'command -v cargo || command -v rustc' >/dev/null; then
  echo "wheel smoke: cargo is still on the clean PATH; the check would prove nothing" >&2
  exit 1
fi
(cd "$out" && env PATH="$clean_path" "$out/venv/bin/python" "$root/scripts/smoke_backfill.py")
