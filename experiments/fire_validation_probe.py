"""FIRE weights' validation Dice on the train config's pre-aligned validation pairs, beside the
pre-alignment's own: does a network improve on the pairs it is handed, at a given working grid?

The validation pairs are the train config's (seed 1,000,000 on, the first modality pair, pre-aligned
as at inference); MeanDice without background at the working grid, as the train config's key metric.

    python experiments/fire_validation_probe.py WEIGHTS[,WEIGHTS...] \
        '{"working_size": 64, "working_spacing": 3.0, "modality_pairs": [["t2", "t1"]]}'
"""

import json
import sys

import torch
from monai.bundle import ConfigParser
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

BUNDLE = "bundles/fire_inverse_consistent_reg"


def parsed(overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(f"{BUNDLE}/configs/train.json")
    # no validation handlers: the config's CheckpointSaver would write the best weights over the bundle's models/model.pt
    settings = {"bundle_root": BUNDLE, "device": "$torch.device('cpu')", "cache_dir": "/tmp/fire_validation_probe", "validate#handlers": []}
    parser.update({**settings, **overrides})
    return parser


def main(weights: str, overrides: dict) -> None:
    parser = parsed(overrides)
    metric, num_labels = DiceMetric(include_background=False), parser["num_labels"]
    for pair in parser.get_parsed_content("validate#dataset"):
        metric(*(one_hot(pair[key][None].long(), num_labels) for key in ("moving_label", "fixed_label")))
    print(f"pre-alignment alone: {float(metric.aggregate()):.4f}")
    for path in weights.split(","):
        parser = parsed(overrides)
        state = torch.load(path, map_location="cpu")
        parser.get_parsed_content("network").load_state_dict(state.get("model", state))
        evaluator = parser.get_parsed_content("validate#evaluator")
        evaluator.run()
        print(f"{path}: {evaluator.state.metrics['val_mean_dice']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
