#!/usr/bin/env bash
# A private Redis Sentinel deployment for the reader libraries' failover
# tests: a primary, one replica and three Sentinels on loopback, under a
# directory of the caller's, on ports BASE to BASE+4 (primary BASE, replica
# BASE+1, Sentinels BASE+2..BASE+4). Each language's test takes its own
# sub-range of 26500-26599 so runs can overlap.
#
#   sentinel-topology.sh start BASE DIR   start it, wait until every Sentinel sees the replica
#                                         and the other Sentinels; print the Sentinels'
#                                         addresses (comma-separated) on stdout
#   sentinel-topology.sh failover BASE    SENTINEL FAILOVER, then wait until all three
#                                         Sentinels name the new primary and it answers
#                                         role master; print its port
#   sentinel-topology.sh primary BASE     the port the Sentinels name now
#   sentinel-topology.sh stop BASE DIR    stop what `start` started (also after a crash)
#
# The master name is cdc-readers. Exit status 3 (and a message) when
# neither redis-sentinel nor redis-server is installed: callers skip their
# test then. Every wait
# is bounded (CDC_SENTINEL_TIMEOUT seconds, default 30). Sentinels run as
# redis-sentinel, or as `redis-server --sentinel` (the same program) where
# only redis-server is installed, as on Debian without its redis-sentinel
# package.
set -euo pipefail

MASTER=cdc-readers
TIMEOUT=${CDC_SENTINEL_TIMEOUT:-30}

cmd=${1:?usage: sentinel-topology.sh start|failover|primary|stop BASE [DIR]}
base=${2:?BASE port}
primary_port=$base
replica_port=$((base + 1))
sentinel_ports=($((base + 2)) $((base + 3)) $((base + 4)))
# Kept outside DIR too, so a later start stops servers a crashed run left.
registry="${TMPDIR:-/tmp}/cdc-sentinel-topology-$base.pids"

say() { printf '[sentinel-topology %s] %s\n' "$base" "$*" >&2; }

cli() { # port args...
  local port=$1
  shift
  timeout 2 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null
}

# until_true DESCRIPTION command...: retries every 0.1 s for $TIMEOUT s.
until_true() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@"; do
    if ((SECONDS >= deadline)); then
      say "gave up after ${TIMEOUT}s waiting for $what"
      return 1
    fi
    sleep 0.1
  done
}

stop_registered() {
  [[ -f $registry ]] || return 0
  local pid
  while read -r pid; do
    # Only a process that is still a Redis server or Sentinel of ours.
    if [[ -n $pid ]] && grep -q redis "/proc/$pid/comm" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
    fi
  done <"$registry"
  while read -r pid; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done <"$registry"
  rm -f "$registry"
}

start_one() { # name port dir args...
  local name=$1 port=$2 dir=$3
  shift 3
  mkdir -p "$dir/$name"
  "$@" >"$dir/$name/out.log" 2>&1 &
  echo "$!" >>"$registry"
  until_true "$name on port $port" sh -c "timeout 2 redis-cli -h 127.0.0.1 -p $port ping 2>/dev/null | grep -q PONG" || {
    tail -n 20 "$dir/$name/out.log" >&2
    return 1
  }
}

sentinel_primary_port() { # sentinel port
  cli "$1" sentinel get-master-addr-by-name "$MASTER" | sed -n 2p
}

sentinel_ready() { # port: sees the replica and both other Sentinels
  local port=$1
  [[ $(cli "$port" sentinel master "$MASTER" | awk 'p {print; exit} $0 == "num-other-sentinels" {p = 1}') == 2 ]] &&
    [[ $(cli "$port" sentinel master "$MASTER" | awk 'p {print; exit} $0 == "num-slaves" {p = 1}') -ge 1 ]]
}

replica_synced() { cli "$replica_port" info replication | grep -q 'master_link_status:up'; }

all_name() { # port: every Sentinel names it, and it is a primary
  local port=$1 s
  for s in "${sentinel_ports[@]}"; do
    [[ $(sentinel_primary_port "$s") == "$port" ]] || return 1
  done
  cli "$port" role | head -n1 | grep -qx master
}

start() {
  local dir=${1:?DIR}
  local sentinel=(redis-sentinel)
  if ! command -v redis-sentinel >/dev/null; then
    if ! command -v redis-server >/dev/null; then
      say "redis-sentinel is not installed (Debian: apt-get install redis-server redis-sentinel)"
      exit 3
    fi
    sentinel=(redis-server)
  fi
  stop_registered
  mkdir -p "$dir"
  local server=(redis-server --bind 127.0.0.1 --save '' --appendonly no --daemonize no)
  start_one primary "$primary_port" "$dir" "${server[@]}" --port "$primary_port" --dir "$dir/primary"
  start_one replica "$replica_port" "$dir" "${server[@]}" --port "$replica_port" --dir "$dir/replica" \
    --replicaof 127.0.0.1 "$primary_port"
  until_true "the replica's link to the primary" replica_synced
  local n=0 port
  for port in "${sentinel_ports[@]}"; do
    n=$((n + 1))
    mkdir -p "$dir/sentinel-$n"
    # Sentinel rewrites its file; each has one of its own. Failure detection
    # in a second, so the tests' failovers finish in a few.
    cat >"$dir/sentinel-$n/sentinel.conf" <<EOF
bind 127.0.0.1
port $port
dir $dir/sentinel-$n
sentinel resolve-hostnames no
sentinel monitor $MASTER 127.0.0.1 $primary_port 2
sentinel down-after-milliseconds $MASTER 1000
sentinel failover-timeout $MASTER 5000
sentinel parallel-syncs $MASTER 1
EOF
    start_one "sentinel-$n" "$port" "$dir" "${sentinel[@]}" "$dir/sentinel-$n/sentinel.conf" --sentinel
  done
  for port in "${sentinel_ports[@]}"; do
    until_true "Sentinel $port to see the replica and the other Sentinels" sentinel_ready "$port"
  done
  local addresses=()
  for port in "${sentinel_ports[@]}"; do addresses+=("127.0.0.1:$port"); done
  (IFS=,; echo "${addresses[*]}")
}

failover() {
  local before after
  before=$(sentinel_primary_port "${sentinel_ports[0]}")
  [[ -n $before ]] || { say "no Sentinel names a primary"; return 1; }
  # A Sentinel refuses while another failover is in progress: retry.
  until_true "SENTINEL FAILOVER to be accepted" sh -c \
    "timeout 2 redis-cli -h 127.0.0.1 -p ${sentinel_ports[0]} sentinel failover $MASTER 2>/dev/null | grep -q OK"
  after=$primary_port
  [[ $before == "$primary_port" ]] && after=$replica_port
  until_true "every Sentinel to name port $after" all_name "$after"
  echo "$after"
}

case $cmd in
  start) start "${3:?DIR}" ;;
  failover) failover ;;
  primary) sentinel_primary_port "${sentinel_ports[0]}" ;;
  stop)
    stop_registered
    [[ -n ${3:-} ]] && rm -rf "${3:?}"
    ;;
  *)
    say "unknown command $cmd"
    exit 2
    ;;
esac
