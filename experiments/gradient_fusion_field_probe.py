"""Does ct_mr_gradient_fusion_reg's loss lead to the true field, and how far have networks gone?

On validation pairs of the train config's pipeline (seeds 1,000,000 on, labels and the true field
resampled alongside the images), prints per pair: the mean length of the true residual field and,
along the line from no field to 1.25 times the true one (both fields of the loss on that line),
the loss's two MIND terms, its two smoothness terms and the label Dice; the MIND terms for
constant sub-voxel shifts, for the air around the head shifted alone and for a smoothed moving
image, which align nothing; then each given
network's mean field length (over the image, in the head and outside it), cosine with the true
field (over the image and in the head) and Dice (``fusion:path``, e.g.
``none:gpu_runs/none/model.pt``). ``--free_field_steps N`` also optimises two free fields on each
pair (no network) with Adam on the same loss, printing its loss, the fused field's mean length,
cosine with the true field and Dice: does the loss lead there from no field, and how do another
smoothness weight (``--smoothness``) and smoothing the images before MIND
(``--mind_smoothing_sigma``) change that? ``--network_fit_steps N`` fits a fresh gated network to
each pair alone the same way: can the network reach what the free fields reach?
``--synthesis_args '{"anatomy": "mni152", "subject_deformation_mm": 4.0}'`` changes the pairs'
generator settings (here: MNI152 heads, one subject per seed, in place of random blob heads).
``--mind_descriptor`` and ``--mind_variance_floor`` are the bundle's (the paper's ``mind`` since
0.5.0; the training record's runs before 0.5.0 used ``mind_ssc``, which repeats them).

    python experiments/gradient_fusion_field_probe.py --pairs 3 --free_field_steps 200 [fusion:model.pt ...]
"""

import argparse
import json
from pathlib import Path

import torch
from dual_similarity_field_probe import air_around_head, cosine_with, label_dice, validation_pairs

import regplugins

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "ct_mr_gradient_fusion_reg"


def loss_terms(loss, images, fused, gradient_field) -> list[torch.Tensor]:
    """The bundle's weighted terms in the probe's order: image MIND, gradient-map MIND, fused and gradient-branch smoothness."""
    image, fused_smoothness, gradient, gradient_smoothness = loss.terms((fused, gradient_field), images)
    return [image, gradient, fused_smoothness, gradient_smoothness]


def fit_to_pair(pair, loss, steps: int, learning_rate: float, network=None) -> None:
    """Adam on the bundle's loss for one pair, printing progress every 50 steps: on two free voxel
    fields phi_ig and phi_g from zero, or on a fresh ``network``'s weights (does it reach what free fields reach?)."""
    images, truth = pair["images"], pair["true_voxel_ddf"]
    if network is None:
        free = [torch.zeros_like(truth, requires_grad=True) for _ in range(2)]
        fields, parameters, name = (lambda: free), free, "free fields"
    else:
        fields, parameters = (lambda: network.train()(images)), list(network.parameters())
        name = f"{network.fusion_mode} network"
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    for step in range(steps + 1):
        fused, gradient_field = fields()
        terms = loss_terms(loss, images, fused, gradient_field)
        if step % 50 == 0 or step == steps:
            with torch.no_grad():
                print(
                    f"  {name}, Adam at {learning_rate}, step {step}: loss {' + '.join(f'{t:.4f}' for t in terms)}"
                    f" = {sum(terms):.4f}, fused field {fused.norm(dim=1).mean():.2f} voxels, cosine with the true"
                    f" field {cosine_with(fused, truth):.2f}, Dice {label_dice(pair, fused.detach()):.4f}",
                    flush=True,
                )
        optimizer.zero_grad()
        sum(terms).backward()
        optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", help="fusion:path of a trained network")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--working_shape", type=int, default=96)
    parser.add_argument("--working_spacing", type=float, default=2.0)
    parser.add_argument("--smoothness", type=float, default=0.5, help="gamma_1 = gamma_2; the paper's is 0.5")
    parser.add_argument("--mind_smoothing_sigma", type=float, default=0.0, help="as the bundle's mind_smoothing_sigma")
    parser.add_argument("--mind_descriptor", default="mind", help="as the bundle's mind_descriptor")
    parser.add_argument("--mind_dilation", type=int, default=2, help="MINDLoss's dilation")
    parser.add_argument("--mind_variance_floor", type=float, default=0.001, help="as the bundle's mind_variance_floor")
    parser.add_argument("--free_field_steps", type=int, default=0)
    parser.add_argument("--free_field_learning_rate", type=float, default=0.05)
    parser.add_argument("--network_fit_steps", type=int, default=0)
    parser.add_argument("--network_fit_learning_rate", type=float, default=1e-3)
    parser.add_argument("--synthesis_args", type=json.loads, default={}, help="generator settings over the train config's")
    args = parser.parse_args()
    loss = regplugins.losses.GradientFusionLoss(
        fused_smoothness_weight=args.smoothness,
        gradient_smoothness_weight=args.smoothness,
        similarity=regplugins.losses.MINDLoss(
            smoothing_sigma=args.mind_smoothing_sigma,
            descriptor=args.mind_descriptor,
            dilation=args.mind_dilation,
            variance_floor=args.mind_variance_floor,
        ),
    )
    synthesis = {f"synthesis_args#{key}": value for key, value in args.synthesis_args.items()}
    pairs = validation_pairs(args.pairs, args.working_shape, args.working_spacing, BUNDLE, ["moving", "fixed"], **synthesis)
    for seed, pair in pairs:
        images, truth = pair["images"], pair["true_voxel_ddf"]
        print(f"pair {seed}: true field {truth.norm(dim=1).mean():.2f} voxels")
        for alpha in (0.0, 0.25, 0.5, 0.75, 1.0, 1.25):
            with torch.no_grad():
                terms = loss_terms(loss, images, alpha * truth, alpha * truth)
            print(
                f"  {alpha:.2f} x true field: MIND {terms[0]:.4f} + gradient MIND {terms[1]:.4f} + smoothness"
                f" {terms[2]:.4f} + {terms[3]:.4f} = {sum(terms):.4f}, Dice {label_dice(pair, alpha * truth):.4f}"
            )
        for shift in (0.25, 0.5):  # moves no label, only blurs the moving image by interpolation
            field = torch.full_like(truth, shift)
            with torch.no_grad():
                terms = loss_terms(loss, images, field, field)
            print(
                f"  constant shift of {shift} voxels along each axis: MIND {terms[0]:.4f} + gradient MIND {terms[1]:.4f},"
                f" Dice {label_dice(pair, field):.4f}"
            )
        field = 0.5 * air_around_head(pair).expand_as(truth)  # moves the air around the head, not the head
        with torch.no_grad():
            terms = loss_terms(loss, images, field, field)
        print(
            f"  the air alone shifted by 0.5 voxels along each axis: MIND {terms[0]:.4f} + gradient MIND {terms[1]:.4f}"
            f" + smoothness {terms[2]:.4f} + {terms[3]:.4f} = {sum(terms):.4f}, Dice {label_dice(pair, field):.4f}"
        )
        blurred = torch.cat([regplugins.layers.gaussian_smooth(images[:, :1], [0.5] * 3), images[:, 1:]], dim=1)
        with torch.no_grad():
            terms = loss_terms(loss, blurred, torch.zeros_like(truth), torch.zeros_like(truth))
        print(f"  moving image smoothed by 0.5 voxels, no field: MIND {terms[0]:.4f} + gradient MIND {terms[1]:.4f}")
        for checkpoint in args.checkpoints:
            fusion, path = checkpoint.split(":", 1)
            network = regplugins.networks.GradientFusionNet(fusion=fusion)
            network.load_state_dict(torch.load(path, map_location="cpu"))
            with torch.no_grad():
                ddf = network.eval()(images)
            head = pair["fixed_label"][0] > 0
            length = ddf.norm(dim=1)[0]
            print(
                f"  {checkpoint}: field {length.mean():.3f} voxels (at most {length.max():.3f}; {length[head].mean():.3f}"
                f" in the head, {length[~head].mean():.3f} outside), cosine with the true field {cosine_with(ddf, truth):.2f}"
                f" ({cosine_with(ddf, truth, head):.2f} in the head), Dice {label_dice(pair, ddf):.4f}"
            )
        if args.free_field_steps:
            fit_to_pair(pair, loss, args.free_field_steps, args.free_field_learning_rate)
        if args.network_fit_steps:
            torch.manual_seed(0)
            network = regplugins.networks.GradientFusionNet(fusion="gated")
            fit_to_pair(pair, loss, args.network_fit_steps, args.network_fit_learning_rate, network)


if __name__ == "__main__":
    main()
