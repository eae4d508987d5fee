#!/usr/bin/env bash
# Checks the CPU's intrinsic kernels (src/cluster/simd.rs) give the portable kernel's results bit
# for bit: natively (AVX2, AVX-512 where the CPU has them) and for aarch64 (NEON) under qemu, so
# the ARM path is checked on every CI run without an ARM machine.
#
# Usage: tools/check_simd.sh   (from anywhere)
#
# Installs what it needs when missing: the Rust target aarch64-unknown-linux-gnu (rustup), and
# Debian's gcc-aarch64-linux-gnu (the linker and C library) and qemu-user-static. Only
# tools/simd-check is cross-built (simd.rs and std), which takes seconds; the engine itself
# builds for aarch64 with the same toolchain (see BENCHMARKS.md, "aarch64").
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=tools/lib.sh
source tools/lib.sh

TARGET=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$TARGET"; then
  echo "== installing the Rust target $TARGET"
  rustup target add "$TARGET"
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  echo "== installing gcc-aarch64-linux-gnu and qemu-user-static (Debian)"
  apt_install tools/check_simd.sh gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
fi

cd tools/simd-check
echo "== simd-check: rustfmt and clippy (its own crate, outside the main build), both targets"
cargo fmt --check
cargo clippy --quiet --release -- -D warnings
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  cargo clippy --quiet --release --target "$TARGET" -- -D warnings
echo "== simd-check on this CPU"
cargo run --quiet --release
echo "== simd-check for $TARGET under qemu"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu" \
  cargo run --quiet --release --target "$TARGET"
