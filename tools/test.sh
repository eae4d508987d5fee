#!/usr/bin/env bash
# README's test command: finds (or starts) the servers the tests talk to (PostgreSQL on
# 127.0.0.1:5432; a throw-away ClickHouse from Debian's clickhouse-server), then runs the whole
# suite with cargo-nextest. A missing server is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/lib.sh
source tools/lib.sh

export SEGCLUST_TEST_PG="${SEGCLUST_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_up; then
  echo "tools/test.sh: PostgreSQL is not answering on 127.0.0.1:5432; trying to start the local cluster"
  versions=(/etc/postgresql/*/)
  if command -v pg_ctlcluster >/dev/null && [ -d "${versions[0]}" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(basename "${versions[0]}")" main start || true
  fi
  for _ in $(seq 30); do pg_up && break; sleep 1; done
  pg_up || { echo "tools/test.sh: FAIL: PostgreSQL is required at 127.0.0.1:5432 (trust auth) for the store tests" >&2; exit 1; }
fi

# ClickHouse: a throw-away server on loopback for this run (installed from Debian if missing),
# unless the caller points at one already.
# The servers this script starts are stopped when it exits, however it exits.
started=()
stop_started() {
  local d
  for d in "${started[@]}"; do bash tools/clickhouse.sh stop "$d"; done
}
trap stop_started EXIT
if [ -z "${SEGCLUST_TEST_CLICKHOUSE:-}" ]; then
  eval "$(bash tools/clickhouse.sh start)" ||
    { echo "tools/test.sh: FAIL: could not start ClickHouse for the source tests" >&2; exit 1; }
  started+=("$SEGCLUST_CLICKHOUSE_DIR")
fi
curl -sf "$SEGCLUST_TEST_CLICKHOUSE/ping" >/dev/null ||
  { echo "tools/test.sh: FAIL: ClickHouse is not answering at $SEGCLUST_TEST_CLICKHOUSE" >&2; exit 1; }
export SEGCLUST_TEST_CLICKHOUSE

# A current ClickHouse engine (chdb-core from PyPI behind ClickHouse's HTTP interface), so the
# source's SQL is also checked on production's release and its exact table.
if [ -z "${SEGCLUST_TEST_CLICKHOUSE_CURRENT:-}" ]; then
  eval "$(bash tools/clickhouse.sh start-current)" ||
    { echo "tools/test.sh: FAIL: could not start the current ClickHouse engine for the source tests" >&2; exit 1; }
  started+=("$SEGCLUST_CLICKHOUSE_CURRENT_DIR")
fi
curl -sf "$SEGCLUST_TEST_CLICKHOUSE_CURRENT/ping" >/dev/null ||
  { echo "tools/test.sh: FAIL: the current ClickHouse engine is not answering at $SEGCLUST_TEST_CLICKHOUSE_CURRENT" >&2; exit 1; }
export SEGCLUST_TEST_CLICKHOUSE_CURRENT SEGCLUST_TEST_CLICKHOUSE_CURRENT_LOG

# The report's browser test (tests/report_browser.rs) needs headless Chromium.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "tools/test.sh: installing chromium (Debian package) for the report's browser test"
  apt_install tools/test.sh chromium
fi

# tests/gpu_emu.rs compiles the CUDA kernels for the CPU with the system C++ compiler (C++20).
if ! command -v "${CXX:-c++}" >/dev/null; then
  echo "tools/test.sh: installing g++ (Debian package) for the GPU kernel emulator tests"
  apt_install tools/test.sh g++
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "tools/test.sh: installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

cargo nextest run --no-fail-fast "$@"
