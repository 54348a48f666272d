#!/usr/bin/env bash
# Trains the MIND and intra-similarity bundles' variants side by side on one GPU, at 2 mm, until a
# common deadline, as their shipped weights were trained (see each model card). Each bundle's pairs
# are synthesised once into a shared on-disk cache with every CPU core; the gradient-fusion runs
# start while the dual-similarity pairs are still being made. Each run keeps its best-validation
# weights (model.pt) and its last epoch's weights (model_epoch=N.pt), under $OUT/<bundle>/<run>.
#   OUT=gpu_runs SECONDS_IN_ALL=560 bash docs/experiments/train_on_gpu.sh
# Synthesis takes about 2.8 minutes per bundle on 16 cores at these settings. A gradient-fusion
# checkpoint is 2.7 MB and each run keeps two: archive each bundle's runs on its own, without the
# logs' per-iteration lines, where returned files are limited in size (16 MiB for the device tool).
set -uo pipefail
OUT=${OUT:-gpu_runs}
DEADLINE=$(( $(date +%s) + ${SECONDS_IN_ALL:-560} ))
GRID=${GRID:-'"working_shape": [96, 96, 96], "working_spacing": 2.0'}
GF_PAIRS=${GF_PAIRS:-192}
DS_PAIRS=${DS_PAIRS:-150}
CACHE=${CACHE:-/tmp/pair_cache}
PY=${PY:-python3}

train() {  # bundle, run name, then that run's own overrides; stops at the deadline
    local bundle=$1 name=$2 left=$(( DEADLINE - $(date +%s) )); shift 2
    (( left > 60 )) || { echo "$bundle $name: no time left"; return 1; }
    OMP_NUM_THREADS=2 timeout "$left" $PY -m monai.bundle run \
        --config_file "['bundles/$bundle/configs/train.json','docs/experiments/keep_last_epoch.json']" \
        --bundle_root "bundles/$bundle" --args_file "$OUT/$bundle/grid.json" \
        --cache_dir "$CACHE/$bundle" --val_interval 1 --train#trainer#max_epochs 1000 \
        --ckpt_dir "$OUT/$bundle/$name" "$@" >"$OUT/$bundle/$name.log" 2>&1
}

cache() {  # bundle, number of training pairs
    mkdir -p "$OUT/$1"
    echo "{$GRID, \"num_train_pairs\": $2}" >"$OUT/$1/grid.json"
    $PY docs/experiments/fill_pair_cache.py "bundles/$1" "$CACHE/$1" "$(cat "$OUT/$1/grid.json")"
}

GF=ct_mr_gradient_fusion_reg
DS=ct_mr_dual_similarity_reg
cache $GF "$GF_PAIRS" || exit 1
train $GF gated --fusion gated --learning_rate 1e-4 &
train $GF average --fusion average --learning_rate 1e-4 &
train $GF none --fusion none --learning_rate 1e-4 &
train $GF gated_lr3e-4 --fusion gated --learning_rate 3e-4 &
if (( DS_PAIRS > 0 )) && cache $DS "$DS_PAIRS"; then
    ds_common=(--momentum 0.9 --early_stop_patience 1000 --lr_halving_epochs 1000)  # as the 0.4.0 weights: no halving
    train $DS dual "${ds_common[@]}" &
    train $DS ct_only "${ds_common[@]}" --ct_weight 1 --mr_weight 0 &
    train $DS mr_only "${ds_common[@]}" --ct_weight 0 --mr_weight 1 &
fi
wait
grep -H -E "Key metric|Epoch\[[0-9]+\] Complete" "$OUT"/*/*.log | tail -n 40
