"""Does FIRE's synthesis learn on the generator's pairs? A 2D probe of stage one of the staged schedule.

Trains only the synthesis networks (the third optimiser) of `fire_inverse_consistent_reg` on
aligned T1-like -> T2-like 2D pairs with the paper's losses (feature and alignment terms at 0.1,
as in run 4 of fire_inverse_consistent_reg.md, FIRE's training record), and after every epoch prints the RMS of the synthesis
F_A->B(G(x_A)) against x_B on the validation pairs, beside two references: the mean validation
target (a synthesis that ignores its input) and the best pixel-wise intensity mapping fitted on
each validation image itself (the most any intensity look-up could do). `--intensity_spread`
narrows the generator's per-pair tissue intensities (1: its default, 0: one protocol);
`--working_size` and `--working_spacing` set the grid (32 and 6 mm by default, the train config's before 0.4.0),
`--spatial_dims 3` makes it 3D, `--channels` and `--transform_channels` set the network's widths
(the train config's by default), and `--start_from` continues from a checkpoint (with `--epochs 0`
it only measures that checkpoint's synthesis). About 3 minutes on 2 CPU cores at the default grid:

    python experiments/fire_synthesis_probe.py --intensity_spread 1.0
    python experiments/fire_synthesis_probe.py --intensity_spread 0.1
"""

import argparse
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from regplugins.losses.fire import rms

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "fire_inverse_consistent_reg"


def mean_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return rms(a, b).mean().item()


def best_lookup_rms(source: torch.Tensor, target: torch.Tensor, bins: int = 64) -> float:
    """RMS of the conditional mean of ``target`` given ``source``'s intensity, per image: an intensity mapping's best."""
    errors = []
    for a, b in zip(source.flatten(1), target.flatten(1)):
        index = ((a + 1) / 2 * (bins - 1)).round().clamp(0, bins - 1).long()
        sums = torch.zeros(bins).index_add_(0, index, b)
        counts = torch.zeros(bins).index_add_(0, index, torch.ones_like(b))
        errors.append(((sums / counts.clamp(min=1))[index] - b).square().mean().sqrt().item())
    return sum(errors) / len(errors)


def main():
    options = argparse.ArgumentParser()
    options.add_argument("--intensity_spread", type=float, default=1.0)
    options.add_argument("--epochs", type=int, default=12)
    options.add_argument("--working_size", type=int, default=32)
    options.add_argument("--working_spacing", type=float, default=6.0)
    options.add_argument("--spatial_dims", type=int, default=2)
    options.add_argument("--batch_size", type=int, default=4)
    options.add_argument("--start_from", default="", help="a checkpoint of the network (default: a fresh one)")
    options.add_argument("--channels", type=int, nargs=3, default=[8, 16, 32], help="the synthesis networks' (the train config's)")
    options.add_argument("--transform_channels", type=int, default=16, help="the transformation networks' (the train config's)")
    args = options.parse_args()
    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "train.json"))
    config.update(
        {
            "bundle_root": str(BUNDLE),
            "device": "$torch.device('cpu')",
            "ckpt_dir": "/tmp/fire_synthesis_probe",
            "spatial_dims": args.spatial_dims,
            "working_size": args.working_size,
            "working_spacing": args.working_spacing,
            "network_def#channels": args.channels,
            "network_def#transform_channels": args.transform_channels,
            "batch_size": args.batch_size,
            "num_workers": 2,
            "num_train_pairs": 200,
            "num_val_pairs": 16,
            "modality_pairs": [["t1", "t2"]],
            "synthesis_args#random_direction": False,
            "synthesis_args#intensity_spread": args.intensity_spread,
            "rotation_deg": 0,
            "translation_mm": 0,
            "scaling": 0,
            "deformation_mm": 0,
            "synthesis_learning_rate": 0.001,
            "train#iteration_update#optimizers": "$[@optimizers#2]",
            "loss_weights": {"synthesis_feature": 0.1, "synthesis_alignment": 0.1},
            "train#trainer#max_epochs": args.epochs,
        }
    )
    trainer, network = config.get_parsed_content("train#trainer"), config.get_parsed_content("network")
    if args.start_from:
        network.load_state_dict(torch.load(args.start_from, map_location="cpu"))
    validation = config.get_parsed_content("validate#dataset")
    pairs = torch.stack([validation[i]["image"] for i in range(len(validation))])
    x_a, x_b = pairs[:, :1], pairs[:, 1:]
    print(
        f"references: mean target {mean_rms(x_b.mean(0, keepdim=True).expand_as(x_b), x_b):.3f}, "
        f"best intensity mapping {best_lookup_rms(x_a, x_b):.3f}"
    )

    def report(epoch: int) -> None:
        with torch.no_grad():
            synthesis = network.train().training_outputs(pairs)["syn_b"]
        print(f"epoch {epoch}: synthesis RMS {mean_rms(synthesis, x_b):.3f}", flush=True)

    report(0)
    if args.epochs:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: report(engine.state.epoch))
        trainer.run()


if __name__ == "__main__":
    main()
