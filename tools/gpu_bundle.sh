#!/usr/bin/env bash
# Builds what tools/gpu_check.sh runs on a GPU host that has no Rust toolchain: release builds
# of `segclust` and of the GPU parity test, stripped, in .gpu-bundle/ (git-ignored; small
# enough to travel with a copy of the checkout). No GPU or CUDA toolkit is needed to build:
# cudarc loads the driver, NVRTC and cuBLAS at run time.
#
#   bash tools/gpu_bundle.sh            # then, on the GPU host, from the checkout's root:
#   OUT=... bash tools/gpu_check.sh .gpu-bundle [STEP ...]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.gpu-bundle
rm -rf "$dir"
mkdir -p "$dir"
cargo build --release --bin segclust
cp target/release/segclust "$dir/segclust"
# The test executable's name carries a hash; cargo reports it.
exe=$(cargo test --release --no-run --test gpu_parity --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu_parity":
        print(m["executable"])')
[ -n "$exe" ] || { echo "tools/gpu_bundle.sh: no gpu_parity executable was built" >&2; exit 1; }
cp "$exe" "$dir/gpu_parity"
strip "$dir/segclust" "$dir/gpu_parity"
du -sh "$dir"/*
echo "tools/gpu_bundle.sh: $(du -sh "$dir" | cut -f1) in $dir (a device run carries at most 64 MiB)"
