#!/usr/bin/env bash
# Checks every CUDA kernel in kernels/ compiles, with no GPU needed.
#
# Usage: tools/check_kernels.sh            (from anywhere; works in the repository root)
#
# 1. Installs NVIDIA's PyPI wheels, pinned to CUDA 13.0 (the GPU machines run driver 580 =
#    CUDA 13.0; newer PTX would be rejected there), into .tools/cuda (git-ignored) if absent.
# 2. nvcc --ptx -arch=sm_90 then ptxas -arch=sm_90 -v on each kernels/*.cu (registers, spills),
#    and the leaf search's PTX holds the tensor cores' TF32 mma.sync.
# 3. Compiles the same sources through NVRTC from Rust, exactly as Gpu::open does at run time
#    (tests/gpu_parity.rs::kernels_compile_with_nvrtc, enabled by SEGCLUST_NVRTC_LIB_DIR).
# Fails on the first error.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CUDA_DIR=$ROOT/.tools/cuda
BIN=$CUDA_DIR/nvidia/cu13/bin
LIB=$CUDA_DIR/nvidia/cu13/lib
INC=$CUDA_DIR/nvidia/cu13/include

if [ ! -x "$BIN/nvcc" ] || [ ! -x "$BIN/ptxas" ] || ! ls "$LIB"/libnvrtc.so* >/dev/null 2>&1; then
    echo "== installing the CUDA 13.0 compiler wheels into $CUDA_DIR"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$CUDA_DIR" \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85
fi
# Some wheels ship only versioned sonames; NVRTC is loaded as libnvrtc.so.
if [ ! -e "$LIB/libnvrtc.so" ]; then
    versioned=("$LIB"/libnvrtc.so.*)
    ln -sf "$(basename "${versioned[0]}")" "$LIB/libnvrtc.so"
fi

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
shopt -s nullglob
kernels=(kernels/*.cu)
[ ${#kernels[@]} -gt 0 ] || { echo "no kernels/*.cu found" >&2; exit 1; }
for cu in "${kernels[@]}"; do
    name=$(basename "$cu" .cu)
    echo "== nvcc --ptx $cu"
    "$BIN/nvcc" --ptx -arch=sm_90 -I "$INC" --pre-include kernels/tile.cuh -Werror all-warnings -o "$OUT/$name.ptx" "$cu"
    echo "== ptxas $name.ptx"
    "$BIN/ptxas" -arch=sm_90 -v -o "$OUT/$name.cubin" "$OUT/$name.ptx" 2>&1 | tee "$OUT/$name.log"
    if grep -E "bytes spill (stores|loads)" "$OUT/$name.log" | grep -vq " 0 bytes spill"; then
        echo "warning: $name spills registers (see above)"
    fi
done
# The launch-bounds knob (SEGCLUST_GPU_NVRTC_OPTIONS, a lease's `big-lb5` step): it must build,
# and ptxas shows what it costs in registers and spills.
echo "== ptxas leaf_search.ptx with -DLS_MIN_BLOCKS_TF32=5"
"$BIN/nvcc" --ptx -arch=sm_90 -I "$INC" --pre-include kernels/tile.cuh -Werror all-warnings \
    -DLS_MIN_BLOCKS_TF32=5 -o "$OUT/leaf_search_lb5.ptx" kernels/leaf_search.cu
"$BIN/ptxas" -arch=sm_90 -v -o "$OUT/leaf_search_lb5.cubin" "$OUT/leaf_search_lb5.ptx" 2>&1 |
    grep -A2 "Function properties for leaf_candidates_tf32"
# The leaf search's tensor-core screen must really be there for sm_90 (not the sm_75 trap).
grep -q "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" "$OUT/leaf_search.ptx" || {
    echo "kernels/leaf_search.cu: no TF32 mma.sync in the sm_90 PTX" >&2
    exit 1
}

echo "== NVRTC compile through Rust (the run-time path)"
SEGCLUST_NVRTC_LIB_DIR=$LIB LD_LIBRARY_PATH=$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
    cargo test --test gpu_parity kernels_compile_with_nvrtc -- --nocapture
echo "== all kernels compile"
