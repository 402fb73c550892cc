#!/usr/bin/env bash
# Local Kafka (single-node KRaft, from Maven Central jars) + Redis for skewless, without Docker.
#
#   scripts/services.sh up     [kafka|redis]       start (idempotent), wait until both answer
#   scripts/services.sh down   [kafka|redis] [--purge]   stop (SIGTERM, then SIGKILL); --purge wipes data
#   scripts/services.sh status [kafka|redis]       exit 0 only if the named (default: both) run
#   scripts/services.sh env                        print export lines for the engine
#   scripts/services.sh up|down|status redis-cluster   a local Redis Cluster (3 masters + 3
#       replicas, never part of the default "both"); `env redis-cluster` prints its exports
#
# Environment (all optional):
#   SKEWLESS_KAFKA_PORT=9092  SKEWLESS_KAFKA_CONTROLLER_PORT=9093  SKEWLESS_REDIS_PORT=6379
#   SKEWLESS_KAFKA_VERSION=4.1.1        broker version fetched from Maven Central
#   SKEWLESS_CACHE=~/.cache/skewless    jar cache (kafka-<version>/libs)
#   SKEWLESS_SERVICES_DIR=~/.cache/skewless/services   data, logs, pid files
#   SKEWLESS_SERVICES_TIMEOUT=90        seconds to wait for readiness
#   SKEWLESS_STOP_TIMEOUT=30            seconds after SIGTERM before SIGKILL
#   SKEWLESS_KAFKA_HEAP="-Xms128m -Xmx512m"
#   SKEWLESS_REDIS_CLUSTER_PORT=7001    first of the cluster's 6 consecutive ports (bus: +10000)
#   SKEWLESS_REDIS_CLUSTER_NODE_TIMEOUT=2000   cluster-node-timeout (ms): how soon a replica takes over
#   SKEWLESS_SERVICES_PYTHON=.venv/bin/python   used for the Kafka readiness probe (confluent-kafka)
# See docs/services.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

KAFKA_VERSION="${SKEWLESS_KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${SKEWLESS_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${SKEWLESS_KAFKA_CONTROLLER_PORT:-9093}"
REDIS_PORT="${SKEWLESS_REDIS_PORT:-6379}"
CACHE_DIR="${SKEWLESS_CACHE:-$HOME/.cache/skewless}"
SERVICES_DIR="${SKEWLESS_SERVICES_DIR:-$HOME/.cache/skewless/services}"
TIMEOUT="${SKEWLESS_SERVICES_TIMEOUT:-90}"
STOP_TIMEOUT="${SKEWLESS_STOP_TIMEOUT:-30}"
KAFKA_HEAP="${SKEWLESS_KAFKA_HEAP:--Xms128m -Xmx512m}"
HOST=127.0.0.1

# Kafka >= 4.2 moved to log4j 2.25.x; 4.0/4.1 ship against 2.24.3.
case "$KAFKA_VERSION" in
  3.*|4.0.*|4.1.*) LOG4J_VERSION="${SKEWLESS_LOG4J_VERSION:-2.24.3}" ;;
  *)               LOG4J_VERSION="${SKEWLESS_LOG4J_VERSION:-2.25.3}" ;;
esac
KAFKA_MAJOR="${KAFKA_VERSION%%.*}"

KAFKA_LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
KAFKA_HOME="$SERVICES_DIR/kafka"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_LOG="$KAFKA_HOME/kafka.log"
KAFKA_PID="$KAFKA_HOME/kafka.pid"
KAFKA_PROPS="$KAFKA_HOME/server.properties"
REDIS_HOME="$SERVICES_DIR/redis"
REDIS_DATA="$REDIS_HOME/data"
REDIS_LOG="$REDIS_HOME/redis.log"
REDIS_PID="$REDIS_HOME/redis.pid"
CLUSTER_PORT="${SKEWLESS_REDIS_CLUSTER_PORT:-7001}"
CLUSTER_NODE_TIMEOUT="${SKEWLESS_REDIS_CLUSTER_NODE_TIMEOUT:-2000}"
CLUSTER_HOME="$SERVICES_DIR/redis-cluster"
VENV_PY="${SKEWLESS_SERVICES_PYTHON:-$REPO_ROOT/.venv/bin/python}"

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers
# pid from a pid file if that process is alive and is the expected program.
live_pid() {  # $1 pidfile, $2 pattern expected in /proc/PID/cmdline
  local pidfile=$1 pattern=$2 pid
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
  printf '%s' "$pid"
}
kafka_pid() { live_pid "$KAFKA_PID" 'kafka.Kafka'; }
redis_pid() { live_pid "$REDIS_PID" 'redis-server'; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

stop_pid() {  # $1 name, $2 pid, $3 pidfile
  local name=$1 pid=$2 pidfile=$3 waited=0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if (( waited >= STOP_TIMEOUT * 2 )); then
      say "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.5; waited=$((waited + 1))
  done
  rm -f "$pidfile"
}

# ---------------------------------------------------------------- redis
ensure_redis_installed() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    return
  fi
  say "installing redis-server from Debian packages (apt-get)"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  # Keep the package's init script from starting a system redis on 6379: there is no
  # systemd here, and we run our own instance on our own port. policy-rc.d exit 101 =
  # "action forbidden" (Debian policy); only added if none exists, removed afterwards.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [[ ! -e $policy ]]; then
    $sudo sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy"
    added_policy=1
  fi
  local rc=0 aptlog
  mkdir -p "$SERVICES_DIR"; aptlog="$SERVICES_DIR/apt-redis.log"
  { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >"$aptlog" 2>&1 || rc=$?
  if (( added_policy )); then $sudo rm -f "$policy"; fi
  (( rc == 0 )) || die "apt-get install redis-server failed (exit $rc); see $aptlog"
  # Belt and braces: if a packaged instance was started anyway, stop it.
  if [[ -s /run/redis/redis-server.pid ]] && kill -0 "$(cat /run/redis/redis-server.pid)" 2>/dev/null; then
    say "stopping the Debian-started system redis (we run our own)"
    $sudo /etc/init.d/redis-server stop >/dev/null 2>&1 || true
  fi
  command -v redis-server >/dev/null || die "redis-server still missing after apt-get install"
}

redis_ready() { [[ $(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

start_redis() {
  local pid
  if pid=$(redis_pid); then
    say "redis already running (pid $pid, $HOST:$REDIS_PORT)"
    return
  fi
  ensure_redis_installed
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is already in use by another process (not ours); set SKEWLESS_REDIS_PORT"
  mkdir -p "$REDIS_DATA"
  rm -f "$REDIS_PID"
  say "starting redis on $HOST:$REDIS_PORT (AOF on, data $REDIS_DATA)"
  redis-server --bind "$HOST" --port "$REDIS_PORT" --daemonize yes \
    --dir "$REDIS_DATA" --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" \
    --appendonly yes --appendfsync everysec --save "" >/dev/null 9>&- \
    || die "redis-server failed to start; see $REDIS_LOG"
}

wait_redis() {
  local deadline=$((SECONDS + TIMEOUT))
  until redis_ready; do
    (( SECONDS < deadline )) || die "redis did not answer PING on $HOST:$REDIS_PORT within ${TIMEOUT}s; see $REDIS_LOG"
    sleep 0.2
  done
  local pid=""
  for _ in $(seq 50); do pid=$(redis_pid) && break; sleep 0.1; done
  [[ -n $pid ]] || die "redis answers on $HOST:$REDIS_PORT but pid file $REDIS_PID is missing"
  say "redis ready (pid $pid, $HOST:$REDIS_PORT)"
}

stop_redis() {
  local pid
  if pid=$(redis_pid); then
    say "stopping redis (pid $pid)"
    stop_pid redis "$pid" "$REDIS_PID"
  else
    say "redis not running"
    rm -f "$REDIS_PID"
  fi
}

# ---------------------------------------------------------------- kafka
ensure_java() {
  command -v java >/dev/null || die "java not found: Kafka $KAFKA_VERSION needs a JDK/JRE 17+ (apt-get install openjdk-17-jre-headless)"
  local v
  v=$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')
  [[ ${v%%.*} -ge 17 ]] 2>/dev/null || die "java $v found; Kafka $KAFKA_VERSION needs 17+"
}

fetch_kafka() {
  if [[ -f $KAFKA_LIBS/.complete ]]; then
    return
  fi
  command -v mvn >/dev/null || die "mvn not found: needed once to fetch the Kafka jars (apt-get install maven)"
  say "fetching Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS (first run only)"
  local t0=$SECONDS tmp="$KAFKA_LIBS.partial"
  rm -rf "$tmp"; mkdir -p "$tmp" "$CACHE_DIR"
  local mvnlog="$CACHE_DIR/kafka-$KAFKA_VERSION.fetch.log"
  if ! mvn -q -B -Dstyle.color=never -f "$SCRIPT_DIR/kafka/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" \
        -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$LOG4J_VERSION" >"$mvnlog" 2>&1; then
    rm -rf "$tmp"
    tail -n 20 "$mvnlog" >&2 || true
    die "maven could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION; see $mvnlog"
  fi
  ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"; }
  touch "$tmp/.complete"
  rm -rf "$KAFKA_LIBS"; mv "$tmp" "$KAFKA_LIBS"
  say "fetched $(find "$KAFKA_LIBS" -name "*.jar" | wc -l) jars in $((SECONDS - t0))s"
}

render_kafka_props() {
  local tpl extra=""
  tpl=$(<"$SCRIPT_DIR/kafka/server.properties.template")
  if (( KAFKA_MAJOR >= 4 )); then
    # Share groups (KIP-932) exist from 4.0; their state topic also needs RF 1 here.
    extra=$'share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1'
  fi
  tpl=${tpl//@KAFKA_PORT@/$KAFKA_PORT}
  tpl=${tpl//@CONTROLLER_PORT@/$CONTROLLER_PORT}
  tpl=${tpl//@DATA_DIR@/$KAFKA_DATA}
  tpl=${tpl//@EXTRA@/$extra}
  printf '%s\n' "$tpl" >"$KAFKA_PROPS"
}

kafka_java() {  # run a Kafka main class with the cached classpath
  java -Xms64m -Xmx256m -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.xml" \
    -Dlog4j2.level=WARN -cp "$KAFKA_LIBS/*" "$@"
}

format_kafka() {
  if [[ -f $KAFKA_DATA/meta.properties ]]; then
    local formatted
    formatted=$(cat "$KAFKA_HOME/formatted-version" 2>/dev/null || echo "?")
    if [[ $formatted != "$KAFKA_VERSION" ]]; then
      die "Kafka data in $KAFKA_DATA was formatted by Kafka $formatted, not $KAFKA_VERSION; run '$0 down kafka --purge' first"
    fi
    return
  fi
  mkdir -p "$KAFKA_DATA"
  local cid
  if [[ -s $KAFKA_HOME/cluster.id ]]; then
    cid=$(<"$KAFKA_HOME/cluster.id")
  else
    cid=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
    [[ $cid =~ ^[A-Za-z0-9_-]{22}$ ]] || die "could not generate a Kafka cluster id (got '$cid')"
    printf '%s\n' "$cid" >"$KAFKA_HOME/cluster.id"
  fi
  say "formatting Kafka storage (cluster id $cid)"
  kafka_java kafka.tools.StorageTool format --config "$KAFKA_PROPS" \
    --cluster-id "$cid" --ignore-formatted >"$KAFKA_HOME/format.log" 2>&1 \
    || die "kafka storage format failed; see $KAFKA_HOME/format.log"
  printf '%s\n' "$KAFKA_VERSION" >"$KAFKA_HOME/formatted-version"
}

start_kafka() {
  local pid
  if pid=$(kafka_pid); then
    say "kafka already running (pid $pid, $HOST:$KAFKA_PORT)"
    return
  fi
  ensure_java
  fetch_kafka
  for p in "$KAFKA_PORT" "$CONTROLLER_PORT"; do
    port_open "$p" && die "port $p is already in use by another process (not ours); set SKEWLESS_KAFKA_PORT / SKEWLESS_KAFKA_CONTROLLER_PORT"
  done
  mkdir -p "$KAFKA_HOME"
  rm -f "$KAFKA_PID"
  render_kafka_props
  format_kafka
  [[ -f $KAFKA_LOG ]] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"
  say "starting kafka $KAFKA_VERSION on $HOST:$KAFKA_PORT (controller :$CONTROLLER_PORT, data $KAFKA_DATA)"
  # setsid: own session, so the broker outlives this shell and its process group.
  # shellcheck disable=SC2086
  setsid nohup java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.xml" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS" </dev/null >"$KAFKA_LOG" 2>&1 9>&- &
  echo $! >"$KAFKA_PID"
}

# A real round trip: metadata from the broker via confluent-kafka when the venv has it.
kafka_answers() {
  if [[ -x $VENV_PY ]] && "$VENV_PY" -c 'import confluent_kafka' 2>/dev/null; then
    "$VENV_PY" - "$HOST:$KAFKA_PORT" 2>/dev/null <<'PY'
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=3)
sys.exit(0 if md.brokers else 1)
PY
  else
    grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null && port_open "$KAFKA_PORT"
  fi
}

wait_kafka() {
  local deadline=$((SECONDS + TIMEOUT)) pid
  while :; do
    # Only a dead pid means failure: right after the fork the cmdline is not java yet.
    pid=$(<"$KAFKA_PID")
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$KAFKA_LOG" >&2 2>/dev/null || true
      die "kafka exited during start-up; see $KAFKA_LOG"
    fi
    if port_open "$KAFKA_PORT" && kafka_answers; then break; fi
    (( SECONDS < deadline )) || die "kafka did not answer on $HOST:$KAFKA_PORT within ${TIMEOUT}s (pid $pid still alive); see $KAFKA_LOG"
    sleep 0.5
  done
  say "kafka ready (pid $pid, $HOST:$KAFKA_PORT)"
}

stop_kafka() {
  local pid
  if pid=$(kafka_pid); then
    say "stopping kafka (pid $pid)"
    stop_pid kafka "$pid" "$KAFKA_PID"
  else
    say "kafka not running"
    rm -f "$KAFKA_PID"
  fi
}

# ---------------------------------------------------------------- redis cluster
cluster_ports() { local i; for i in 0 1 2 3 4 5; do printf '%s ' $((CLUSTER_PORT + i)); done; }
cluster_node_pid() { live_pid "$CLUSTER_HOME/$1/redis.pid" 'redis-server'; }
cluster_state() {  # $1 port: the node's cluster_state (ok, fail) or nothing
  redis-cli -h "$HOST" -p "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_state://p'
}
cluster_known() {  # $1 port: how many nodes the node knows
  redis-cli -h "$HOST" -p "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_known_nodes://p'
}

start_redis_cluster() {
  local port pid dir
  ensure_redis_installed
  for port in $(cluster_ports); do
    dir="$CLUSTER_HOME/$port"
    if pid=$(cluster_node_pid "$port"); then
      say "redis-cluster node $HOST:$port already running (pid $pid)"
      continue
    fi
    if port_open "$port"; then
      die "port $port is taken by another program (set SKEWLESS_REDIS_CLUSTER_PORT)"
    fi
    mkdir -p "$dir"
    redis-server --bind "$HOST" --port "$port" --daemonize yes \
      --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
      --cluster-node-timeout "$CLUSTER_NODE_TIMEOUT" \
      --dir "$dir" --appendonly yes --save "" \
      --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" 9>&- \
      || die "redis-server failed to start on $port; see $dir/redis.log"
  done
  local deadline=$((SECONDS + TIMEOUT))
  for port in $(cluster_ports); do
    until [[ $(redis-cli -h "$HOST" -p "$port" ping 2>/dev/null) == PONG ]]; do
      (( SECONDS < deadline )) || die "cluster node $port did not answer PING within ${TIMEOUT}s"
      sleep 0.2
    done
  done
  local first=$CLUSTER_PORT
  if [[ $(cluster_known "$first") != 6 ]]; then
    say "creating the cluster (3 masters, 3 replicas) on $(cluster_ports)"
    local addrs=() p
    for p in $(cluster_ports); do addrs+=("$HOST:$p"); done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
      >"$CLUSTER_HOME/create.log" 2>&1 \
      || die "redis-cli --cluster create failed; see $CLUSTER_HOME/create.log"
  fi
  for port in $(cluster_ports); do
    until [[ $(cluster_state "$port") == ok ]]; do
      (( SECONDS < deadline )) || die "cluster node $port is not cluster_state:ok within ${TIMEOUT}s"
      sleep 0.2
    done
  done
  say "redis-cluster ready ($HOST:$CLUSTER_PORT..$((CLUSTER_PORT + 5)), node timeout ${CLUSTER_NODE_TIMEOUT}ms)"
}

stop_redis_cluster() {
  local port pid
  for port in $(cluster_ports); do
    if pid=$(cluster_node_pid "$port"); then
      say "stopping redis-cluster node $port (pid $pid)"
      stop_pid "redis-cluster $port" "$pid" "$CLUSTER_HOME/$port/redis.pid"
    fi
  done
}

status_redis_cluster() {
  local port pid rc=0 state
  for port in $(cluster_ports); do
    if pid=$(cluster_node_pid "$port"); then
      state=$(cluster_state "$port")
      say "redis-cluster  node $HOST:$port  pid $pid  cluster_state:${state:-?}"
      [[ $state == ok ]] || rc=1
    else
      say "redis-cluster  node $HOST:$port  stopped"; rc=1
    fi
  done
  return $rc
}

# ---------------------------------------------------------------- commands
usage() {
  awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"
  exit 2
}

TARGET=all PURGE=0 CMD="${1:-}"
[[ $# -gt 0 ]] && shift
for a in "$@"; do
  case "$a" in
    kafka|redis|redis-cluster) TARGET=$a ;;
    cluster) TARGET=redis-cluster ;;
    --purge) PURGE=1 ;;
    -h|--help) usage ;;
    *) die "unknown argument '$a' (expected kafka, redis, redis-cluster or --purge)" ;;
  esac
done
want() { [[ $TARGET == all && $1 != redis-cluster ]] || [[ $TARGET == "$1" ]]; }

cmd_up() {
  local t0=$SECONDS
  mkdir -p "$SERVICES_DIR"
  # A service that is already running is left alone, but still waited for: it may be
  # a broker another `up` started a moment ago that does not answer yet.
  want redis && ensure_redis_installed
  want kafka && start_kafka      # the broker boots in the background...
  want redis && start_redis      # ...while redis starts
  want redis && wait_redis
  want redis-cluster && start_redis_cluster
  want kafka && wait_kafka
  say "up in $((SECONDS - t0))s"
}

cmd_down() {
  want kafka && stop_kafka
  want redis && stop_redis
  want redis-cluster && stop_redis_cluster
  if (( PURGE )); then
    if want redis-cluster; then
      say "purging redis-cluster data and cluster config ($CLUSTER_HOME)"
      rm -rf "$CLUSTER_HOME"
    fi
    if want kafka; then
      say "purging kafka data ($KAFKA_DATA)"
      rm -rf "$KAFKA_DATA" "$KAFKA_HOME/cluster.id" "$KAFKA_HOME/formatted-version"
    fi
    if want redis; then
      say "purging redis data ($REDIS_DATA)"
      rm -rf "$REDIS_DATA"
    fi
  fi
  return 0
}

cmd_status() {
  local rc=0 pid
  if want kafka; then
    if pid=$(kafka_pid); then
      if port_open "$KAFKA_PORT"; then
        say "kafka  running  pid $pid  $HOST:$KAFKA_PORT (controller $HOST:$CONTROLLER_PORT)  version $KAFKA_VERSION  log $KAFKA_LOG"
      else
        say "kafka  starting (process up, port closed)  pid $pid  $HOST:$KAFKA_PORT  log $KAFKA_LOG"; rc=1
      fi
    else
      say "kafka  stopped  $HOST:$KAFKA_PORT"; rc=1
    fi
  fi
  if want redis; then
    if pid=$(redis_pid); then
      if redis_ready; then
        say "redis  running  pid $pid  $HOST:$REDIS_PORT  log $REDIS_LOG"
      else
        say "redis  not answering PING  pid $pid  $HOST:$REDIS_PORT  log $REDIS_LOG"; rc=1
      fi
    else
      say "redis  stopped  $HOST:$REDIS_PORT"; rc=1
    fi
  fi
  if want redis-cluster; then status_redis_cluster || rc=1; fi
  return $rc
}

cmd_env() {
  if [[ $TARGET == redis-cluster ]]; then
    local nodes="" p
    for p in $(cluster_ports); do nodes+="${nodes:+,}$HOST:$p"; done
    printf 'export SKEWLESS_REDIS_CLUSTER=true\n'
    printf 'export SKEWLESS_REDIS_NODES=%s\n' "$nodes"
    printf 'export SKEWLESS_REDIS_URL=redis://%s:%s/0\n' "$HOST" "$CLUSTER_PORT"
    return 0
  fi
  printf 'export SKEWLESS_KAFKA_BOOTSTRAP=%s:%s\n' "$HOST" "$KAFKA_PORT"
  printf 'export SKEWLESS_REDIS_URL=redis://%s:%s/0\n' "$HOST" "$REDIS_PORT"
}

# One up/down at a time per services dir (two concurrent `up`s would start two brokers).
lock() {
  mkdir -p "$SERVICES_DIR"
  # fd 9 is closed for the daemons started below, or they would hold the lock forever.
  exec 9>"$SERVICES_DIR/.lock"
  flock -w "$TIMEOUT" 9 || die "another services.sh up/down holds $SERVICES_DIR/.lock"
}

case "$CMD" in
  up) lock; cmd_up ;;
  down) lock; cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) usage ;;
esac
