#!/usr/bin/env bash
# Starts a throw-away ClickHouse server on loopback for the tests, from Debian's
# `clickhouse-server` package (installed here if missing), with its config, data and logs in a
# temporary directory. Prints `export SEGCLUST_TEST_CLICKHOUSE=...` and
# `export SEGCLUST_CLICKHOUSE_DIR=...` lines for `eval`; `tools/clickhouse.sh stop DIR` stops it.
#
#   eval "$(bash tools/clickhouse.sh start)"
#   ...
#   bash tools/clickhouse.sh stop "$SEGCLUST_CLICKHOUSE_DIR"
#
# `start-current` does the same for a current ClickHouse engine: chDB (pinned below, installed
# from PyPI into .tools/chdb) behind tools/clickhouse_current.py's HTTP interface. It prints
# SEGCLUST_TEST_CLICKHOUSE_CURRENT, SEGCLUST_TEST_CLICKHOUSE_CURRENT_LOG (every statement it ran)
# and SEGCLUST_CLICKHOUSE_CURRENT_DIR; `stop` takes that directory too.
set -euo pipefail

# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
log() { echo "tools/clickhouse.sh: $*" >&2; }

start() {
  if ! command -v clickhouse-server >/dev/null 2>&1; then
    log "installing Debian's clickhouse-server"
    apt_install tools/clickhouse.sh clickhouse-server
  fi
  local dir port tcp
  dir="$(mktemp -d /tmp/segclust-clickhouse.XXXXXX)"
  # Free ports: ask the kernel for two, then hand them to the server.
  read -r port tcp < <(python3 - <<'EOF'
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
EOF
)
  mkdir -p "$dir/data" "$dir/tmp" "$dir/log"
  cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$port</http_port>
  <tcp_port>$tcp</tcp_port>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
EOF
  cat >"$dir/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>8000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
EOF
  # The server must not inherit this script's stdout (a pipe when called as `eval "$(...)"`).
  (cd "$dir" || exit 1
   nohup clickhouse-server --config-file="$dir/config.xml" </dev/null >"$dir/log/stdout.log" 2>&1 &
   echo $! >"$dir/pid")
  for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$port/ping" >/dev/null 2>&1; then
      log "ClickHouse $(curl -sf "http://127.0.0.1:$port/?query=SELECT%20version()") on 127.0.0.1:$port (files in $dir)"
      echo "export SEGCLUST_TEST_CLICKHOUSE=http://127.0.0.1:$port"
      echo "export SEGCLUST_CLICKHOUSE_DIR=$dir"
      return 0
    fi
    sleep 0.2
  done
  log "FAIL: ClickHouse did not answer on 127.0.0.1:$port within 20 s; its log:"
  tail -n 30 "$dir/log/stdout.log" "$dir/log/error.log" >&2 || true
  exit 1
}

# The current engine's version: ClickHouse 26.9 (chdb-core's version is ClickHouse's).
CHDB_VERSION=26.9.0

start_current() {
  local root venv dir
  root="$(cd "$(dirname "$0")/.." && pwd)"
  venv="$root/.tools/chdb"
  if ! "$venv/bin/python" -c "import chdb, sys; sys.exit(chdb.__version__ != '$CHDB_VERSION')" 2>/dev/null; then
    log "installing chdb-core==$CHDB_VERSION (a current ClickHouse engine) into $venv"
    if ! { python3 -m venv "$venv" >&2 &&
      "$venv/bin/pip" install -q --disable-pip-version-check "chdb-core==$CHDB_VERSION" >&2; }; then
      log "FAIL: cannot install chdb-core==$CHDB_VERSION from PyPI"
      exit 1
    fi
  fi
  dir="$(mktemp -d /tmp/segclust-clickhouse.XXXXXX)"
  (cd "$dir" || exit 1
   nohup "$venv/bin/python" -u "$root/tools/clickhouse_current.py" --port 0 --data "$dir/data" \
     --log "$dir/queries.log" </dev/null >"$dir/stdout.log" 2>&1 &
   echo $! >"$dir/pid")
  local port=""
  for _ in $(seq 300); do
    port="$(sed -n 's/^listening on \([0-9]*\).*/\1/p' "$dir/stdout.log" 2>/dev/null)"
    [ -n "$port" ] && break
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$port" ] || ! curl -sf "http://127.0.0.1:$port/ping" >/dev/null 2>&1; then
    log "FAIL: the current ClickHouse engine did not start within 30 s; its output:"
    tail -n 30 "$dir/stdout.log" >&2 || true
    exit 1
  fi
  log "$(head -n1 "$dir/stdout.log") (files in $dir)"
  echo "export SEGCLUST_TEST_CLICKHOUSE_CURRENT=http://127.0.0.1:$port"
  echo "export SEGCLUST_TEST_CLICKHOUSE_CURRENT_LOG=$dir/queries.log"
  echo "export SEGCLUST_CLICKHOUSE_CURRENT_DIR=$dir"
}

stop() {
  local dir="${1:?usage: tools/clickhouse.sh stop DIR}"
  case "$dir" in /tmp/segclust-clickhouse.*) ;; *) log "refusing to stop/remove $dir"; exit 1 ;; esac
  if [ -f "$dir/pid" ]; then
    local pid
    pid="$(cat "$dir/pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}

case "${1:-start}" in
  start) start ;;
  start-current) start_current ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: tools/clickhouse.sh start|start-current|stop DIR" >&2; exit 2 ;;
esac
