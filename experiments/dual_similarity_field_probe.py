"""Does ct_mr_dual_similarity_reg's loss lead to the true field, and how far has a network gone?

On validation pairs of the train config's pipeline (seeds 1,000,000 on, labels resampled
alongside the images), prints per pair: the mean length of the true residual field and, along
the line from no field to 1.25 times the true one, the loss's two NCC terms over 24^3 blocks,
its regulariser and the label Dice; then each given network's mean field length and Dice.
``--train_steps N --optimisers sgd@0.01,adam@0.001`` first trains a network from scratch with
each optimiser (momentum 0.9 for SGD) for N steps of the train config on a pair cache made by
``fill_pair_cache.py``, and probes those networks too. ``--free_field_steps N`` also optimises a
free field on each pair (no network) with Adam on the same loss, printing its loss, mean length,
cosine with the true field and Dice as it goes: does the loss lead there from no field?
``--network_fit_steps N`` trains a fresh network on random 68^3 patches of each pair alone
(batch 2, as in training; ``--network_fit_optimisers`` as ``--optimisers``), printing every 100
steps its whole-image field, cosine and Dice with batch norm's running statistics (as inference
uses them) and with the batch's own: can the network reach what a free field reaches?
``--paired_images rendered`` probes the pairs as the weights up to 0.5.x were trained on (each
paired image drawn anew, not the other scan registered).

    python experiments/dual_similarity_field_probe.py --pairs 3 --working_spacing 2.0 [model.pt ...]
"""

import argparse
import itertools
import time
from pathlib import Path

import monai
import torch
from monai.bundle import ConfigParser
from monai.networks.blocks import Warp

import regplugins

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "ct_mr_dual_similarity_reg"
KEYS = ["moving", "fixed", "moving_paired", "fixed_paired"]


def validation_pairs(count: int, working_shape: int, working_spacing: float, bundle: Path = BUNDLE, keys=KEYS, **settings):
    """The validation pairs of ``bundle``'s train config (with ``settings``), with their labels and true voxel field on the working grid."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"working_shape": [working_shape] * 3, "working_spacing": working_spacing, **settings})
    synthesis = regplugins.data.SynthesizePaird(
        modalities=parser.get_parsed_content("modality_pairs")[0], **parser.get_parsed_content("synthesis_args")
    )
    resample = monai.transforms.Compose(
        [
            regplugins.transforms.NormalizeModalityd(keys=keys),
            regplugins.transforms.AntiAliasd(keys=keys, pixdim=working_spacing),
            monai.transforms.Spacingd(
                keys=keys + ["moving_label", "fixed_label", "true_ddf"],
                pixdim=working_spacing,
                mode=["bilinear"] * len(keys) + ["nearest"] * 2 + ["bilinear"],
            ),
        ]
    )
    for seed in range(1_000_000, 1_000_000 + count):
        pair = resample(synthesis({"seed": seed}))
        voxel_per_mm = torch.linalg.inv(torch.as_tensor(pair["fixed"].affine)[:3, :3].float())
        pair["true_voxel_ddf"] = torch.einsum("ij,jxyz->ixyz", voxel_per_mm, pair["true_ddf"].as_tensor().float())[None]
        pair["images"] = torch.cat([pair[k].as_tensor() for k in keys])[None].float()
        yield seed, pair


def label_dice(pair, ddf) -> float:
    def onehot(labels):
        return monai.networks.one_hot(labels.long(), 12)

    warped = Warp(mode="nearest")(pair["moving_label"][None].float(), ddf)
    metric = monai.metrics.DiceMetric(include_background=False)
    metric(onehot(warped), onehot(pair["fixed_label"][None]))
    return metric.aggregate().item()


def cosine_with(field: torch.Tensor, truth: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """How well a field points the true field's way, over all voxels or those ``where`` is true (1: same direction, 0: unrelated)."""
    if where is not None:
        field, truth = field[:, :, where], truth[:, :, where]
    return torch.nn.functional.cosine_similarity(field.flatten(), truth.flatten(), dim=0).item()


def air_around_head(pair) -> torch.Tensor:
    """1 in the air, 0 in the head, blurred by a voxel between: a field times it moves the air around the head, not the head."""
    return 1 - regplugins.layers.gaussian_smooth((pair["fixed_label"][None] > 0).float(), [1.0] * 3).clamp(0, 1)


def blockwise_ncc(a, b, size: int = 24) -> torch.Tensor:
    def blocks(x):
        return x.unfold(2, size, size).unfold(3, size, size).unfold(4, size, size).reshape(-1, 1, size, size, size)

    return regplugins.losses.GlobalNCCLoss()(blocks(a), blocks(b))


def probe_loss(images, ddf, regulariser) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundle's loss with NCC over 24^3 blocks of the whole image: its NCC terms and its regulariser."""
    warped = Warp()(images[:, [0, 2]], ddf)
    similarity = 0.5 * blockwise_ncc(warped[:, 1:2], images[:, 1:2]) + 0.5 * blockwise_ncc(warped[:, 0:1], images[:, 3:4])
    return similarity, regulariser(ddf)


def optimise_free_field(pair, steps: int, learning_rate: float, regulariser) -> None:
    """Adam on a free voxel field from zero, with the probe's loss; prints how far it goes every 50 steps."""
    images, truth = pair["images"], pair["true_voxel_ddf"]
    ddf = torch.zeros_like(truth, requires_grad=True)
    optimizer = torch.optim.Adam([ddf], lr=learning_rate)
    for step in range(steps + 1):
        loss = sum(probe_loss(images, ddf, regulariser))
        if step % 50 == 0 or step == steps:
            with torch.no_grad():
                print(
                    f"  free field, Adam at {learning_rate}, step {step}: loss {loss.item():.4f}, field {ddf.norm(dim=1).mean():.2f}"
                    f" voxels, cosine with the true field {cosine_with(ddf, truth):.2f}, Dice {label_dice(pair, ddf.detach()):.4f}",
                    flush=True,
                )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def make_optimiser(spec: str, parameters) -> torch.optim.Optimizer:
    """``adam@1e-3`` or ``sgd@0.01`` (momentum 0.9)."""
    kind, learning_rate = spec.split("@")
    if kind == "adam":
        return torch.optim.Adam(parameters, float(learning_rate))
    return torch.optim.SGD(parameters, float(learning_rate), momentum=0.9)


def fit_network_to_pair(pair, spec: str, steps: int, patch_size: int = 68, patches_per_step: int = 2) -> None:
    """Train a fresh network on random patches of one pair with the bundle's loss; prints its whole-image field as it goes."""
    torch.manual_seed(0)
    network, loss_function = regplugins.networks.PatchRegistrationUNet(), regplugins.losses.IntraModalitySimilarityLoss()
    optimizer, inferer = make_optimiser(spec, network.parameters()), regplugins.inferers.ValidPatchInferer()
    margin, truth = regplugins.networks.PatchRegistrationUNet.margin, pair["true_voxel_ddf"]
    padded = torch.nn.functional.pad(pair["images"], [margin] * 6)
    target_ct = torch.tensor([str(pair["fixed_modality"]).lower() == "ct"] * patches_per_step)
    for step in range(steps + 1):
        if step % 100 == 0 or step == steps:
            for mode in ("running", "batch"):
                with torch.no_grad():
                    ddf = inferer(pair["images"][:, :2], network.train(mode == "batch"))
                print(
                    f"  network fitted with {spec}, step {step}, {mode} statistics: field {ddf.norm(dim=1).mean():.2f}"
                    f" voxels, cosine with the true field {cosine_with(ddf, truth):.2f}, Dice {label_dice(pair, ddf):.4f}",
                    flush=True,
                )
        starts = torch.randint(0, padded.shape[2] - patch_size + 1, (patches_per_step, 3)).tolist()
        patches = torch.cat([padded[(..., *(slice(s, s + patch_size) for s in start))] for start in starts])
        loss = loss_function(network.train()(patches[:, :2]), {"images": patches, "fixed_is_ct": target_ct})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def train_from_scratch(optimiser: str, steps: int, cache_dir: str, train_pairs: int, working_shape: int, working_spacing: float) -> str:
    """Train the bundle's network with ``kind@learning_rate`` for ``steps`` steps; returns the checkpoint path."""
    monai.utils.set_determinism(seed=0)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(
        {
            "working_shape": [working_shape] * 3,
            "working_spacing": working_spacing,
            "cache_dir": cache_dir,
            "num_train_pairs": train_pairs,
            "num_workers": 1,
            "device": "cpu",
        }
    )
    network, loss_function = parser.get_parsed_content("network_def"), parser.get_parsed_content("loss")
    optimizer = make_optimiser(optimiser, network.parameters())
    start, losses = time.time(), []
    for batch in itertools.islice(itertools.cycle(parser.get_parsed_content("train#dataloader")), steps):
        inputs, target = regplugins.engines.prepare_paired_batch(batch, "cpu")
        loss = loss_function(network(inputs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"{optimiser}: {steps} steps in {time.time() - start:.0f} s, mean loss of the last 50 {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    path = f"probe_{optimiser}.pt"
    torch.save(network.state_dict(), path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--working_shape", type=int, default=96)
    parser.add_argument("--working_spacing", type=float, default=2.0)
    parser.add_argument("--train_steps", type=int, default=0)
    parser.add_argument("--optimisers", default="sgd@0.01,adam@0.001")
    parser.add_argument("--cache_dir", default="pair_cache")
    parser.add_argument("--train_pairs", type=int, default=24)
    parser.add_argument("--free_field_steps", type=int, default=0)
    parser.add_argument("--free_field_learning_rate", type=float, default=0.05)
    parser.add_argument("--network_fit_steps", type=int, default=0)
    parser.add_argument("--network_fit_optimisers", default="sgd@0.01,adam@0.001")
    parser.add_argument("--paired_images", default="registered", choices=["registered", "rendered"])
    args = parser.parse_args()
    if args.train_steps:
        for optimiser in args.optimisers.split(","):
            args.checkpoints.append(
                train_from_scratch(optimiser, args.train_steps, args.cache_dir, args.train_pairs, args.working_shape, args.working_spacing)
            )
    regulariser = regplugins.losses.LaplacianRegularizationLoss(l1=0.5, l2=0.01)
    inferer = regplugins.inferers.ValidPatchInferer()
    network = regplugins.networks.PatchRegistrationUNet()
    for seed, pair in validation_pairs(args.pairs, args.working_shape, args.working_spacing, paired_images=args.paired_images):
        images, truth = pair["images"], pair["true_voxel_ddf"]
        print(f"pair {seed}: true field {truth.norm(dim=1).mean():.2f} voxels")
        for alpha in (0.0, 0.25, 0.5, 0.75, 1.0, 1.25):
            ddf = alpha * truth
            similarity, penalty = (term.item() for term in probe_loss(images, ddf, regulariser))
            print(
                f"  {alpha:.2f} x true field: NCC terms {similarity:.4f} + regulariser {penalty:.4f} = {similarity + penalty:.4f},"
                f" Dice {label_dice(pair, ddf):.4f}"
            )
        for checkpoint in args.checkpoints:
            network.load_state_dict(torch.load(checkpoint, map_location="cpu"))
            with torch.no_grad():
                ddf = inferer(images[:, :2], network.eval())
            print(f"  {checkpoint}: field {ddf.norm(dim=1).mean():.2f} voxels, Dice {label_dice(pair, ddf):.4f}")
        if args.free_field_steps:
            optimise_free_field(pair, args.free_field_steps, args.free_field_learning_rate, regulariser)
        for spec in args.network_fit_optimisers.split(",") if args.network_fit_steps else []:
            fit_network_to_pair(pair, spec, args.network_fit_steps)


if __name__ == "__main__":
    main()
