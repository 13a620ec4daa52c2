#!/usr/bin/env bash
# The CUDA path, on a machine with a GPU (CI has none; run this by hand there):
#   1. the tests that build and train policies (device "auto" → cuda),
#   2. the tiny model in bfloat16 end to end: prepare → sft → rollout → align → recommend → evaluate,
#   3. throughput: the sampler benchmark and one alignment step of a larger model built from config.
# Usage: bash benchmarks/device_check.sh [OUT_DIR]      (each part's output also lands in OUT_DIR)
set -uo pipefail
export BLADE_TRACKING=off PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-results/device}}
W=$(mktemp -d)
mkdir -p "$OUT_DIR"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"

echo "== 1. tests on the GPU"
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_sft.py tests/test_align.py tests/test_objective.py \
  tests/test_policy_pretrained.py 2>&1 | tail -4 | tee "$OUT_DIR/tests.txt"

echo "== 2. tiny model, bfloat16, end to end"
(
  set -e
  $PY -m blade.cli prepare --spec '{"source": "synthetic"}' --out "$W/data"
  $PY -m blade.cli sft --data "$W/data" --out "$W/sft" --config-json '{"policy": {"dtype": "bfloat16"}, "sft": {"epochs": 3}}' | grep -E "^epoch|sft done"
  $PY -m blade.cli rollout --data "$W/data" --model "$W/sft/best" --out "$W/ref.parquet" --config-json '{"rollout": {"max_contexts": 3000}}' | tail -1
  $PY -m blade.cli align --data "$W/data" --sft "$W/sft" --rollouts "$W/ref.parquet" --out "$W/blade" \
    --config-json '{"align": {"steps": 150, "eval_every": 25}, "method": {"objective": "blade"}}' | grep -E "^step|align done"
  $PY -m blade.cli recommend --model "$W/blade/best" --data "$W/data" --split test --k 20 --out "$W/recs.jsonl"
  $PY -m blade.cli evaluate --recs "$W/recs.jsonl" --data "$W/data" --split test --out "$W/eval"
  cp "$W/blade/diagnostics.parquet" "$OUT_DIR/bf16_diagnostics.parquet"
) 2>&1 | grep -v "Loading weights\|Writing model" | tee "$OUT_DIR/bf16_end_to_end.txt"

echo "== 3. throughput"
timeout 200 $PY benchmarks/bench_sampler.py --device cuda --dtype bfloat16 2>&1 | tee "$OUT_DIR/bench_sampler.txt" | tail -40
$PY benchmarks/bench_align_step.py --device cuda --dtype float32 --estimator dp,static 2>&1 | tee "$OUT_DIR/bench_align_tiny.txt"
$PY benchmarks/bench_align_step.py --device cuda --dtype bfloat16 --hidden 1024 --layers 8 --heads 16 --kv-heads 4 \
  --n-items 10000 --n-users 20000 --contexts 64 --estimator dp 2>&1 | tee "$OUT_DIR/bench_align_large.txt"
rm -rf "$W"
