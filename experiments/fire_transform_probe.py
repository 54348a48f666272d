"""How do FIRE's transformation networks learn on the generator's pairs? Three probes.

``--probe joint`` trains the whole of `fire_inverse_consistent_reg` as its train config does (the
three optimisers in turn) on 2D pairs of ``--modalities`` (default T1 to T1: one modality, so the
synthesis has only to copy), and after every epoch prints the validation Dice, and on the first
validation pair the loss terms, the non-rigid field's mean length in normalised units (1 is half
the image) and the mean shift of the affine, of the non-rigid field (the part of it that moves the
whole image, which the Laplacian smoothness term cannot see) and of the two composed.
``--start_from`` continues from a checkpoint, e.g. the second stage of a staged schedule, and
``--loss_weights`` rescales loss terms as the train config's option does, ``--grid`` sets the working
size and spacing, and ``--one_way`` keeps the first modality the moving one.

``--probe affine`` trains the affine sub-network alone in the easiest setting: one modality, no
deformation, the loss the RMS between the warped moving image and the fixed one (no synthesis),
on the images themselves or on the features of a frozen synthesis encoder (``--affine_input
encoder``), fresh or a checkpoint's (``--encoder_weights``), printing the validation Dice every 3
epochs, in 2D or 3D (``--spatial_dims``). ``--affine_loss registration`` compares instead the
checkpoint's synthesis of the warped image, ``F_A->B(G(x_A o phi))``, with the fixed image, as
stage two's registration term does. ``--affine_head keypoints`` trains the keypoint detector and
least-squares fit (``KeypointAffineNetwork``) in place of the paper's regressor.

``--probe affine_fit`` asks what the affine probe's loss allows at best: on its validation pairs it
optimises one affine per pair directly (no network; Adam at 1e-2 from the identity, 300 steps) and
prints the validation Dice of those affines beside the identity's. ``--synthesis_args`` changes the
generator's settings for both (e.g. ``'{"anatomy": "mni152"}'``: heads of one shared anatomy).
``--compare_with_fit`` ends the affine probe by comparing its affines with those fitted per pair,
part by part (translation, rotation, scaling and shear): which parts has the sub-network learnt?

``--probe head CHECKPOINT...`` asks whether a trained network's affine sub-network ``T_A->B`` can
still tell pairs apart: over the validation pairs, the spread of its pooled features, how many of
its hidden units are ever positive, and the spread of the affines it predicts.

``--probe landscape CHECKPOINT...`` asks whether stage two's loss rewards alignment at all: on the
validation pairs it warps the moving image by a share ``t`` of the true field (0 the identity, 1
the truth) and prints, for each ``t``, the label Dice and the RMS against ``x_B`` of the
registration term ``F_A->B(G(x_A o phi))``, of the synthesis term ``F_A->B(G(x_A) o phi)``, and of
the warped image itself (the direct loss of the affine probe, meaningful for one modality alone).

About 3 minutes each on 2 CPU cores (2D):

    python experiments/fire_transform_probe.py --probe joint --epochs 25
    python experiments/fire_transform_probe.py --probe affine --affine_input image
"""

import argparse
import json
import tempfile
from pathlib import Path

import monai
import torch
from monai.bundle import ConfigParser

from regplugins.layers import cached_warp, normalized_affine_flow, normalized_to_voxel, warp_normalized
from regplugins.networks.fire import AFFINE_HEADS, SynthesisDecoder, SynthesisEncoder

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "fire_inverse_consistent_reg"


def parse_config(modalities, grid, spatial_dims=2, batch_size=4, num_train_pairs=200, **overrides) -> ConfigParser:
    """The train config at ``grid`` (size, spacing), on ``modalities`` pairs; by default 2D, 200 training pairs of batch 4."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "device": "$torch.device('cpu')",
            "spatial_dims": spatial_dims,
            "batch_size": batch_size,
            "working_size": grid[0],
            "working_spacing": grid[1],
            "num_train_pairs": num_train_pairs,
            "num_workers": 1,
            "modality_pairs": [list(modalities)],
            **overrides,
        }
    )
    return parser


def validation_dice(pairs, flows) -> float:
    """Mean label Dice over ``pairs`` of the moving labels warped by ``flows``, one normalised field per pair.

    ``flows`` may be a generator: it is drawn under ``torch.no_grad``.
    """
    metric = monai.metrics.DiceMetric(include_background=False)

    def onehot(labels):
        return monai.networks.one_hot(labels.long(), 12)

    with torch.no_grad():
        for pair, flow in zip(pairs, flows):
            ddf = normalized_to_voxel(flow)
            metric(onehot(cached_warp("nearest")(pair["moving_label"].float(), ddf)), onehot(pair["fixed_label"]))
    return metric.aggregate().item()


def probe_joint(modalities, grid, epochs: int, learning_rates, start_from: str, loss_weights: dict | None, one_way: bool) -> None:
    affine_rate, nonrigid_rate, synthesis_rate = learning_rates
    parser = parse_config(
        modalities,
        grid,
        **{"synthesis_args#random_direction": not one_way},
        loss_weights=loss_weights,
        affine_learning_rate=affine_rate,
        nonrigid_learning_rate=nonrigid_rate,
        synthesis_learning_rate=synthesis_rate,
        ckpt_dir=tempfile.mkdtemp(),
        pretrained_weights=start_from,
    )
    monai.utils.set_determinism(seed=0)
    trainer, network, loss = (parser.get_parsed_content(k) for k in ("train#trainer", "network", "loss"))
    if start_from:  # the trainer loads it too, but only once it starts
        network.load_state_dict(torch.load(start_from, map_location="cpu"))
    pairs = list(parser.get_parsed_content("validate#dataloader"))
    for epoch in range(epochs + 1):
        if epoch:
            trainer.state.max_epochs = epoch
            trainer.run()
        dice = validation_dice(pairs, (network.train()(pair["image"])["flow_ab"] for pair in pairs))
        with torch.no_grad():
            out = network.train()(pairs[0]["image"])
        terms = ", ".join(f"{name} {value.item():.3f}" for name, value in loss.terms(out).items())
        mean_shift = {k: out[k].mean(dim=(2, 3)).norm().item() for k in ("affine_ab", "nonrigid_ab", "flow_ab")}
        print(
            f"epoch {epoch}: validation Dice {dice:.4f}; {terms}; non-rigid field {out['nonrigid_ab'].norm(dim=1).mean():.3f} long;"
            f" mean shift of the affine {mean_shift['affine_ab']:.3f}, of the non-rigid field {mean_shift['nonrigid_ab']:.3f},"
            f" of the two composed {mean_shift['flow_ab']:.3f}",
            flush=True,
        )


def frozen_part(module: torch.nn.Module, checkpoint: str, prefix: str) -> torch.nn.Module:
    """``module`` with the weights of the FIRE checkpoint's sub-network ``prefix`` (fresh without a checkpoint), frozen."""
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu")
        module.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
    return module.requires_grad_(False)


def image_loss(image: torch.Tensor, flow: torch.Tensor, compared: torch.nn.Module = torch.nn.Identity()) -> torch.Tensor:
    """The affine probes' loss: mean squared difference of ``compared`` (the warped moving image itself, or its
    synthesis) and the fixed image, for a (moving, fixed) pair ``image`` and a normalised field ``flow``."""
    return (compared(warp_normalized(image[:, :1], flow)) - image[:, 1:]).square().mean()


def probe_affine(
    grid,
    affine_input: str,
    affine_loss: str,
    affine_head: str,
    epochs: int,
    learning_rate: float,
    encoder_weights: str,
    compare_with_fit: bool,
    **data,
) -> None:
    parser = parse_config(["t1", "t1"], grid, deformation_mm=0.0, **data)
    torch.manual_seed(0)
    train, pairs = parser.get_parsed_content("train#dataloader"), list(parser.get_parsed_content("validate#dataloader"))
    dims = parser["spatial_dims"]
    encoder = torch.nn.Identity()
    if affine_input == "encoder" or affine_loss == "registration":
        encoder = frozen_part(SynthesisEncoder(dims, 1, (8, 16, 32)), encoder_weights, "encoder.")
    # the direct loss compares the warped image itself; stage two's registration term compares its synthesis F_A->B(G(.))
    compared = torch.nn.Identity()
    if affine_loss == "registration":
        compared = torch.nn.Sequential(encoder, frozen_part(SynthesisDecoder(dims, 1, (8, 16, 32)), encoder_weights, "decoder_ab."))
    affine_features = encoder if affine_input == "encoder" else torch.nn.Identity()
    network = AFFINE_HEADS[affine_head](dims, 32 if affine_input == "encoder" else 1, 16)
    optimizer = torch.optim.Adam(network.parameters(), learning_rate)

    def flow_of(image):
        return normalized_affine_flow(network(affine_features(image[:, :1]), affine_features(image[:, 1:])), image.shape[2:])

    for epoch in range(epochs + 1):
        if epoch % 3 == 0 or epoch == epochs:
            dice = validation_dice(pairs, (flow_of(pair["image"]) for pair in pairs))
            print(f"epoch {epoch} ({epoch * len(train)} steps): validation Dice {dice:.4f}", flush=True)
        for batch in train if epoch < epochs else []:
            image = batch["image"]
            loss = image_loss(image, flow_of(image), compared)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    if compare_with_fit:
        with torch.no_grad():
            predicted = torch.cat([network(affine_features(p["image"][:, :1]), affine_features(p["image"][:, 1:])) for p in pairs])
        print("the trained sub-network's affines against one fitted to each validation pair:")
        print_affine_parts(fit_affines(pairs), predicted)


def fit_affines(pairs, steps: int = 300, learning_rate: float = 1e-2) -> torch.Tensor:
    """One affine ``(N, N + 1)`` per pair, fitted by Adam from the identity on the direct image loss; stacked."""
    fitted = []
    for pair in pairs:
        image = pair["image"].as_tensor()
        dims = image.dim() - 2
        theta = torch.eye(dims, dims + 1).unsqueeze(0).requires_grad_(True)
        optimizer = torch.optim.Adam([theta], learning_rate)
        for _ in range(steps):
            loss = image_loss(image, normalized_affine_flow(theta, image.shape[2:]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        fitted.append(theta.detach())
    return torch.cat(fitted)


def print_affine_parts(fitted: torch.Tensor, predicted: torch.Tensor) -> None:
    """How much of each part of the fitted affines the predicted ones recover: least-squares slope and correlation over the pairs."""
    dims = fitted.shape[1]

    def linear(t):
        return t[:, :, :dims]

    parts = {
        "translation": lambda t: t[:, :, dims],
        "rotation (antisymmetric part)": lambda t: (linear(t) - linear(t).transpose(1, 2)) / 2,
        "scaling and shear (symmetric part less the identity)": lambda t: (linear(t) + linear(t).transpose(1, 2)) / 2 - torch.eye(dims),
    }
    for name, part in parts.items():
        x, y = part(fitted).flatten(), part(predicted).flatten()
        print(
            f"  {name}: RMS fitted {x.square().mean().sqrt():.4f}, predicted {y.square().mean().sqrt():.4f};"
            f" slope {(x * y).sum() / (x * x).sum():.2f}, correlation {torch.corrcoef(torch.stack([x, y]))[0, 1]:.2f}",
            flush=True,
        )


def probe_affine_fit(grid, **data) -> None:
    parser = parse_config(["t1", "t1"], grid, deformation_mm=0.0, **data)
    pairs, dims = list(parser.get_parsed_content("validate#dataloader")), parser["spatial_dims"]
    identity = torch.eye(dims, dims + 1).unsqueeze(0)

    def flows(thetas):
        return (normalized_affine_flow(t[None], p["image"].shape[2:]) for p, t in zip(pairs, thetas))

    print(
        f"validation Dice: identity {validation_dice(pairs, flows(identity.expand(len(pairs), -1, -1))):.4f},"
        f" one affine fitted to each pair {validation_dice(pairs, flows(fit_affines(pairs))):.4f}",
        flush=True,
    )


def probe_head(checkpoints, grid, **data) -> None:
    parser = parse_config(["t1", "t2"], grid, **data)
    network, pairs = parser.get_parsed_content("network"), list(parser.get_parsed_content("validate#dataloader"))
    affine = network.transform_ab.affine
    for checkpoint in checkpoints:
        network.load_state_dict(torch.load(checkpoint, map_location="cpu"))
        with torch.no_grad():
            pooled = torch.cat([affine.pooled_features(network.encoder(p["image"][:, :1]), network.encoder(p["image"][:, 1:])) for p in pairs])
            hidden, theta = affine.fully_connected[0](pooled), affine.fully_connected(pooled)
        print(
            f"{checkpoint}: pooled features {pooled.mean():.3f}, spread over {len(pairs)} pairs {pooled.std(0).mean():.4f};"
            f" hidden units ever positive {int((hidden > 0).any(0).sum())} of {hidden.shape[1]};"
            f" largest spread of an affine entry {theta.std(0).max():.2e}",
            flush=True,
        )


def probe_landscape(checkpoints, grid, modalities, shares, **data) -> None:
    parser = parse_config(
        modalities,
        grid,
        **{"synthesis_args#random_direction": False, "pair_transforms#3#keys": ["image", "moving_label", "fixed_label", "true_ddf"]},
        **data,
    )
    network, pairs = parser.get_parsed_content("network"), list(parser.get_parsed_content("validate#dataloader"))
    # the generator's grids are axis-aligned, so its true field in mm over the spacing is the voxel DDF
    voxel_ddfs = [pair["true_ddf"].as_tensor() / parser["working_spacing"] for pair in pairs]
    true_flows = [ddf / normalized_to_voxel(torch.ones_like(ddf)) for ddf in voxel_ddfs]
    for checkpoint in checkpoints:
        network.load_state_dict(torch.load(checkpoint, map_location="cpu"))
        encoder, synthesise = network.encoder.eval(), network.decoder_ab.eval()
        for share in shares:
            flows = [share * flow for flow in true_flows]
            errors = torch.zeros(3)
            with torch.no_grad():
                for pair, flow in zip(pairs, flows):
                    x_a, x_b = pair["image"][:, :1].as_tensor(), pair["image"][:, 1:].as_tensor()
                    warped = warp_normalized(x_a, flow)
                    terms = (synthesise(encoder(warped)), synthesise(warp_normalized(encoder(x_a), flow)), warped)
                    errors += torch.stack([(term - x_b).square().mean().sqrt() for term in terms])
            registration, synthesis, image = (errors / len(pairs)).tolist()
            print(
                f"{checkpoint}, t = {share}: Dice {validation_dice(pairs, flows):.4f}; RMS against x_B of F(G(x_A o phi))"
                f" {registration:.4f}, of F(G(x_A) o phi) {synthesis:.4f}, of x_A o phi {image:.4f}",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", choices=["joint", "affine", "affine_fit", "head", "landscape"], required=True)
    parser.add_argument("checkpoints", nargs="*", help="the head and landscape probes' networks")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--modalities", nargs=2, default=["t1", "t1"])
    parser.add_argument("--grid", type=float, nargs=2, default=[32, 6.0], help="working size and spacing (mm)")
    parser.add_argument("--one_way", action="store_true", help="the first modality always the moving one (runs 8-10)")
    parser.add_argument(
        "--learning_rates",
        type=float,
        nargs=3,
        default=[5e-4, 5e-4, 1e-3],
        help="affine, non-rigid, synthesis (the joint probe; ten times the paper's by default)",
    )
    parser.add_argument("--start_from", default="", help="the joint probe's starting weights (default: a fresh network)")
    parser.add_argument("--loss_weights", type=json.loads, default=None, help="the joint probe's, as the train config's")
    parser.add_argument("--affine_input", choices=["image", "encoder"], default="image")
    parser.add_argument(
        "--affine_loss",
        choices=["image", "registration"],
        default="image",
        help="the affine probe's: the warped image against the fixed one, or its synthesis F_A->B(G(.)) (needs --encoder_weights)",
    )
    parser.add_argument(
        "--affine_head",
        choices=sorted(AFFINE_HEADS),
        default="regression",
        help="the affine probe's sub-network: the paper's regressor or the keypoint detector and fit (item 20)",
    )
    parser.add_argument("--affine_learning_rate", type=float, default=1e-3)
    parser.add_argument("--encoder_weights", default="", help="the affine probe's encoder from this checkpoint (default: fresh)")
    parser.add_argument("--spatial_dims", type=int, default=2, help="the affine and head probes'")
    parser.add_argument("--batch_size", type=int, default=4, help="the affine probe's")
    parser.add_argument("--num_train_pairs", type=int, default=200, help="the affine probe's")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="the landscape probe's shares of the true field")
    parser.add_argument(
        "--compare_with_fit",
        action="store_true",
        help="after the affine probe, compare its affines part by part with one fitted to each validation pair",
    )
    parser.add_argument(
        "--synthesis_args",
        type=json.loads,
        default={},
        help="the affine and affine_fit probes' generator settings over the train config's, e.g. '{\"anatomy\": \"mni152\"}'",
    )
    parser.add_argument("--channels", type=int, nargs=3, default=[8, 16, 32], help="the head and landscape probes' network (the train config's)")
    parser.add_argument("--transform_channels", type=int, default=16, help="the head and landscape probes' network (the train config's)")
    args = parser.parse_args()
    grid = (int(args.grid[0]), args.grid[1])
    synthesis = {f"synthesis_args#{key}": value for key, value in args.synthesis_args.items()}
    if args.probe == "joint":
        probe_joint(args.modalities, grid, args.epochs, args.learning_rates, args.start_from, args.loss_weights, args.one_way)
    elif args.probe == "affine":
        probe_affine(
            grid,
            args.affine_input,
            args.affine_loss,
            args.affine_head,
            args.epochs,
            args.affine_learning_rate,
            args.encoder_weights,
            args.compare_with_fit,
            spatial_dims=args.spatial_dims,
            batch_size=args.batch_size,
            num_train_pairs=args.num_train_pairs,
            **synthesis,
        )
    elif args.probe == "affine_fit":
        probe_affine_fit(grid, spatial_dims=args.spatial_dims, **synthesis)
    else:
        widths = {"network_def#channels": args.channels, "network_def#transform_channels": args.transform_channels}
        if args.probe == "head":
            probe_head(args.checkpoints, grid, spatial_dims=args.spatial_dims, num_train_pairs=4, **widths)
        else:
            probe_landscape(args.checkpoints, grid, args.modalities, args.shares, spatial_dims=args.spatial_dims, num_train_pairs=4, **widths)


if __name__ == "__main__":
    main()
