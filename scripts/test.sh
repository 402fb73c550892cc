#!/usr/bin/env bash
# The README's test command: set up everything on a fresh machine (Python deps, Redis from
# Debian's packages, Kafka jars from Maven Central, both services started on 127.0.0.1),
# then lint, type-check and run the whole test suite except `slow` soaks. Extra arguments
# replace the default pytest arguments.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
if ! command -v cargo >/dev/null 2>&1; then export PATH="$HOME/.cargo/bin:$PATH"; fi
echo "== rust (native kernel: fmt, clippy, tests)"
(cd native && cargo fmt --all --check && cargo clippy --all-targets -- -D warnings && cargo test -q)
echo "== release wheel in a fresh venv without cargo"
bash scripts/wheel_smoke.sh
echo "== services (real Kafka and Redis on 127.0.0.1)"
bash scripts/services.sh up
echo "== ruff"
.venv/bin/ruff check engine connectors tests definitions benchmarks scripts
.venv/bin/ruff format --check engine connectors tests definitions benchmarks scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
set +e
if [ "$#" -eq 0 ]; then
  set -- -m "not slow and not redis_cluster"  # the cluster-only tests run in the cluster pass below
fi
.venv/bin/pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
if [ "$code" -ne 0 ] || [ "${SKEWLESS_SKIP_CLUSTER_PASS:-}" = 1 ]; then
  exit "$code"
fi
# The Redis Cluster pass: the Redis-touching integration tests and the end-to-end parity
# tests again, the online store being a local 3-master/3-replica cluster, and the failover
# test (a master SIGKILLed under a writing worker). Kafka is the same broker.
echo "== pytest against a Redis Cluster"
export SKEWLESS_REDIS_CLUSTER_PORT="${SKEWLESS_REDIS_CLUSTER_PORT:-7001}"
export SKEWLESS_REDIS_CLUSTER_NODE_TIMEOUT="${SKEWLESS_REDIS_CLUSTER_NODE_TIMEOUT:-1500}"
bash scripts/services.sh up redis-cluster
p=$SKEWLESS_REDIS_CLUSTER_PORT
export SKEWLESS_REDIS_CLUSTER_NODES="127.0.0.1:$p,127.0.0.1:$((p + 1)),127.0.0.1:$((p + 2))"
set +e
# Those that talk to Redis through the store, the failover test, and the end-to-end parity
# of both runtimes; the runtime-specific Kafka tests (rebalances, kill -9, SIGTERM drains)
# are the single pass's: the store they use is the same code, and they would double the
# added time (the cluster pass adds about 5 minutes).
.venv/bin/pytest -m "redis and not slow and not single_redis" \
  tests/integration/test_redis_store.py tests/integration/test_owner_epochs.py \
  tests/integration/test_packed_writes.py tests/integration/test_zombie_write.py \
  tests/integration/test_online_read.py tests/integration/test_rebuild_online.py \
  tests/integration/test_online_status.py tests/integration/test_status.py \
  tests/integration/test_verify.py tests/integration/test_bad_input.py \
  tests/integration/test_merged_tiles.py tests/integration/test_local_state.py \
  tests/integration/test_cluster_failover.py tests/integration/test_cluster_resharding.py \
  tests/e2e
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "the cluster pass collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$code"
