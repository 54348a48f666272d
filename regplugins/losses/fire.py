"""FIRE's loss, eq. 1-4 of the paper: synthesis, registration and regularization, all as RMS errors."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.nn.modules.loss import _Loss

from regplugins.layers import normalized_to_voxel

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
# term names before MONAI's spelling (regplugins 0.9.0), still read until 0.10.0
RENAMED_TERMS = {"synthesis_regularisation": "synthesis_regularization", "registration_regularisation": "registration_regularization"}


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square difference per sample."""
    return (a - b).square().flatten(1).mean(dim=1).add(1e-12).sqrt()


def smoothness(field: torch.Tensor) -> torch.Tensor:
    """``R_smooth`` of one normalised non-rigid field per sample: its mean squared Laplacian, in voxels of its own grid."""
    return laplacian(normalized_to_voxel(field)).square().sum(dim=1).flatten(1).mean(dim=1)


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

    Called as ``loss(outputs, target)`` by MONAI's trainer; ``outputs`` is the dictionary of
    :meth:`regplugins.networks.FIRENet.training_outputs`, which holds the inputs too, so
    ``target`` is ignored. :meth:`terms` gives each term's value for logging.
    """

    def __init__(
        self,
        smoothness_weight: float = 10.0,
        weights: dict[str, float] | None = None,
        similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        similarity_weight: float = 1.0,
        reduction: str = "mean",
    ):
        super().__init__(reduction=reduction)
        weights = dict(weights or {})
        for old, new in RENAMED_TERMS.items():
            if old in weights:
                warnings.warn(f"FIRE loss term {old} is {new} since regplugins 0.9.0; the old name goes in 0.10.0.", FutureWarning, stacklevel=2)
                weights[new] = weights.pop(old)
        unknown = set(weights) - set(FIRE_TERMS)
        if unknown:
            raise ValueError(f"unknown FIRE loss terms {sorted(unknown)}; choose from {sorted(FIRE_TERMS)}.")
        self.smoothness_weight = smoothness_weight
        self.similarity = similarity
        self.similarity_weight = similarity_weight
        self.weights = {name: 1.0 for name in FIRE_TERMS} | weights

    def terms(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each named term per sample, ``smoothness`` and ``registration_similarity`` (unweighted) included."""
        values = {name: sum(rms(outputs[a], outputs[b]) for a, b in pairs) for name, pairs in FIRE_TERMS.items()}
        fields = [outputs["nonrigid_ab"], outputs["nonrigid_ba"]]
        values["smoothness"] = sum(smoothness(f) for f in fields)
        if self.similarity is not None:
            pairs = (("x_a_warped", "x_b"), ("x_b_warped", "x_a"))
            values["registration_similarity"] = sum(self.similarity(outputs[a], outputs[b]) for a, b in pairs)
        return values

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor | None = None) -> torch.Tensor:
        values = self.terms(outputs)
        total = sum(self.weights[name] * values[name] for name in FIRE_TERMS) + self.smoothness_weight * values["smoothness"]
        if self.similarity is not None:
            total = total + self.similarity_weight * values["registration_similarity"]
        return reduce_per_sample(total, self.reduction)
