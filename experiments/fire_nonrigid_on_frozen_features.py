"""Can FIRE's non-rigid sub-networks learn the residual of pre-aligned pairs at a working grid, given the
encoder's features? Train them alone, both directions, with everything else frozen: each cached pair's
encoder features, affines and MIND-SSC descriptors are computed once, so that a step costs the two
non-rigid networks and two warps of the descriptors instead of the whole FIRE (15 s a step at 96^3 on 2
CPU cores, 1 s here). Loss: the descriptors' mean squared difference after the warp, both directions,
plus `SMOOTHNESS` times `FIRELoss`'s Laplacian of the fields. LOSS `labels` compares the synthetic
pairs' labels instead (soft Dice of the warped one-hot labels, as SynthMorph trains), a stronger signal
than MIND-SSC's: on one pair four times MIND-SSC's gain in half the steps. Validation Dice as
`fire_validation_probe.py` every `LOG_EVERY` steps. The weights (the whole FIRE) are saved at the end
as OUT, and at their best validation Dice as OUT_best.pt: on a GPU a run makes thousands of steps, and
the last need not be the best.

With TRAIN_PAIRS, only the first that many training pairs, and their own Dice beside the validation's:
can the sub-networks fit a pair at all (capacity), and does what they fit carry to other pairs?

    python experiments/fire_nonrigid_on_frozen_features.py WEIGHTS OUT.pt SECONDS LEARNING_RATE \
        '{"working_size": 96, "working_spacing": 2.0, "cache_dir": "cache96", ...}' [TRAIN_PAIRS [LOSS]]
"""

import json
import sys
import time

import torch
from fire_validation_probe import parsed
from monai.losses import DiceLoss
from monai.metrics import DiceMetric
from monai.networks.blocks import Warp
from monai.networks.utils import one_hot
from monai.utils import look_up_option

from regplugins.layers import normalized_affine_flow, normalized_to_voxel, resize_normalized, warp_normalized
from regplugins.losses.fire import smoothness
from regplugins.losses.mind import MINDDescriptor
from regplugins.networks.fire import compose_affine_nonrigid

SMOOTHNESS, LOG_EVERY = 0.1, 250
DIRECTIONS = (("ab", 0, 1), ("ba", 1, 0))  # direction, source image, target image
LOSSES = ("mind", "labels")


def frozen_inputs(network, pair: dict, device: torch.device, compared=None) -> dict:
    """The pair's affines and affinely warped features per direction, and ``compared(pair, images)``, the two
    volumes the loss compares after the warp (in bfloat16 to fit 120 pairs)."""
    images = pair["image"][None].float().to(device)
    with torch.no_grad():
        features = [network.encoder(images[:, i : i + 1]) for i in (0, 1)]
        item = {"shape": images.shape[2:]}
        for direction, source, target in DIRECTIONS:
            transform = getattr(network, f"transform_{direction}")
            theta = transform.affine(features[source], features[target])
            warped = warp_normalized(features[source], normalized_affine_flow(theta, features[source].shape[2:]))
            item[direction] = (theta, warped, features[target])
        if compared is not None:
            item["compared"] = [volume.to(device, torch.bfloat16) for volume in compared(pair, images)]
    return item


def fields(network, item: dict, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-rigid field on the feature grid, and the whole normalised field on the working grid."""
    theta, warped, target = item[direction]
    nonrigid = getattr(network, f"transform_{direction}").nonrigid(warped, target)
    return nonrigid, compose_affine_nonrigid(theta, resize_normalized(nonrigid, item["shape"]))


def validation_dice(network, pairs: list, num_labels: int, device: torch.device) -> float:
    metric, warp = DiceMetric(include_background=False), Warp(mode="nearest", padding_mode="border")
    with torch.no_grad():
        for item, pair in pairs:
            moved = warp(pair["moving_label"][None].float().to(device), normalized_to_voxel(fields(network, item, "ab")[1]))
            metric(one_hot(moved.long(), num_labels), one_hot(pair["fixed_label"][None].long().to(device), num_labels))
    return float(metric.aggregate())


def main(weights: str, out: str, seconds: float, learning_rate: float, overrides: dict, train_pairs: int = 0, loss: str = "mind") -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parser = parsed(overrides)
    network = parser.get_parsed_content("network")
    state = torch.load(weights, map_location="cpu")
    network.load_state_dict(state.get("model", state))
    network.to(device).eval()
    if look_up_option(loss, LOSSES) == "labels":
        compare = DiceLoss(include_background=False)

        def compared(pair, images):
            return [one_hot(pair[key][None].long(), parser["num_labels"]) for key in ("moving_label", "fixed_label")]
    else:
        describe, compare = MINDDescriptor(3).to(device), torch.nn.functional.mse_loss

        def compared(pair, images):
            return [describe(images[:, i : i + 1]) for i in (0, 1)]

    start = time.time()
    pairs = parser.get_parsed_content("train#dataset")
    pairs = [pairs[i] for i in range(train_pairs or len(pairs))]
    train = [frozen_inputs(network, pair, device, compared) for pair in pairs]
    fitted = list(zip(train, pairs)) if train_pairs else []
    val = [(frozen_inputs(network, pair, device), pair) for pair in parser.get_parsed_content("validate#dataset")]
    print(f"{len(train)} training and {len(val)} validation pairs encoded in {time.time() - start:.0f} s", flush=True)

    best_dice, best_path = -1.0, out.removesuffix(".pt") + "_best.pt"

    def dice() -> str:
        """The log's Dice; saves the weights when the validation Dice is the best so far."""
        nonlocal best_dice
        score = validation_dice(network, val, parser["num_labels"], device)
        if score > best_dice:
            best_dice = score
            torch.save({key: value.cpu() for key, value in network.state_dict().items()}, best_path)
        scores = [f"validation Dice {score:.4f}"]
        if fitted:
            scores.append(f"training pairs' Dice {validation_dice(network, fitted, parser['num_labels'], device):.4f}")
        return ", ".join(scores)

    print(f"step 0: {dice()}", flush=True)
    nonrigid = [*network.transform_ab.nonrigid.parameters(), *network.transform_ba.nonrigid.parameters()]
    optimizer, generator = torch.optim.Adam(nonrigid, lr=learning_rate), torch.Generator().manual_seed(0)
    start, step, losses = time.time(), 0, []
    while time.time() - start < seconds:
        item = train[int(torch.randint(len(train), (1,), generator=generator))]
        total = 0.0
        for direction, source, target in DIRECTIONS:
            field, flow = fields(network, item, direction)
            moved = warp_normalized(item["compared"][source].float(), flow)
            total = total + compare(moved, item["compared"][target].float()) + SMOOTHNESS * smoothness(field).mean()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        step, losses = step + 1, losses + [total.item()]
        if step % LOG_EVERY == 0:
            print(f"step {step}, {time.time() - start:.0f} s: loss {sum(losses) / len(losses):.4f}, {dice()}", flush=True)
            losses = []
    print(f"step {step}: {dice()}", flush=True)
    torch.save(network.cpu().state_dict(), out)


if __name__ == "__main__":
    main(*sys.argv[1:3], float(sys.argv[3]), float(sys.argv[4]), json.loads(sys.argv[5]), *map(int, sys.argv[6:7]), *sys.argv[7:])
