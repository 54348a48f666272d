"""Which validation grid tells a bundle's epochs apart?

ct_mr_gradient_fusion_reg and fcn_multires_selfsup_reg synthesise their training and validation
pairs at twice the working resolution. Up to GF 0.8.0 and fcn 0.5.0 the train configs scored each
epoch by the label Dice on the validation pairs (seeds 1,000,000 on) after resampling the labels
to the working grid; since GF 0.8.1 and fcn 0.5.1 they score them at the synthesis grid, where
they keep their full resolution, as the benchmark's do (``regplugins.transforms.Warpd`` with
``reference_key``). This prints both Dice for no registration and for each given checkpoint;
compare them with the checkpoints' benchmark Dice.

    python experiments/validation_grid_probe.py --pairs 8 run17/model.pt "run24b/model_epoch=7.pt"
    python experiments/validation_grid_probe.py --bundle fcn_multires_selfsup_reg --pairs 16 \\
        bundles/fcn_multires_selfsup_reg/models/model.pt
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from regplugins.demo import mean_dice
from regplugins.transforms import Warpd

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def dice_on_both_grids(ddf: torch.Tensor, pair: dict) -> tuple[float, float]:
    """The label Dice of a working-grid field at the working grid (the train configs' before) and at the synthesis grid."""
    on_working = Warpd("moving_label", mode="nearest")({**pair, "pred": ddf})["moving_label_warped"]
    to_fine_grid = Warpd("moving_label_full", mode="nearest", reference_key="fixed_label_full", ddf_grid_key="image")
    on_fine = to_fine_grid({**pair, "pred": ddf})["moving_label_full_warped"]
    return (mean_dice(on_working[0].numpy(), pair["fixed_label"][0].numpy()), mean_dice(on_fine[0].numpy(), pair["fixed_label_full"][0].numpy()))


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("checkpoints", nargs="*", help="the bundle's weights, e.g. the train config's model_epoch=N.pt")
    cli.add_argument("--bundle", default="ct_mr_gradient_fusion_reg", help="a bundle whose train config validates at the synthesis grid")
    cli.add_argument("--pairs", type=int, default=8, help="validation pairs (the train config's num_val_pairs)")
    args = cli.parse_args()
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / args.bundle / "configs" / "train.json"))
    parser.update({"device": "cpu", "num_val_pairs": args.pairs, "num_workers": 0})
    dataset = parser.get_parsed_content("validate#dataset")  # seeds 1,000,000 on
    pairs = [dataset[i] for i in range(len(dataset))]
    network = parser.get_parsed_content("network_def").eval()

    def report(name, field):
        working, fine = np.mean([dice_on_both_grids(field(pair["image"][None].as_tensor())[0], pair) for pair in pairs], axis=0)
        print(f"{name}: Dice at the working grid {working:.4f}, at the synthesis grid {fine:.4f}", flush=True)

    report("no registration", lambda image: torch.zeros(1, 3, *image.shape[2:]))
    for checkpoint in args.checkpoints:
        network.load_state_dict(torch.load(checkpoint, map_location="cpu"))
        with torch.no_grad():
            report(checkpoint, network)


if __name__ == "__main__":
    main()
