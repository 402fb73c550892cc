#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install skewless with its dev, bench and dask extras. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: the native kernel (native/, Rust) needs cargo >= 1.85 to build from source." >&2
  echo "  Install Rust (https://rustup.rs), or install a prebuilt wheel instead:" >&2
  echo "  pip install skewless-*.whl  (see README, 'Without a Rust toolchain')" >&2
  exit 1
fi
py=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    py="$candidate"; break
  fi
done
[ -n "$py" ] || { echo "bootstrap: Python >= 3.11 is required (none found on PATH)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
stamp=.venv/.skewless-installed
native_changed() {
  # the extension is rebuilt when any Rust source is newer than the installed stamp
  [ -n "$(find native -newer "$stamp" \( -name '*.rs' -o -name 'Cargo.toml' -o -name 'Cargo.lock' \) -print -quit)" ]
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ ! -e engine/_native.abi3.so ] ||
   native_changed; then
  # pip's and the build's output go to a log: the terminal gets one line, or the log's end
  log="$root/.venv/skewless-install.log"
  echo "bootstrap: installing skewless (building the native kernel with cargo) and dev dependencies into .venv"
  if ! { .venv/bin/python -m pip install --upgrade pip &&
         .venv/bin/python -m pip install -e ".[dev,bench,dask]"; } >"$log" 2>&1; then
    echo "bootstrap: installing skewless failed; the end of its log ($log):" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  touch "$stamp"
  echo "bootstrap: installed skewless (log: $log)"
fi
