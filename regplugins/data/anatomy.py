"""Real anatomy for the synthetic generator: the MNI152 template that nilearn ships, as label maps.

The generated heads of :mod:`regplugins.data.synth` are random ellipsoids with random interior
blobs, so no two share an anatomy and nothing in one image says which way it is turned. Real
heads share one anatomy, and a network that regresses a rigid motion from each image's own
features (the rigid head bundle) needs that. nilearn's copy of the MNI152 2009 template is
skull-stripped, so :func:`mni152_head_labels` adds a CSF rim, a skull and a scalp as shells of
given thickness around the brain mask; the ``subject_deformation_mm`` of
:class:`~regplugins.data.SyntheticPairGenerator` then makes one subject of it per seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from regplugins.layers import apply_affine, sample, voxel_grid

__all__ = ["BRAIN_TISSUES", "HEAD_TISSUES", "mni152_brain", "mni152_head_labels"]

BRAIN_TISSUES = {0: "background", 1: "csf", 2: "grey_matter", 3: "white_matter"}
HEAD_TISSUES = {**BRAIN_TISSUES, 4: "bone", 5: "soft_tissue"}


def mni152_brain() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 T1 (2 mm), its affine, and a CSF/grey/white label map (1/2/3) from nilearn's tissue maps."""
    try:
        from nilearn import datasets
    except ImportError as error:
        raise ImportError("the MNI152 anatomy needs nilearn, which ships the template: pip install 'regplugins[anatomy]'") from error

    template = datasets.load_mni152_template(resolution=2)
    grey = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    white = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
    csf = np.clip(1.0 - grey - white, 0.0, None)
    labels = (np.argmax(np.stack([csf, grey, white]), axis=0) + 1) * mask
    return template.get_fdata().astype(np.float32), template.affine, labels.astype(np.int16)


@lru_cache(maxsize=1)
def _centered_head(csf_mm: float, skull_mm: float, scalp_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The brain labels with the three shells on the template's grid, padded to hold them, and that
    grid's affine moved so that the head's bounding box is centred on the world origin."""
    from scipy.ndimage import distance_transform_edt

    _, affine, brain = mni152_brain()
    spacing = np.abs(np.diag(affine)[:3])
    pad = int(np.ceil((csf_mm + skull_mm + scalp_mm) / spacing.min())) + 1
    brain = np.pad(brain, pad)
    distance_mm = distance_transform_edt(brain == 0, sampling=spacing)
    head = brain.astype(np.int64)
    outside = head == 0
    head[outside & (distance_mm <= csf_mm + skull_mm + scalp_mm)] = 5
    head[outside & (distance_mm <= csf_mm + skull_mm)] = 4
    head[outside & (distance_mm <= csf_mm)] = 1
    inside = np.argwhere(head > 0)
    centered = affine.copy()
    centered[:3, 3] = -affine[:3, :3] @ ((inside.min(0) + inside.max(0)) / 2.0)
    return torch.from_numpy(head)[None, None].float(), torch.from_numpy(centered)


def mni152_head_labels(shape: Sequence[int], affine: torch.Tensor, csf_mm: float = 2.0, skull_mm: float = 6.0, scalp_mm: float = 5.0) -> torch.Tensor:
    """The MNI152 head's labels (:data:`HEAD_TISSUES`) on the grid of ``shape`` and ``affine``, ``(1, *shape)``.

    The head's bounding box is centred on the world origin (a grid made by
    :func:`~regplugins.data.grid_affine` is centred there too), in its template orientation
    (RAS), sampled by nearest neighbour.
    """
    head, head_affine = _centered_head(float(csf_mm), float(skull_mm), float(scalp_mm))
    to_head_voxel = torch.linalg.inv(head_affine) @ affine.double()
    points = apply_affine(to_head_voxel, voxel_grid(shape, dtype=torch.float64)).float().unsqueeze(0)
    return sample(head, points, mode="nearest")[0].long()
