"""What FIRE's non-rigid field could add at a working grid: a free field on the network's feature grid
(a quarter of the working grid, as `NonRigidNetwork` outputs it), optimised on each pre-aligned validation
pair with MIND-SSC and the Laplacian smoothness of `FIRELoss`, scored by Dice as the train config does.

If even this per-pair optimum does not beat the pre-alignment at a grid, no training at that grid will;
where it does, the gap is what the network can learn. Validation pairs as `fire_validation_probe.py`.

    python experiments/fire_field_bound.py '{"working_size": 96, "working_spacing": 2.0, "cache_dir": "cache96"}'
"""

import json
import sys

import torch
from fire_validation_probe import parsed
from monai.metrics import DiceMetric
from monai.networks.blocks import Warp
from monai.networks.utils import one_hot

from regplugins.layers import normalized_to_voxel, resize_normalized, warp_normalized
from regplugins.losses import MINDLoss
from regplugins.losses.fire import smoothness

STEPS, LEARNING_RATE, SMOOTHNESS = 150, 2e-3, 0.1  # a step of 0.2 mm in normalised coordinates on the bench's heads


def optimised_field(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """The normalised displacement on the working grid, from a free field on the quarter grid."""
    shape = moving.shape[2:]
    field = torch.zeros(1, len(shape), *(s // 4 for s in shape), requires_grad=True)
    optimizer, similarity = torch.optim.Adam([field], lr=LEARNING_RATE), MINDLoss(len(shape))
    for _ in range(STEPS):
        flow = resize_normalized(field, shape)
        loss = similarity(warp_normalized(moving, flow), fixed) + SMOOTHNESS * smoothness(field).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return resize_normalized(field.detach(), shape)


def main(overrides: dict) -> None:
    parser = parsed(overrides)
    num_labels, warp = parser["num_labels"], Warp(mode="nearest", padding_mode="border")
    before, after = DiceMetric(include_background=False), DiceMetric(include_background=False)
    for pair in parser.get_parsed_content("validate#dataset"):
        image, fixed_label = pair["image"][None].float(), one_hot(pair["fixed_label"][None].long(), num_labels)
        flow = optimised_field(image[:, :1], image[:, 1:2])
        for metric, field in ((before, torch.zeros_like(flow)), (after, flow)):
            moved = warp(pair["moving_label"][None].float(), normalized_to_voxel(field))
            metric(one_hot(moved.long(), num_labels), fixed_label)
        print(f"pair: pre-alignment {float(before.aggregate()):.4f}, optimised field {float(after.aggregate()):.4f} (running means)", flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
