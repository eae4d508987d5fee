#!/usr/bin/env bash
# Runs segclust's GPU checks on a GPU machine that has no Rust toolchain, in the order that
# gets the most out of a short lease: the parity suite, the 20x bar (GPU vs CPU at 200k in one
# run), the 10 s bar (1M x 3072), the PCA against scikit-learn at 100k, then the big parity
# cases. Each step has its own time limit, so a slow step costs its limit and the rest still run.
#
# Usage: tools/gpu_check.sh DIR [STEP ...]
#   DIR holds prebuilt executables: `bash tools/gpu_bundle.sh` makes .gpu-bundle/ (release
#   builds of segclust and the gpu_parity test, stripped; small enough to carry to the host).
#   STEPs (default: all, in this order): parity compare big pca big-parity largest
#   (largest: the biggest N x 3072 the GPU takes whole, `bench --largest-that-fits`)
#   big-f32 (not in the default): the 1M bench again with the FP32 screen instead of the
#   tensor cores' (SEGCLUST_GPU_SCREEN=f32), to compare the two on one device.
#   big-lb5 (not in the default): the 1M bench with __launch_bounds__(128, 5) on the TF32
#   kernel (SEGCLUST_GPU_NVRTC_OPTIONS=-DLS_MIN_BLOCKS_TF32=5), to compare with `big`.
# Env: OUT (a folder; default /tmp/segclust-gpu-check): logs and the benches' JSON go there.
#      BENCH_DIM (default 3072), COMPARE_SIZES (default 200000), BIG_SIZES (default 1000000),
#      PCA_SIZES (default 100000), SEGCLUST_FIXTURES (default: this checkout's fixtures),
#      STEP_LIMIT_S (default 240: the most one step may take).
# Needs the NVIDIA driver (libcuda) and the CUDA 13 libraries libnvrtc and libcublas on the
# loader path; /usr/local/cuda/lib64, .../targets/x86_64-linux/lib and the nvidia-* Python
# wheels' lib folders are added if present.
# Exit status: non-zero when a step failed, or when the parity suite skipped (no usable GPU).
set -uo pipefail
DIR=${1:?usage: tools/gpu_check.sh DIR-with-prebuilt-executables [STEP ...]}
shift
STEPS=${*:-parity compare big pca big-parity largest}
OUT=${OUT:-/tmp/segclust-gpu-check}
mkdir -p "$OUT"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# The image's PyTorch brings libnvrtc and libcublas as wheels; use them when the toolkit's
# own are not on the loader path.
for d in $(python3 -c 'import nvidia, os; [print(os.path.join(p, q, "lib")) for p in nvidia.__path__ for q in ("cu13", "cuda_nvrtc", "cublas")]' 2>/dev/null); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
# The parity suite reads the scikit-learn fixtures; the executables were built elsewhere.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export SEGCLUST_FIXTURES=${SEGCLUST_FIXTURES:-$ROOT/tests/fixtures/hdbscan}
# The GPU module's debug lines time each stage (leaf tables, kNN, Boruvka, PCA's memory plan),
# the cluster module's the host's labels after the MST.
export SEGCLUST_LOG=${SEGCLUST_LOG:-info,segclust::gpu=debug,segclust::cluster=debug}
LIMIT=${STEP_LIMIT_S:-240}
DIM=${BENCH_DIM:-3072}
BIN="$DIR/segclust"
PARITY=""
for f in "$DIR"/gpu_parity*; do
    case $f in *.d) ;; *) [ -f "$f" ] && PARITY=$f && break ;; esac
done
status=0
summary=()

# step NAME COMMAND...: runs it under the step limit, logs to $OUT/NAME.log, records the result.
step() {
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$LIMIT" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ] && grep -q "GPU parity suite SKIPPED" "$OUT/$name.log"; then
        echo "!! $name SKIPPED: the GPU was not usable (see the reason above)" >&2
        rc=3
    fi
    local verdict=PASS
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="TIMEOUT after ${LIMIT}s"
    [ "$rc" -ne 0 ] && [ "$verdict" = PASS ] && verdict="FAIL (status $rc)"
    [ "$rc" -ne 0 ] && status=1
    summary+=("$(printf '%-11s %-22s %5ss' "$name" "$verdict" $((SECONDS - t0)))")
}

echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || echo "(nvidia-smi not available)"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
[ -x "$BIN" ] || { echo "no executable $BIN (run tools/gpu_bundle.sh on the build machine)" >&2; exit 2; }
if [ -z "$PARITY" ] || [ ! -x "$PARITY" ]; then echo "no executable $DIR/gpu_parity* found" >&2; exit 2; fi

for s in $STEPS; do
    case "$s" in
        parity) SEGCLUST_GPU_BIG=0 step parity "$PARITY" --test-threads=1 --nocapture ;;
        big-parity) SEGCLUST_GPU_BIG=1 step big-parity "$PARITY" --test-threads=1 --nocapture gpu_matches_cpu ;;
        # The 20x bar: GPU and CPU on the same input in the same run, and whether labels agree.
        compare) step compare "$BIN" bench --device gpu --compare-cpu --no-sklearn \
                     --sizes "${COMPARE_SIZES:-200000}" --dim "$DIM" --json "$OUT/compare.json" ;;
        # The 10 s bar: 1,000,000 x 3072 -> labels.
        big) step big "$BIN" bench --device gpu --no-sklearn \
                 --sizes "${BIG_SIZES:-1000000}" --dim "$DIM" --json "$OUT/big.json" ;;
        big-f32) SEGCLUST_GPU_SCREEN=f32 step big-f32 "$BIN" bench --device gpu --no-sklearn \
                     --sizes "${BIG_SIZES:-1000000}" --dim "$DIM" --json "$OUT/big-f32.json" ;;
        # The 1M bench with launch bounds on the TF32 kernel: 96 registers, 5 blocks an SM
        # instead of 120 and 4 (ptxas, tools/check_kernels.sh); kernels rebuilt by NVRTC here.
        big-lb5) SEGCLUST_GPU_NVRTC_OPTIONS=-DLS_MIN_BLOCKS_TF32=5 step big-lb5 "$BIN" bench \
                     --device gpu --no-sklearn --sizes "${BIG_SIZES:-1000000}" --dim "$DIM" \
                     --json "$OUT/big-lb5.json" ;;
        # The largest batch whose rows stay in GPU memory through the PCA (within 80% of the
        # host's memory): millions of rows on an 80 GB card.
        largest) step largest "$BIN" bench --device gpu --no-sklearn --largest-that-fits \
                     --dim "$DIM" --json "$OUT/largest.json" ;;
        # The GPU PCA against scikit-learn's on the same input (its HDBSCAN is too slow here).
        pca) step pca "$BIN" bench --device gpu --python python3 --sklearn-hdbscan-max-n 0 \
                 --sizes "${PCA_SIZES:-100000}" --dim "$DIM" --json "$OUT/pca.json" ;;
        *) echo "unknown step $s (parity compare big pca big-parity largest big-f32 big-lb5)" >&2; status=2 ;;
    esac
done

# Where each bench's GPU MST spent its time: the host's stages (split, lists) and the device's
# and host's shares, which tell whether a kernel or the host is what stands between a run and a bar.
for name in compare big big-f32 big-lb5 largest; do
    [ -f "$OUT/$name.log" ] || continue
    while IFS= read -r line; do
        summary+=("  $name: $line")
    done < <(grep -E "using GPU|kernels built with|largest batch that fits|start-up check|GPU MST: (rows split|candidate lists|core distances|spanning tree)|GPU kNN: |labels from the MST|PCA \(GPU" \
                 "$OUT/$name.log" | sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +[A-Z]+ +//')
done

echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1))"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
exit "$status"
