"""FIRE's loss, eq. 1-4 of the paper: synthesis, registration and regularization, all as RMS errors."""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.losses import DiceLoss
from monai.networks.utils import one_hot
from torch.nn.modules.loss import _Loss

from regplugins.layers import normalized_to_voxel, warp_normalized

from .regularization import laplacian
from .utils import reduce_per_sample

# each term of eq. 2-4: the pairs of :meth:`regplugins.networks.FIRENet.training_outputs` it compares by RMS
FIRE_TERMS = {
    "synthesis_accuracy": (("syn_bt", "x_b"), ("syn_at", "x_a")),
    "synthesis_feature": (("g_a", "g_b_warped"), ("g_b", "g_a_warped")),
    "synthesis_cycle": (("cycle_a", "x_a"), ("cycle_b", "x_b")),
    "synthesis_alignment": (("g_a", "g_syn_b"), ("g_b", "g_syn_a")),
    "registration_accuracy": (("reg_b", "x_b"), ("reg_a", "x_a")),
    "inverse_consistency": (("x_a_round_trip", "x_a"), ("x_b_round_trip", "x_b")),
    "synthesis_regularization": (("syn_b_affine", "x_b"), ("syn_a_affine", "x_a")),
    "registration_regularization": (("reg_b_affine", "x_b"), ("reg_a_affine", "x_a")),
}


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square difference per sample."""
    return (a - b).square().flatten(1).mean(dim=1).add(1e-12).sqrt()


def smoothness(field: torch.Tensor) -> torch.Tensor:
    """``R_smooth`` of one normalised non-rigid field per sample: its mean squared Laplacian, in voxels of its own grid."""
    return laplacian(normalized_to_voxel(field)).square().sum(dim=1).flatten(1).mean(dim=1)


def label_overlap(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], num_labels: int) -> torch.Tensor:
    """Soft Dice loss per sample of each image's one-hot labels warped onto the other's, both directions.

    ``labels`` holds ``moving_label`` (of ``x_a``) and ``fixed_label`` (of ``x_b``), integer maps on the
    working grid; the warp interpolates the one-hot channels linearly, so the term is differentiable
    in the fields. The background counts as a label: it fixes the head's outline.
    """
    dice = DiceLoss(reduction="none")
    onehot_a, onehot_b = (one_hot(labels[key].long(), num_labels).float() for key in ("moving_label", "fixed_label"))
    pairs = ((warp_normalized(onehot_a, outputs["flow_ab"]), onehot_b), (warp_normalized(onehot_b, outputs["flow_ba"]), onehot_a))
    return sum(dice(warped, target).flatten(1).mean(dim=1) for warped, target in pairs)


class FIRELoss(_Loss):
    """``L = L_syn + L_reg + R``, with ``R = R_syn + R_reg + lambda * R_smooth`` (eq. 1-4).

    ``R_smooth`` is the mean squared Laplacian of both non-rigid fields, on the feature grid where
    the network predicts them, in that grid's voxels. The paper's formula for ``lambda`` did not
    survive in the text we have, so it is ``smoothness_weight``; ``weights`` optionally rescales
    any named term of :data:`FIRE_TERMS` (1 each, the paper's sum, by default).

    ``similarity``, a departure from the paper (none by default), adds ``similarity_weight`` times a
    direct similarity loss between each warped image and the other image, both directions
    (``registration_similarity``); it returns one value per sample, as
    ``regplugins.losses.MINDLoss(reduction="none")``. The paper's terms
    reach the transformation networks only through the synthesis: until the synthesis is good,
    their minimum is not at the alignment, and short trainings moved pre-aligned pairs away from
    it (docs/experiments/fire_inverse_consistent_reg.md); a modality-independent similarity does
    not depend on the synthesis.

    ``label_weight``, another departure (0 by default), adds that weight times
    :func:`label_overlap` (``label_overlap``), as SynthMorph trains on synthetic label maps: the
    labels say where each structure went whatever the two contrasts, a stronger signal for the
    transformation networks than any similarity of the images. It needs ``target`` to hold the
    pair's labels (:func:`regplugins.engines.prepare_labelled_batch`).

    Called as ``loss(outputs, target)`` by MONAI's trainer; ``outputs`` is the dictionary of
    :meth:`regplugins.networks.FIRENet.training_outputs`, which holds the inputs too, so
    ``target`` is needed only for the labels. :meth:`terms` gives each term's value for logging.
    """

    def __init__(
        self,
        smoothness_weight: float = 10.0,
        weights: dict[str, float] | None = None,
        similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        similarity_weight: float = 1.0,
        label_weight: float = 0.0,
        num_labels: int | None = None,
        reduction: str = "mean",
    ):
        super().__init__(reduction=reduction)
        weights = dict(weights or {})
        unknown = set(weights) - set(FIRE_TERMS)
        if unknown:
            raise ValueError(f"unknown FIRE loss terms {sorted(unknown)}; choose from {sorted(FIRE_TERMS)}.")
        if label_weight and not num_labels:
            raise ValueError("FIRELoss needs num_labels for its label term (label_weight > 0).")
        self.smoothness_weight = smoothness_weight
        self.label_weight = label_weight
        self.num_labels = num_labels
        self.similarity = similarity
        self.similarity_weight = similarity_weight
        self.weights = {name: 1.0 for name in FIRE_TERMS} | weights

    def terms(self, outputs: dict[str, torch.Tensor], target: dict | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each named term per sample, ``smoothness``, ``registration_similarity`` and ``label_overlap`` (unweighted) included."""
        values = {name: sum(rms(outputs[a], outputs[b]) for a, b in pairs) for name, pairs in FIRE_TERMS.items()}
        fields = [outputs["nonrigid_ab"], outputs["nonrigid_ba"]]
        values["smoothness"] = sum(smoothness(f) for f in fields)
        if self.similarity is not None:
            pairs = (("x_a_warped", "x_b"), ("x_b_warped", "x_a"))
            values["registration_similarity"] = sum(self.similarity(outputs[a], outputs[b]) for a, b in pairs)
        if self.label_weight:
            if not isinstance(target, dict) or not {"moving_label", "fixed_label"} <= set(target):
                raise ValueError("FIRELoss's label term needs the pair's moving_label and fixed_label as target (prepare_labelled_batch).")
            values["label_overlap"] = label_overlap(outputs, target, self.num_labels)
        return values

    def forward(self, outputs: dict[str, torch.Tensor], target: dict | torch.Tensor | None = None) -> torch.Tensor:
        values = self.terms(outputs, target)
        total = sum(self.weights[name] * values[name] for name in FIRE_TERMS) + self.smoothness_weight * values["smoothness"]
        if self.similarity is not None:
            total = total + self.similarity_weight * values["registration_similarity"]
        if self.label_weight:
            total = total + self.label_weight * values["label_overlap"]
        return reduce_per_sample(total, self.reduction)
