#!/usr/bin/env bash
# Runs segclust's GPU checks on a GPU machine that has no Rust toolchain.
#
# Usage: tools/gpu_check.sh DIR
#   DIR holds prebuilt executables, made on the build machine with
#     cargo test --no-run --test gpu_parity      # prints the path target/debug/deps/gpu_parity-<hash>
#     cargo build                                 # target/debug/segclust
#   and copied as DIR/gpu_parity (any name starting with gpu_parity works) and DIR/segclust.
# Env: SEGCLUST_GPU_BIG=1 adds the 50k and 200k row MST parity cases (default on here; set 0 to
#      skip); BENCH_SIZES (default 100000,1000000), BENCH_DIM (default 3072); SEGCLUST_FIXTURES
#      (default: this checkout's tests/fixtures/hdbscan); COMPARE_SIZES (default 200000: GPU
#      vs CPU in the same run, `segclust bench --compare-cpu`).
# Needs the NVIDIA driver (libcuda) and the CUDA 13 runtime libraries libnvrtc and libcublas
# on the loader path; /usr/local/cuda/lib64 and .../targets/x86_64-linux/lib are added if present.
# Exit status: non-zero when the parity suite fails, or when it skipped (no usable GPU).
set -uo pipefail
DIR=${1:?usage: tools/gpu_check.sh DIR-with-prebuilt-executables}
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export SEGCLUST_GPU_BIG=${SEGCLUST_GPU_BIG:-1}
# The parity suite reads the scikit-learn fixtures; the executables were built elsewhere.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export SEGCLUST_FIXTURES=${SEGCLUST_FIXTURES:-$ROOT/tests/fixtures/hdbscan}
export RUST_LOG=${RUST_LOG:-info}
# The GPU module's debug lines time each stage (leaf tables, kNN, Boruvka, PCA's memory plan).
export SEGCLUST_LOG=${SEGCLUST_LOG:-info,segclust::gpu=debug}

echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || echo "(nvidia-smi not available)"

parity=$(ls "$DIR"/gpu_parity* 2>/dev/null | grep -v '\.d$' | head -n1)
[ -n "$parity" ] && [ -x "$parity" ] || { echo "no executable $DIR/gpu_parity* found" >&2; exit 2; }
echo "== parity suite: $parity"
log=$(mktemp)
"$parity" --test-threads=1 --nocapture 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if grep -q "GPU parity suite SKIPPED" "$log"; then
    echo "!! the parity suite SKIPPED: the GPU was not usable (see the reason above)" >&2
    status=3
fi
[ "$status" -eq 0 ] && echo "== parity: PASS" || echo "== parity: FAIL (status $status)"

bin="$DIR/segclust"
if [ -x "$bin" ] && "$bin" bench --help >/dev/null 2>&1; then
    sizes=${BENCH_SIZES:-100000,1000000}
    dim=${BENCH_DIM:-3072}
    echo "== segclust bench --device gpu --sizes $sizes --dim $dim"
    "$bin" bench --device gpu --sizes "$sizes" --dim "$dim" || echo "!! bench failed (status $?)" >&2
    # The 20x bar: GPU and CPU on the same input in the same run, and whether the labels agree.
    cmp=${COMPARE_SIZES:-200000}
    echo "== segclust bench --device gpu --compare-cpu --sizes $cmp --dim $dim --no-sklearn"
    "$bin" bench --device gpu --compare-cpu --sizes "$cmp" --dim "$dim" --no-sklearn \
        || echo "!! bench --compare-cpu failed (status $?)" >&2
else
    echo "== bench skipped: $bin missing or has no 'bench' subcommand"
fi
rm -f "$log"
exit "$status"
