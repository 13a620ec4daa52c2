#!/usr/bin/env bash
# A small grid of SFT configurations (the sequential-recommender levers: dropout, weight decay,
# width, label smoothing, target construction, learning-rate schedule) on one dataset, run in
# parallel on one GPU, plus the mostpop, cooc and sasrec reference rows. Prints one table — valid
# NDCG@10 on the selection slice (what SFT selects on), test NDCG@10, best epoch, wall time — and
# writes it, with each run's log, under OUT_DIR. Selection reads valid only; test is read once per
# finished run, for the table.
#
# Usage: bash benchmarks/sft_sweep.sh [--quick] [--device cuda|cpu] [--data DIR] [--budget SECONDS] [OUT_DIR]
#   default: Video_Games (results/data/video_games; prepared from config/config.yaml if absent),
#            the full grid in parallel on cuda, every SFT run cut at --budget seconds (default 420;
#            a cut run reports its best epoch so far, marked "cut").
#   --quick: the synthetic default dataset, two configs, 1 epoch each, sasrec 1 epoch, on cpu
#            unless --device says otherwise: the smoke test of this script.
# On a GPU machine (nothing outside reachable): carry the prepared dataset, e.g.
#   here:  python -m blade.cli prepare --config config/config.yaml --dataset video_games --out results/data/video_games
#   there: bash benchmarks/sft_sweep.sh "$OUT"          (run with carry: ["results/data/video_games"])
set -uo pipefail
export BLADE_TRACKING=off PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
QUICK=0 DEVICE="" DATA="" BUDGET=420 OUT_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --device) DEVICE=$2; shift ;;
    --data) DATA=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    -*) echo "sft_sweep.sh: unknown option $1" >&2; exit 2 ;;
    *) OUT_DIR=$1 ;;
  esac
  shift
done
OUT_DIR=${OUT_DIR:-${OUT:-results/sft_sweep}}
mkdir -p "$OUT_DIR"
RUNS=$(mktemp -d)
started=$(date +%s)

if [ "$QUICK" = 1 ]; then
  DATASET=synthetic; DEVICE=${DEVICE:-cpu}; EPOCHS=1; THREADS=1
else
  DATASET=video_games; DEVICE=${DEVICE:-cuda}; EPOCHS=30; THREADS=1
fi
DATA=${DATA:-results/data/$DATASET}
if [ ! -f "$DATA/stats.json" ]; then
  echo "== preparing $DATASET into $DATA"
  $PY -m blade.cli prepare --config config/config.yaml --dataset "$DATASET" --out "$DATA" || exit 1
fi

# name|sft options|policy options (JSON object bodies); every run adds policy.device, sft.epochs,
# sft.patience and seed 0. "wd" = lr 1e-3 + weight decay 0.1, the regularised start measured on CPU
# (../shared/design/MEASUREMENTS.md); "t1" = target_len 1; "drop" = dropout; "ls" = label
# smoothing; "decay" = target_decay (later slots weigh less); "const" = min_lr_ratio 1 (constant
# lr after the warm-up, as SASRec trains); "wide" = hidden 128.
WD='"lr": 1e-3, "weight_decay": 0.1'
if [ "$QUICK" = 1 ]; then
  PATIENCE=4
  GRID=(
    'default||'
    "levers|$WD, \"dropout\": 0.2, \"label_smoothing\": 0.1, \"target_decay\": 0.5, \"min_lr_ratio\": 0.1|\"hidden\": 32"
  )
else
  PATIENCE=6  # the 1,000-row selection slice is noisy; regularised runs improve slowly
  GRID=(
    'default||'
    "wd|$WD|"
    "wd_t1|$WD, \"target_len\": 1|"
    "wd_drop2|$WD, \"dropout\": 0.2|"
    "wd_t1_drop2|$WD, \"target_len\": 1, \"dropout\": 0.2|"
    "wd_t1_drop2_ls|$WD, \"target_len\": 1, \"dropout\": 0.2, \"label_smoothing\": 0.1|"
    "wd_t1_drop3_const|$WD, \"target_len\": 1, \"dropout\": 0.3, \"min_lr_ratio\": 1.0|"
    "wd_decay3_drop3|$WD, \"target_decay\": 0.3, \"dropout\": 0.3|"
    "wd_t1_drop5|$WD, \"target_len\": 1, \"dropout\": 0.5|"
    "wide_wd_t1_drop3|$WD, \"target_len\": 1, \"dropout\": 0.3|\"hidden\": 128, \"intermediate\": 512"
  )
fi

echo "== $DATASET on $DEVICE: ${#GRID[@]} SFT configs in parallel, plus mostpop, cooc, sasrec"
for entry in "${GRID[@]}"; do
  IFS='|' read -r name opts popts <<< "$entry"
  cfg='{"policy": {"device": "'$DEVICE'"'${popts:+, $popts}'}, "sft": {"epochs": '$EPOCHS', "patience": '$PATIENCE${opts:+, $opts}'}}'
  mkdir -p "$RUNS/$name"
  echo "$cfg" > "$RUNS/$name/config.json"
  (
    t0=$(date +%s.%N)
    OMP_NUM_THREADS=$THREADS timeout --signal=TERM "$BUDGET" \
      $PY -m blade.cli sft --data "$DATA" --out "$RUNS/$name/run" --seed 0 --config-json "$cfg" > "$RUNS/$name/log.txt" 2>&1
    echo $? > "$RUNS/$name/rc"
    echo "$(date +%s.%N) $t0" | awk '{printf "%.0f\n", $1 - $2}' > "$RUNS/$name/wall"
  ) &
done

echo "== reference rows (fitted once, while the SFT runs train)"
SAS_EPOCHS=$([ "$QUICK" = 1 ] && echo 1 || echo 200)
OMP_NUM_THREADS=$THREADS $PY - "$DATA" "$DEVICE" "$SAS_EPOCHS" "$RUNS/references.json" > "$RUNS/references.log" 2>&1 <<'EOF' &
import json, sys, time
from blade.data import load_prepared
from blade.metrics import ndcg_at_k
from blade.reference import CoOccurrence, most_popular
from blade.eval.sasrec import SASRecConfig, SASRecRecommender
from blade.eval.selection import selection_slice
from blade.eval.config import EvalConfig

data, device, epochs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
items, splits, _ = load_prepared(data)
ids, train = items["item_id"].to_numpy(), splits["train"]
frames = {"valid": selection_slice(splits["valid"], EvalConfig().selection_rows), "test": splits["test"]}
rows = {}

def row(name, fit, recommend, started):
    extra = fit()
    rows[name] = {s: float(ndcg_at_k(recommend(f), f["target"].to_numpy(), 10).mean()) for s, f in frames.items()}
    rows[name].update(extra or {}, wall=round(time.perf_counter() - started))
    print(name, rows[name], flush=True)

t = time.perf_counter()
row("mostpop", lambda: None, lambda f: most_popular(train, ids, len(f), 10), t)
t = time.perf_counter()
cooc = CoOccurrence(train, ids)
row("cooc", lambda: None, lambda f: cooc.recommend(f["history"].tolist(), 10), t)
t = time.perf_counter()
sas = SASRecRecommender(ids, SASRecConfig(epochs=epochs, device=device), seed=0)
row("sasrec", lambda: {"best_epoch": sas.fit(train, splits["valid"])["best_epoch"]},
    lambda f: sas.recommend(f["history"].tolist(), 10), t)
with open(out, "w") as fh:
    json.dump(rows, fh)
EOF
wait

echo "== test NDCG@10 of each SFT run's selected policy"
OMP_NUM_THREADS=4 $PY - "$DATA" "$DEVICE" "$RUNS" "$DATASET" "$(( $(date +%s) - started ))" > "$OUT_DIR/sft_sweep.md" <<'EOF'
import json, sys
from pathlib import Path
from blade.data import load_prepared
from blade.eval.config import EvalConfig
from blade.model.policy import Policy
from blade.eval.selection import valid_metrics

data, device, runs, dataset, seconds = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]
_, splits, _ = load_prepared(data)
ev = EvalConfig()
print(f"SFT sweep on {dataset} ({device}), NDCG@10: valid = the {ev.selection_rows}-row selection slice, "
      f"test = all {len(splits['test'])} rows; wall {seconds} s in all\n")
print("| row | valid NDCG@10 | test NDCG@10 | best epoch / run | wall s | sft options |")
print("| --- | --- | --- | --- | --- | --- |")
for run in sorted(p for p in runs.iterdir() if p.is_dir()):
    cfg = json.loads((run / "config.json").read_text())
    opts = {k: v for k, v in cfg["sft"].items() if k not in ("epochs", "patience")}
    opts.update({f"policy.{k}": v for k, v in cfg["policy"].items() if k != "device"})
    wall = (run / "wall").read_text().strip() if (run / "wall").is_file() else "?"
    summary, state = run / "run" / "summary.json", run / "run" / "checkpoint" / "trainer_state.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        valid, epochs = s["valid/ndcg@10"], f"{s['best_epoch']} / {s['epochs_run']}"
    elif state.is_file():  # cut at the budget: its best epoch so far
        s = json.loads(state.read_text())
        valid, epochs = s["best"], f"{s['best_epoch']} / {s['epoch']} (cut)"
    else:
        print(f"| {run.name} | failed | — | — | {wall} | {json.dumps(opts)} |")
        continue
    try:  # a run cut while saving its best policy leaves it unreadable
        test = valid_metrics(Policy.load(run / "run" / "best", device), splits["test"], 10, [10], ev.batch_size)["ndcg@10"]
        test = f"{test:.4f}"
    except Exception as exc:  # noqa: BLE001 — one broken run must not lose the table
        test = f"failed ({type(exc).__name__})"
    print(f"| {run.name} | {valid:.4f} | {test} | {epochs} | {wall} | {json.dumps(opts)} |", flush=True)
refs = json.loads((runs / "references.json").read_text()) if (runs / "references.json").is_file() else {}
if not refs:
    print("| reference rows | failed: see references_log.txt | | | | |")
for name, r in refs.items():
    epoch = str(r.get("best_epoch", "—"))
    print(f"| {name} | {r['valid']:.4f} | {r['test']:.4f} | {epoch} | {r['wall']} | reference row |")
EOF
rc=$?
# $OUT returns at most 8 files: the table, the reference rows' log, and every SFT run's log in one
for run in "$RUNS"/*/; do
  echo "== $(basename "$run"): $(cat "$run/config.json")"
  grep -E "^epoch=|sft done|Error|error|Traceback" "$run/log.txt"
done > "$OUT_DIR/sft_logs.txt" 2>&1
cp "$RUNS/references.log" "$OUT_DIR/references_log.txt" 2>/dev/null
cat "$OUT_DIR/sft_sweep.md"
echo "total wall: $(( $(date +%s) - started )) s"
rm -rf "$RUNS"
exit $rc
