"""The rigid regressor's validation error per modality pair (docs/experiments/head_ct_mr_rigid_reg.md, "MR/MR pairs in training")

Builds the validation set of the rigid bundle's train.json with ``num_train_pairs`` set to
FIRST_SEED (so its heads start there, 72 heads, 2 moved copies each, dealt over the nine
modality pairs) and prints, per checkpoint and per modality pair, the RMSE of the six parameters
(degrees and mm together, as the train config's val_rmse) and the mean absolute angle and shift.

    python experiments/rigid_validation_by_modality.py 450 bundles/head_ct_mr_rigid_reg/models/model.pt [more.pt] [regression|ann]
"""

import sys
from pathlib import Path

import torch
from monai.bundle import ConfigParser

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "head_ct_mr_rigid_reg"
HEADS = ("regression", "ann")

first_seed, arguments = int(sys.argv[1]), sys.argv[2:]
heads = [a for a in arguments if a in HEADS] or list(HEADS)
parser = ConfigParser()
parser.read_config(str(BUNDLE / "configs" / "train.json"))
parser.update(
    {"bundle_root": str(BUNDLE), "device": "cpu", "num_workers": 0, "num_train_pairs": first_seed, "num_val_pairs": 72, "validation_augmentations": 2}
)
pairs = parser.get_parsed_content("modality_pairs")
parts = parser.get_parsed_content("validate#dataset").datasets  # one dataset per modality pair
for path in (a for a in arguments if a not in HEADS):
    for head in heads:
        parser["network_def"]["head"] = head
        network = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
        network.load_state_dict(torch.load(path, map_location="cpu"))
        network.eval()
        row = []
        for pair, part in zip(pairs, parts):
            items = [part[i] for i in range(len(part))]
            images, truth = torch.stack([torch.as_tensor(x["image"]) for x in items]), torch.stack([x["label"] for x in items])
            with torch.no_grad():
                error = network(images) - truth
            rotation, translation = error[:, :3].abs().mean(), error[:, 3:].abs().mean()
            row.append(f"{'/'.join(pair)} {error.square().mean().sqrt():.3f} ({rotation:.2f} deg, {translation:.2f} mm)")
        print(path, head, " | ".join(row), flush=True)
