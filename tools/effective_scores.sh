#!/usr/bin/env bash
# Issue 21: old against new scores, at the 2.25-bit, 2.5-bit and W3A3 BitOPs budgets, retrained with
# paired seeds beside the uniform points (docs/benchmarks.md, "Scores that price each bit-width").
#
#   bash tools/effective_scores.sh policies   # sensitivity (fisher, measured, calibrated, adapted) and
#                                             # SSPS (score_calibration none / measured / adapted) policies
#   bash tools/effective_scores.sh retrain    # QAT of every policy and uniform point, SEEDS paired
#   bash tools/effective_scores.sh table      # held-out (or test) top-1 per policy and seed
#
# Every step is skipped when its result exists, so the script resumes where it stopped.
# Environment (defaults in brackets):
#   CONFIG   [mmdet_configs/cifar10_resnet20_ssps_holdout.py]  choices on the validation split of
#            the training set; mmdet_configs/cifar10_resnet20_ssps_folder.py for the final test report
#   DATA     [../shared/data/cifar10]  the CIFAR-10 JPEG folders
#   OUT      [work_dirs/effective_scores]
#   SEEDS    [0 1 2]   retraining seeds (paired: seed r of every policy sees the same data order)
#   SEARCH_SEEDS [0]   SSPS search seeds
#   BUDGETS  [2.25 2.5 W3A3]   2.25 / 2.5: a quarter / half of the way in BitOPs from uniform W2A2
#            to W3A3 (238919680 / 289054720 BitOPs for the CIFAR ResNet-20 with stem and classifier
#            pinned at W8A8); W3A3 as is
#   EPOCHS   [1]  search and retraining epochs (lr 0.01, cosine), as the standard benchmark
#   SSPS     [.venv/bin/ssps if present, else python -m ssps_nni.cli.main]
# mmengine runs on the GPU when one is visible (CUDA_VISIBLE_DEVICES= forces the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-mmdet_configs/cifar10_resnet20_ssps_holdout.py}
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-work_dirs/effective_scores}
SEEDS=${SEEDS:-0 1 2}
SEARCH_SEEDS=${SEARCH_SEEDS:-0}
BUDGETS=${BUDGETS:-2.25 2.5 W3A3}
EPOCHS=${EPOCHS:-1}
if [ -x .venv/bin/ssps ]; then SSPS=${SSPS:-.venv/bin/ssps}; else SSPS=${SSPS:-python -m ssps_nni.cli.main}; fi

data_opts="train_dataloader.dataset.data_root=$DATA val_dataloader.dataset.data_root=$DATA test_dataloader.dataset.data_root=$DATA"
run_opts="optim_wrapper.optimizer.lr=0.01 train_cfg.max_epochs=$EPOCHS train_cfg.val_interval=$((EPOCHS + 1)) param_scheduler.T_max=$EPOCHS default_hooks.checkpoint.max_keep_ckpts=1 default_hooks.logger.interval=50"

bitops() {  # budget name -> --budget value
  case $1 in
    2.25) echo bitops=238919680 ;;
    2.5) echo bitops=289054720 ;;
    *) echo "bitops=$1" ;;
  esac
}

policies() {
  mkdir -p "$OUT/policies"
  local budgets=()
  for b in $BUDGETS; do budgets+=("$(bitops "$b")"); done
  # sensitivity: one measurement (scores on 32 fit batches, loss increase on 4 held-out batches), one solve per budget and kind
  if [ ! -f "$OUT/sensitivity/sensitivity.json" ]; then
    $SSPS sensitivity mmdet_configs/cifar10_resnet20_ssps_folder.py --score-batches 32 --measure-batches 4 \
      --adapt-steps 100 --policies-at "${budgets[@]}" --out "$OUT/sensitivity" --cfg-options $data_opts
  fi
  for b in $BUDGETS; do
    for kind in fisher measured calibrated adapted; do
      cp -n "$OUT/sensitivity/policies/sensitivity_${kind}_$(bitops "$b" | tr '=' '_').json" \
        "$OUT/policies/sens_${kind}_$b.json"
    done
    for s in $SEARCH_SEEDS; do
      for cal in none measured adapted; do
        local dir="$OUT/search/ssps_${cal}_${b}_s$s"
        if [ ! -f "$dir/policy.json" ]; then
          $SSPS search "$CONFIG" --budget "$(bitops "$b")" --seed "$s" --work-dir "$dir" \
            --cfg-options $data_opts $run_opts custom_hooks.0.score_calibration=$cal
        fi
        cp -n "$dir/policy.json" "$OUT/policies/ssps_${cal}_${b}_s$s.json"
      done
    done
  done
}

retrain() {
  local runs=()
  for p in "$OUT"/policies/*.json; do runs+=("policy:$p"); done
  for u in W2A2 W2A3 W3A2 W3A3; do runs+=("uniform:$u"); done
  for r in $SEEDS; do
    for run in "${runs[@]}"; do
      local kind=${run%%:*} what=${run#*:}
      local name; name=$(basename "$what" .json)
      local dir="$OUT/retrain/${name}_r$r"
      [ -f "$dir/train_result.json" ] && continue
      $SSPS train "$CONFIG" --"$kind" "$what" --seed "$r" --work-dir "$dir" --cfg-options $data_opts $run_opts
    done
  done
}

table() {
  python - "$OUT" <<'EOF'
import json, sys
from collections import defaultdict
from pathlib import Path
rows = defaultdict(dict)
for path in sorted(Path(sys.argv[1]).glob('retrain/*/train_result.json')):
    name, seed = path.parent.name.rsplit('_r', 1)
    res = json.loads(path.read_text())
    top1 = next((v for k, v in res.get('metrics', {}).items() if 'top1' in k), None)
    if top1 is None:
        continue
    rows[name][int(seed)] = (top1, res['bitops']['value'])
print('| policy | GBitOPs | top-1 per seed | mean |')
print('|---|---|---|---|')
for name, seeds in rows.items():
    vals = [seeds[s][0] for s in sorted(seeds)]
    print(f'| {name} | {next(iter(seeds.values()))[1] / 1e9:.4f} | {", ".join(f"{v:.2f}" for v in vals)} | {sum(vals) / len(vals):.2f} |')
EOF
}

case ${1:-all} in
  policies) policies ;;
  retrain) retrain ;;
  table) table ;;
  all) policies; retrain; table ;;
  *) echo "usage: $0 [policies|retrain|table|all]" >&2; exit 2 ;;
esac
