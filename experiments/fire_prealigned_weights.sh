#!/usr/bin/env bash
# FIRE weights for pre-aligned pairs on a CPU: the chain of the training record's section
# "Weights for pre-aligned pairs at 4 and at 2 mm, with the step in mm". From the shipped weights
# with their affine heads' last layer reset to the identity (so that the pre-aligned pairs start
# where the pre-alignment left them), on cached pre-aligned T2-, PD- and CT-like against T1-like
# pairs in both directions, MIND-SSC at 100 beside the paper's terms (synthesis terms at 0.1):
#   R48  48^3 and 4 mm, generated and MNI152 heads, labels at 100, two epochs
#   M3   64^3 and 3 mm, generated heads, two epochs
#   X96  96^3 and 2 mm from M3, generated and MNI152 heads, labels at 100, one epoch
# Weights as WORK/R48.pt, WORK/M3.pt, WORK/X96.pt; about 45 minutes on 2 cores with bfloat16 units.
#
#     bash experiments/fire_prealigned_weights.sh WORK
set -euo pipefail
work=$(realpath "${1:?usage: fire_prealigned_weights.sh WORK}")
mkdir -p "$work"
bundle=bundles/fire_inverse_consistent_reg

python experiments/fire_reset_affine_heads.py "$bundle/models/model.pt" "$work/reset.pt"

pairs='"modality_pairs": [["t2", "t1"], ["pd", "t1"], ["ct", "t1"]], "synthesis_args#random_direction": true, "num_val_pairs": 8, "synthesis_device": "cpu"'
both='"anatomies": ["generated", "mni152"]'
echo "{\"working_size\": 48, \"working_spacing\": 4.0, $pairs, $both, \"num_train_pairs\": 300}" >"$work/grid48.json"
echo "{\"working_size\": 64, \"working_spacing\": 3.0, $pairs, \"num_train_pairs\": 240}" >"$work/grid64.json"
echo "{\"working_size\": 96, \"working_spacing\": 2.0, $pairs, $both, \"num_train_pairs\": 240}" >"$work/grid96.json"
for size in 48 64 96; do
    python experiments/fill_pair_cache.py $bundle "$work/cache$size" "$(cat "$work/grid$size.json")"
done

train() {  # SIZE START NAME EPOCHS BATCH [more overrides]: the last epoch's weights as WORK/NAME.pt
    local size=$1 start=$2 name=$3 epochs=$4 batch=$5
    shift 5
    python -m monai.bundle run --config_file "['$bundle/configs/train.json','experiments/keep_last_epoch.json']" \
        --bundle_root $bundle --args_file "$work/grid$size.json" --cache_dir "$work/cache$size" \
        --device "\$torch.device('cpu')" --batch_size "$batch" --num_workers 0 \
        --loss_weights "{'synthesis_alignment': 0.1, 'synthesis_feature': 0.1}" --registration_similarity_weight 100.0 \
        --nonrigid_learning_rate 0.0005 --train#trainer#max_epochs "$epochs" --pretrained_weights "$start" \
        --ckpt_dir "$work/$name" "$@" >"$work/$name.log" 2>&1
    cp "$work/$name/model_epoch=$epochs.pt" "$work/$name.pt"
    grep "val_mean_dice:" "$work/$name.log"
}
train 48 "$work/reset.pt" R48 2 2 --label_weight 100.0
train 64 "$work/reset.pt" M3 2 2
train 96 "$work/M3.pt" X96 1 1 --label_weight 100.0
