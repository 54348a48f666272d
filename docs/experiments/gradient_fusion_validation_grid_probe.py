"""Which validation grid tells ct_mr_gradient_fusion_reg's epochs apart?

Up to 0.8.0 the train config scored each epoch by the label Dice on its validation pairs (seeds
1,000,000 on) after resampling the labels to the 3 mm working grid; since 0.8.1 it scores them at
the synthesis grid. For each given checkpoint this prints the first Dice beside the Dice of the
same fields taken to the synthesis grid (1.5 mm), where the
labels keep their full resolution, as the benchmark's do: the field is mapped there through
both grids' affines (``regplugins.layers.resample_ddf``) and the native moving labels are
sampled through it (nearest). Compare both columns with the checkpoints' benchmark Dice.

    python docs/experiments/gradient_fusion_validation_grid_probe.py --pairs 8 run17/model.pt "run24b/model_epoch=7.pt"
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from regplugins.demo import mean_dice
from regplugins.layers import cached_warp, resample_ddf, warp_physical

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
    """The label Dice of the network's field on the working grid (as the train config scores it) and on the synthesis grid."""
    image = working["image"]
    with torch.no_grad():
        ddf = network(image[None].as_tensor())
    on_working = cached_warp("nearest", "border")(working["moving_label"][None].float(), ddf)
    fixed_affine = torch.as_tensor(fine["fixed_label"].affine).double()
    field = resample_ddf(ddf.double(), torch.as_tensor(image.affine).double(), fixed_affine, fine["fixed_label"].shape[1:])
    moving = fine["moving_label"]
    on_fine = warp_physical(moving[None].as_tensor().float(), torch.as_tensor(moving.affine), field.float(), fixed_affine, mode="nearest")
    return (
        mean_dice(on_working[0, 0].numpy(), working["fixed_label"][0].numpy()),
        mean_dice(on_fine[0, 0].numpy(), fine["fixed_label"][0].numpy()),
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
