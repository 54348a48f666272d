#!/usr/bin/env bash
# Trains the MIND and intra-similarity bundles' variants side by side on one GPU, at 2 mm, until a
# common deadline; with BENCH_SECONDS > 0 it keeps that long at the end to time every bundle's
# inference on the GPU (`regplugins bench`; about 40 s per bundle on the device tool's H200). Each
# bundle's pairs are synthesised once into a shared on-disk cache, on the GPU (on every CPU core
# if that fails), both bundles' at once; each bundle's runs start when its pairs are ready.
# Each run keeps its best-validation weights (model.pt) and its last epoch's weights
# (model_epoch=N.pt) under $OUT/<bundle>/<run>; the dual-similarity run `dual_from_shipped`
# continues from the bundle's shipped weights, the others start from scratch.
#   OUT=gpu_runs SECONDS_IN_ALL=560 bash experiments/train_on_gpu.sh
# GF_PAIRS=0 or DS_PAIRS=0 leaves one bundle out, giving the other the whole GPU. The gradient-fusion
# runs validate on GF_VAL_PAIRS pairs (16), at the synthesis grid since its 0.8.1: 8 told its epochs
# apart less well than its 16 selection pairs (its training record).
# FIRE_SECONDS > 0 also trains fire_inverse_consistent_reg in 3D at FIRE_GRID, in the three stages
# of its training record, docs/experiments/fire_inverse_consistent_reg.md (synthesis alone on aligned pairs, then the affine sub-networks alone, then
# all three optimisers; the affine stage without the inverse-consistency term; by default 40, 30
# and 30 % of FIRE_SECONDS, FIRE_SPLIT="40 60" gives the affine stage the rest and skips the
# joint one), each stage from the last one's weights. Its pairs, aligned for the synthesis stage and
# misaligned for the others, are synthesised once on every CPU core into the on-disk cache first
# (1.5 s per pre-aligned pair at 64^3 on one core; on the fly, loader workers starved its record's run 12):
#   GF_PAIRS=0 DS_PAIRS=0 FIRE_SECONDS=540 OUT=gpu_runs SECONDS_IN_ALL=560 bash experiments/train_on_gpu.sh
# FIRE_START=weights starts the first stage from those weights, keeping what matches, so a FIRE_GRID
# with another affine head ("network_def#affine_head") starts that head fresh on a trained
# synthesis; FIRE_SPLIT="0 60" skips the synthesis stage, FIRE_SPLIT="0 0" both first stages (the joint
# stage then starts from FIRE_START). FIRE_JOINT_RATES="5e-5 2e-4" runs one joint stage per
# non-rigid learning rate side by side (joint_5e-5, joint_2e-4), each with half the loader workers.
# Run FIRE alone: beside the other bundles' runs it gets a share of the CPU cores and the GPU. Its train
# config runs the steps in bfloat16 on a GPU that has it (mixed_precision; 3.7x faster at 96^3 on a CPU
# with bfloat16 units, FIRE's training record, "Mixed precision"); runs before 0.16.0 were in float32.
# The device tool's image has PyTorch but not monai, nibabel, pytorch-ignite, isal or fire (with
# termcolor), nor nilearn, which a FIRE_GRID with MNI152 subjects (`"anatomies": ["generated", "mni152"]`)
# needs and the script checks before any work: experiments/device_wheels.sh downloads their wheels
# into .whl (17 MB), which the call carries and installs first (FIRE's training record, "On one H200
# at 64^3 and 3 mm").
# Returned files are limited in size (16 MiB each for the device tool): the script packs the best
# and the last weights of the gradient-fusion runs apart (2.7 MB each), and each FIRE network in
# its own archive, without the logs' per-iteration lines.
set -uo pipefail
OUT=${OUT:-gpu_runs}
START=$(date +%s)
BENCH_SECONDS=${BENCH_SECONDS:-0}
DEADLINE=$(( START + ${SECONDS_IN_ALL:-560} - BENCH_SECONDS ))
GRID=${GRID:-'"working_shape": [96, 96, 96], "working_spacing": 2.0'}
GF_PAIRS=${GF_PAIRS:-192}
DS_PAIRS=${DS_PAIRS:-150}
GF_VAL_PAIRS=${GF_VAL_PAIRS:-16}
DS_VAL_PAIRS=${DS_VAL_PAIRS:-8}
BENCH_ARGS=${BENCH_ARGS:---device cuda:0 --n 4 --kind ct_t1}
FIRE_SECONDS=${FIRE_SECONDS:-0}
FIRE_GRID=${FIRE_GRID:-'"working_size": 64, "working_spacing": 3.0, "network_def#channels": [16, 32, 64], "network_def#transform_channels": 32'}
FIRE_PAIRS=${FIRE_PAIRS:-1000}
FIRE_START=${FIRE_START:-}
read -r FIRE_SYNTHESIS_PERCENT FIRE_AFFINE_PERCENT <<<"${FIRE_SPLIT:-40 30}"
FIRE_JOINT_RATES=${FIRE_JOINT_RATES:-}
FIRE_EXTRA_WEIGHTS=""  # loss weights of one stage beside the feature and alignment terms' 0.1
FIRE_WORKERS=${FIRE_WORKERS:-12}
FIRE_ALIGNED='"rotation_deg": 0, "translation_mm": 0, "scaling": 0, "deformation_mm": 0'
CACHE=${CACHE:-/tmp/pair_cache}
PY=${PY:-python3}
if (( FIRE_SECONDS > 0 )) && [[ $FIRE_GRID == *mni152* ]]; then
    $PY -c "import nilearn.datasets, scipy.ndimage" 2>/dev/null || { echo "error: FIRE_GRID: MNI152 subjects need nilearn and scipy"; exit 1; }
fi

train() {  # bundle, run name, then that run's own overrides; stops at the deadline
    local bundle=$1 name=$2 left=$(( DEADLINE - $(date +%s) )); shift 2
    local configs="'bundles/$bundle/configs/train.json','experiments/keep_last_epoch.json'"
    (( left > 60 )) || { echo "$bundle $name: no time left"; return 1; }
    OMP_NUM_THREADS=2 timeout "$left" $PY -m monai.bundle run --config_file "[$configs]" \
        --bundle_root "bundles/$bundle" --args_file "$OUT/$bundle/grid.json" \
        --cache_dir "$CACHE/$bundle" --val_interval 1 --train#trainer#max_epochs 1000 \
        --ckpt_dir "$OUT/$bundle/$name" "$@" >"$OUT/$bundle/$name.log" 2>&1
}

cache() {  # bundle, number of training pairs, number of validation pairs
    local settings="{$GRID, \"num_train_pairs\": $2, \"num_val_pairs\": $3"
    mkdir -p "$OUT/$1"
    echo "$settings}" >"$OUT/$1/grid.json"
    $PY experiments/fill_pair_cache.py "bundles/$1" "$CACHE/$1" "$settings}" ||
        $PY experiments/fill_pair_cache.py "bundles/$1" "$CACHE/$1" "$settings, \"synthesis_device\": \"cpu\"}"
}

pack() {  # bundle, archive name, files to keep (globs under each run, or run/glob); weights are saved back on the CPU
    local bundle=$1 archive=$2; shift 2
    (cd "$OUT/$bundle" && for log in *.log; do grep -v -E "Iter: [0-9]+/" "$log" >"${log%.log}.summary"; done
     weights=$(for pattern in "$@"; do ls -d */$pattern $pattern 2>/dev/null; done)
     $PY -c 'import sys, torch; [torch.save(torch.load(f, map_location="cpu"), f) for f in sys.argv[1:]]' $weights
     tar -czf "$OUT/$archive.tar.gz" *.json *.summary $weights)
}

fire_cache() {  # pair setting (aligned, misaligned), then its data overrides; on every CPU core
    mkdir -p "$OUT/$FIRE"
    echo "{$FIRE_GRID, \"num_train_pairs\": $FIRE_PAIRS, \"synthesis_device\": \"cpu\"$2}" >"$OUT/$FIRE/$1.json"
    # on the CPU alone: a worker forked after CUDA started fails in its first optimiser step (the pre-alignment)
    CUDA_VISIBLE_DEVICES= $PY experiments/fill_pair_cache.py "bundles/$FIRE" "$CACHE/$FIRE/$1" "$(<"$OUT/$FIRE/$1.json")"
}

fire_stage() {  # stage name, seconds, weights to start from ("" for none), pair setting, then the stage's own overrides
    local name=$1 seconds=$2 start=$3 pairs=$4; shift 4
    (( seconds > 60 )) || { echo "$FIRE $name: no time left"; return 1; }
    OMP_NUM_THREADS=2 timeout "$seconds" $PY -m monai.bundle run \
        --config_file "['bundles/$FIRE/configs/train.json','experiments/keep_last_epoch.json']" \
        --bundle_root "bundles/$FIRE" --args_file "$OUT/$FIRE/$pairs.json" --cache_dir "$CACHE/$FIRE/$pairs" \
        --batch_size 4 --num_workers "$FIRE_WORKERS" \
        --loss_weights "{'synthesis_feature': 0.1, 'synthesis_alignment': 0.1$FIRE_EXTRA_WEIGHTS}" --train#trainer#max_epochs 1000 \
        --pretrained_weights "$start" --ckpt_dir "$OUT/$FIRE/$name" "$@" >"$OUT/$FIRE/$name.log" 2>&1
}

last_epoch() { ls "$OUT/$FIRE/$1"/model_epoch=*.pt 2>/dev/null | head -n 1; }

fire_stages() {  # the staged schedule of FIRE's training record (runs 8-10): the first two stages at 1e-3, the last at the paper's rates
    local start=$FIRE_START
    (( FIRE_SYNTHESIS_PERCENT > 0 )) && fire_cache aligned ", $FIRE_ALIGNED"
    fire_cache misaligned "" & local misaligned=$!
    if (( FIRE_SYNTHESIS_PERCENT > 0 )); then
        fire_stage synthesis $(( FIRE_SECONDS * FIRE_SYNTHESIS_PERCENT / 100 - ($(date +%s) - START) )) "$start" aligned \
            --synthesis_learning_rate 0.001 --train#iteration_update#optimizers '$[@optimizers#2]' --train#handlers#0#strict False
        start=$(last_epoch synthesis)
    fi
    wait $misaligned
    # without the inverse-consistency term: with it the two affine heads settle on one affine for every pair (FIRE's training record, item 14)
    if (( FIRE_AFFINE_PERCENT > 0 )); then
        FIRE_EXTRA_WEIGHTS=", 'inverse_consistency': 0" fire_stage affine $(( FIRE_SECONDS * FIRE_AFFINE_PERCENT / 100 )) \
            "$start" misaligned --affine_learning_rate 0.001 --train#iteration_update#optimizers '$[@optimizers#0]' \
            --train#handlers#0#strict False
        start=$(last_epoch affine)
    fi
    if [[ -z $FIRE_JOINT_RATES ]]; then
        fire_stage joint $(( DEADLINE - $(date +%s) )) "$start" misaligned
        return
    fi
    FIRE_WORKERS=$(( FIRE_WORKERS / 2 ))
    for rate in $FIRE_JOINT_RATES; do
        fire_stage "joint_$rate" $(( DEADLINE - $(date +%s) )) "$start" misaligned --nonrigid_learning_rate "$rate" &
    done
    wait
}

GF=ct_mr_gradient_fusion_reg
DS=ct_mr_dual_similarity_reg
FIRE=fire_inverse_consistent_reg
(( FIRE_SECONDS > 0 )) && fire_stages &
(( GF_PAIRS > 0 )) && { cache $GF "$GF_PAIRS" "$GF_VAL_PAIRS" & gf_cache=$!; }
(( DS_PAIRS > 0 )) && { cache $DS "$DS_PAIRS" "$DS_VAL_PAIRS" & ds_cache=$!; }
if (( GF_PAIRS > 0 )) && wait $gf_cache; then
    # without it the networks learn to blur; with it they did not align either in CPU runs 8 and 9 (its training record)
    gf_common=(--mind_smoothing_sigma 1.0)
    train $GF gated "${gf_common[@]}" --fusion gated --learning_rate 1e-4 &
    train $GF average "${gf_common[@]}" --fusion average --learning_rate 1e-4 &
    train $GF none "${gf_common[@]}" --fusion none --learning_rate 1e-4 &
    train $GF gated_lr3e-4 "${gf_common[@]}" --fusion gated --learning_rate 3e-4 &
fi
if (( DS_PAIRS > 0 )) && wait $ds_cache; then
    ds_common=(--momentum 0.9 --early_stop_patience 1000 --lr_halving_epochs 1000)  # as the 0.4.0 weights: no halving
    train $DS dual "${ds_common[@]}" &
    train $DS ct_only "${ds_common[@]}" --ct_weight 1 --mr_weight 0 &
    train $DS mr_only "${ds_common[@]}" --ct_weight 0 --mr_weight 1 &
    train $DS dual_from_shipped "${ds_common[@]}" --pretrained_weights "bundles/$DS/models/model.pt" &
fi
wait
grep -H -E "Key metric|Epoch\[[0-9]+\] Complete" "$OUT"/*/*.log | tail -n 40
(( GF_PAIRS > 0 )) && pack $GF gradient_fusion_best "model.pt" && pack $GF gradient_fusion_last "model_epoch=*.pt"
(( DS_PAIRS > 0 )) && pack $DS dual_similarity "*.pt"
# one FIRE network at FIRE_GRID's default channels is 14.6 MB, so one per archive
(( FIRE_SECONDS > 0 )) && for run in $(cd "$OUT/$FIRE" && ls -d joint*/ affine/ 2>/dev/null); do
    run=${run%/}
    for weights in "$run/model.pt" "$run/model_epoch=*.pt"; do
        pack $FIRE "fire_${run}_$(basename "$weights" .pt | cut -d= -f1)" "$weights"
    done
done
rm -rf "$OUT/$GF" "$OUT/$DS" "$OUT/$FIRE"
ls -la "$OUT"

# inference time per pair on this GPU; weights do not change it, so untrained bundles are timed too
(( BENCH_SECONDS > 0 )) || exit 0
timeout $(( BENCH_SECONDS - 10 )) $PY -m regplugins bench --baselines none $BENCH_ARGS \
    --bundles "fcn_multires_selfsup_reg,$DS,$GF:ckpt_path=untrained,fire_inverse_consistent_reg:ckpt_path=untrained" \
    --out /tmp/bench_gpu >"$OUT/bench_gpu.log" 2>&1
cp /tmp/bench_gpu/results.md /tmp/bench_gpu/results.json "$OUT/" 2>/dev/null
tail -n 12 "$OUT/bench_gpu.log"
