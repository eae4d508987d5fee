#!/usr/bin/env bash
# Fuzzes every input segclust reads from outside, with libFuzzer (cargo-fuzz).
#
# Usage: tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     (default: 300 s, every target)
#        targets: segments_jsonl segments_parquet npy llm_answer prompt config
#
# Each target checks the properties in fuzz/properties.rs: no panic, and no row lost (every
# line or row of a segments file comes back once, as a row or a rejected record). A failure
# leaves its input in fuzz/artifacts/TARGET/; minimize it (`cargo fuzz tmin TARGET FILE`),
# copy it into fuzz/regressions/TARGET/, and tests/fuzz_inputs.rs replays it in CI from then on.
#
# Installs cargo-fuzz if absent. cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets this
# machine's stable toolchain take them (no other toolchain is needed). The corpus grows in
# fuzz/corpus/TARGET (git-ignored); the committed seeds in fuzz/seeds/TARGET start it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-300}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(segments_jsonl segments_parquet npy llm_answer prompt config)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi
# The Parquet seeds are built by the stable test (as segclust and other writers write them).
# Before RUSTC_BOOTSTRAP is set: it would make cargo rebuild the test profile from scratch.
if [ ! -d fuzz/corpus/segments_parquet ]; then
    SEGCLUST_FUZZ_SEEDS_OUT=$PWD/fuzz/corpus/segments_parquet \
        cargo test --quiet --test fuzz_inputs segments_parquet
fi
export RUSTC_BOOTSTRAP=1
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    echo "== $t: ${SECS}s"
    if ! cargo fuzz run --release "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=4096 -print_final_stats=1 \
        "${dict[@]}"; then
        echo "== $t FAILED: see fuzz/artifacts/$t/"
        status=1
    fi
done
exit $status
