"""Does a trained network move the head, or only the air around it?

On the validation pairs of ct_mr_gradient_fusion_reg's train config (64^3 at 3 mm, CT-like
moving, T1/T2/PD-like fixed, labels and true field resampled alongside), prints per pair and per
network (``bundle:path``, the bundle's ``network_def`` loaded from ``path``): the field's mean
length in the head and outside it, its cosine with the true field in the head and the label
Dice; then, for each of ``--variance_floors``, MINDLoss (``--mind_descriptor``) of no field, of
the network's field (whole, and cut to the head or to the air around it), of the air alone
shifted by half a voxel along each axis and of the true field. A network whose field is longer
in the air than in the head, and whose MIND is below the true field's, has learnt to blur the
air's noise (docs/experiments/ct_mr_gradient_fusion_reg.md, "What the networks learnt instead").

    python experiments/air_field_probe.py --pairs 3 fcn_multires_selfsup_reg:bundles/fcn_multires_selfsup_reg/models/model.pt
"""

import argparse
from pathlib import Path

import torch
from dual_similarity_field_probe import air_around_head, cosine_with, label_dice, validation_pairs
from monai.bundle import ConfigParser
from monai.networks.blocks import Warp

import regplugins

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def load_network(checkpoint: str) -> torch.nn.Module:
    """``bundle:path``: the bundle's inference ``network_def`` with the weights at ``path``, in eval mode."""
    bundle, path = checkpoint.split(":", 1)
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(path, map_location="cpu"))
    return network.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="bundle:path of a trained network")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--mind_descriptor", default="mind_ssc", help="MINDLoss's descriptor (fcn_multires_selfsup_reg's)")
    parser.add_argument("--variance_floors", type=float, nargs="+", default=[0.001, 0.01])
    args = parser.parse_args()
    networks = {checkpoint: load_network(checkpoint) for checkpoint in args.checkpoints}
    losses = {floor: regplugins.losses.MINDLoss(descriptor=args.mind_descriptor, variance_floor=floor) for floor in args.variance_floors}
    warp = Warp()
    pairs = validation_pairs(args.pairs, 64, 3.0, BUNDLES / "ct_mr_gradient_fusion_reg", ["moving", "fixed"])
    for seed, pair in pairs:
        images, truth = pair["images"], pair["true_voxel_ddf"]
        head = pair["fixed_label"][0] > 0
        air = air_around_head(pair)
        print(f"pair {seed}: Dice with no field {label_dice(pair, torch.zeros_like(truth)):.4f}")
        for checkpoint, network in networks.items():
            with torch.no_grad():
                ddf = network(images)
            length = ddf.norm(dim=1)[0]
            print(
                f"  {checkpoint}: field {length[head].mean():.3f} voxels in the head, {length[~head].mean():.3f} outside,"
                f" cosine with the true field in the head {cosine_with(ddf, truth, head):.2f}, Dice {label_dice(pair, ddf):.4f}"
            )
            fields = {
                "no field": torch.zeros_like(truth),
                "network": ddf,
                "network in the head only": ddf * (1 - air),
                "network in the air only": ddf * air,
                "air shifted 0.5": 0.5 * air.expand_as(truth),
                "true field": truth,
            }
            for floor, loss in losses.items():
                with torch.no_grad():
                    values = {name: loss(warp(images[:, :1], field), images[:, 1:]).item() for name, field in fields.items()}
                print(f"    MIND, floor {floor}: " + ", ".join(f"{name} {value:.4f}" for name, value in values.items()))


if __name__ == "__main__":
    main()
