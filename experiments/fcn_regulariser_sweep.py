"""Which total-variation weight lets MIND find the anatomy on the FCN bundle's training pairs?

Optimises a free displacement field (100 Adam steps) for MIND + weight * regulariser on four
validation pairs of `fcn_multires_selfsup_reg`'s train config and prints the label Dice before and
after, for each regulariser weight. The bundle's `regularizer_weight` defaults rest on this
measurement (see its model card). About 10 minutes on 2 CPU cores:

    python experiments/fcn_regulariser_sweep.py
"""

from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.losses import DiffusionLoss
from monai.metrics import DiceMetric
from monai.networks import one_hot

from regplugins.layers import cached_warp
from regplugins.losses import MINDLoss, TotalVariationLoss

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "fcn_multires_selfsup_reg"
SETTINGS = [("total variation", 0.02), ("total variation", 0.05), ("total variation", 0.1), ("total variation", 0.2), ("diffusion", 1.0)]


def main(num_pairs: int = 4, iterations: int = 100) -> None:
    torch.set_num_threads(1)
    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "train.json"))
    config.update({"bundle_root": str(BUNDLE), "num_val_pairs": num_pairs, "num_workers": 0})
    num_labels = config.get_parsed_content("num_labels")
    dataset = config.get_parsed_content("validate#dataset")  # seeds 1,000,000 on
    pairs = [dataset[i] for i in range(num_pairs)]
    mind, warp, warp_labels = MINDLoss(), cached_warp(), cached_warp("nearest")
    regularizers = {"total variation": TotalVariationLoss(), "diffusion": DiffusionLoss()}
    for name, weight in SETTINGS:
        before, after = DiceMetric(include_background=False), DiceMetric(include_background=False)
        for pair in pairs:
            image = pair["image"][None].as_tensor()
            moving, fixed = image[:, :1], image[:, 1:]
            moving_label = pair["moving_label"][None].as_tensor()
            fixed_label = one_hot(pair["fixed_label"][None].as_tensor(), num_labels)
            field = torch.zeros(1, 3, *image.shape[2:], requires_grad=True)
            optimizer = torch.optim.Adam([field], lr=0.1)
            for _ in range(iterations):
                optimizer.zero_grad()
                (mind(warp(moving, field), fixed) + weight * regularizers[name](field)).backward()
                optimizer.step()
            before(one_hot(moving_label, num_labels), fixed_label)
            after(one_hot(warp_labels(moving_label, field.detach()), num_labels), fixed_label)
        print(f"{name} {weight}: Dice unregistered {before.aggregate().item():.4f}, optimised {after.aggregate().item():.4f}", flush=True)


if __name__ == "__main__":
    main()
