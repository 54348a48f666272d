"""Which validation grid tells ct_mr_gradient_fusion_reg's epochs apart?

Up to 0.8.0 the train config scored each epoch by the label Dice on its validation pairs (seeds
1,000,000 on) after resampling the labels to the 3 mm working grid; since 0.8.1 it scores them at
the 1.5 mm synthesis grid, where they keep their full resolution, as the benchmark's do
(``regplugins.transforms.Warpd`` with ``reference_key``). For each given checkpoint this prints
both Dice; compare them with the checkpoints' benchmark Dice.

    python docs/experiments/gradient_fusion_validation_grid_probe.py --pairs 8 run17/model.pt "run24b/model_epoch=7.pt"
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from regplugins.demo import mean_dice
from regplugins.transforms import Warpd

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "ct_mr_gradient_fusion_reg"


def validation_pairs(parser: ConfigParser, count: int) -> list[tuple[dict, dict]]:
    """Each validation pair as synthesised (1.5 mm) and as the network sees it (the working grid)."""
    synthesis = parser.get_parsed_content("validate#synthesis")
    to_working_grid = Compose(parser.get_parsed_content("pair_transforms"))
    pairs = []
    for seed in range(1_000_000, 1_000_000 + count):
        fine = synthesis({"seed": seed})
        pairs.append((fine, to_working_grid(dict(fine))))
    return pairs


def dice_on_both_grids(network, fine: dict, working: dict) -> tuple[float, float]:
    """The label Dice of the network's field at the working grid (the train config's up to 0.8.0) and at the synthesis grid."""
    with torch.no_grad():
        ddf = network(working["image"][None].as_tensor())[0]
    on_working = Warpd("moving_label", mode="nearest")({**working, "pred": ddf})["moving_label_warped"]
    to_fine_grid = Warpd("moving_label", mode="nearest", reference_key="fixed_label")
    on_fine = to_fine_grid({**fine, "image": working["image"], "pred": ddf})["moving_label_warped"]
    return (
        mean_dice(on_working[0].numpy(), working["fixed_label"][0].numpy()),
        mean_dice(on_fine[0].numpy(), fine["fixed_label"][0].numpy()),
    )


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("checkpoints", nargs="+", help="gated-fusion weights, e.g. the train config's model_epoch=N.pt")
    cli.add_argument("--pairs", type=int, default=8, help="validation pairs (the train config's num_val_pairs)")
    args = cli.parse_args()
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"device": "cpu"})
    network = parser.get_parsed_content("network_def").eval()
    pairs = validation_pairs(parser, args.pairs)
    for checkpoint in args.checkpoints:
        network.load_state_dict(torch.load(checkpoint, map_location="cpu"))
        working, fine = np.mean([dice_on_both_grids(network, *pair) for pair in pairs], axis=0)
        print(f"{checkpoint}: Dice at the working grid {working:.4f}, at the synthesis grid {fine:.4f}", flush=True)


if __name__ == "__main__":
    main()
