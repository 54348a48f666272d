"""Synthetic multi-modal registration pairs with known deformations, in the spirit of SynthMorph.

A head-like label map (a random one per seed: scalp, skull, CSF rim and random interior
structures; or the MNI152 head of :mod:`regplugins.data.anatomy`, optionally deformed into one
subject per seed; or the user's own label map) gets a tissue class per label; each modality
draws one mean intensity per label from its tissue's range (CT in Hounsfield units, MR in
arbitrary units) and adds texture, partial-volume blur, bias field, gamma and noise. The moving
anatomy is the fixed one seen through a random rigid (or, with ``scaling``, affine) motion
composed with a diffeomorphism (a stationary velocity field integrated by scaling and
squaring), so the true field, both label maps and the same anatomy in every modality on both
grids come with each pair.

All geometry is physical: each grid has its own ``(N + 1, N + 1)`` voxel-to-world (RAS) affine,
and the true field is the contract's ``ddf``: world point ``x`` of the fixed grid corresponds
to ``x + ddf(x)`` in the moving image. ``true_affine`` is the global part of that map (fixed world
point to moving world point, 4x4; rigid unless ``scaling`` is set), the whole of it when
``deformation_mm`` is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.networks.blocks import DVF2DDF
from monai.transforms import Transform

from regplugins.layers import apply_affine, sample, voxel_grid
from regplugins.utils import as_flag

from .anatomy import HEAD_TISSUES, mni152_head_labels

__all__ = ["TISSUES", "INTENSITY_RANGES", "SyntheticPairGenerator", "SynthesizePaird", "synthesize_image", "grid_affine"]

TISSUES = ("background", "csf", "grey_matter", "white_matter", "fat", "soft_tissue", "bone")
_T = {name: i for i, name in enumerate(TISSUES)}

# range of the per-label mean intensity, by modality and tissue (CT in HU, MR in [0, 1] before scaling)
INTENSITY_RANGES = {
    "ct": {
        "background": (-1000, -1000),
        "csf": (0, 15),
        "grey_matter": (35, 45),
        "white_matter": (20, 30),
        "fat": (-120, -80),
        "soft_tissue": (20, 60),
        "bone": (400, 1500),
    },
    "t1": {
        "background": (0.0, 0.02),
        "csf": (0.05, 0.25),
        "grey_matter": (0.35, 0.55),
        "white_matter": (0.6, 0.85),
        "fat": (0.75, 1.0),
        "soft_tissue": (0.3, 0.5),
        "bone": (0.0, 0.1),
    },
    "t2": {
        "background": (0.0, 0.02),
        "csf": (0.8, 1.0),
        "grey_matter": (0.45, 0.6),
        "white_matter": (0.3, 0.45),
        "fat": (0.2, 0.9),
        "soft_tissue": (0.25, 0.45),
        "bone": (0.0, 0.1),
    },
    "pd": {
        "background": (0.0, 0.02),
        "csf": (0.75, 0.95),
        "grey_matter": (0.6, 0.8),
        "white_matter": (0.5, 0.65),
        "fat": (0.6, 0.9),
        "soft_tissue": (0.45, 0.65),
        "bone": (0.0, 0.12),
    },
}

# label ids of the generated head; interior structures follow from FIRST_STRUCTURE_LABEL on
SCALP, SKULL, CSF_RIM, FIRST_STRUCTURE_LABEL = 1, 2, 3, 4
TEXTURES = ("independent", "shared", "none")
_INTERIOR_TISSUES = ("white_matter", "grey_matter", "csf", "grey_matter", "white_matter", "soft_tissue")


def grid_affine(spacing: Sequence[float], shape: Sequence[int], rotation: torch.Tensor | None = None) -> torch.Tensor:
    """Voxel-to-world affine of a grid centred on the world origin, optionally rotated."""
    n = len(shape)
    linear = torch.diag(torch.tensor([float(s) for s in spacing], dtype=torch.float64))
    if rotation is not None:
        linear = rotation.double() @ linear
    center = torch.tensor([(s - 1) / 2.0 for s in shape], dtype=torch.float64)
    affine = torch.eye(n + 1, dtype=torch.float64)
    affine[:n, :n] = linear
    affine[:n, n] = -linear @ center
    return affine


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _smooth_noise(shape: Sequence[int], scale: float, generator: torch.Generator, channels: int = 1, device=None) -> torch.Tensor:
    """Standard-normal noise on a coarse grid (``scale`` voxels apart), interpolated to ``shape`` on ``device``."""
    coarse = [max(2, math.ceil(s / max(scale, 1.0)) + 1) for s in shape]
    noise = torch.randn(1, channels, *coarse, generator=generator).to(device)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(noise, size=tuple(shape), mode=mode, align_corners=True)[0]


def _rotation_matrix(angles_deg: Sequence[float]) -> torch.Tensor:
    """Rotation from one angle (2D) or three Euler angles about x, y, z (3D), in degrees."""
    radians = [math.radians(a) for a in angles_deg]
    if len(radians) == 1:
        c, s = math.cos(radians[0]), math.sin(radians[0])
        return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    rotation = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(radians):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        elementary = torch.eye(3, dtype=torch.float64)
        elementary[i, i], elementary[i, j], elementary[j, i], elementary[j, j] = c, -s, s, c
        rotation = elementary @ rotation
    return rotation


def synthesize_image(
    labels: torch.Tensor,
    label_means: dict[int, float],
    modality: str,
    generator: torch.Generator,
    spacing: Sequence[float],
    texture: torch.Tensor | None = None,
    noise_scale: float = 1.0,
) -> torch.Tensor:
    """An image of ``modality`` from a label map ``(1, *spatial)`` and one mean intensity per label.

    Adds smooth texture, partial-volume blur and noise; MR images also get a multiplicative bias
    field, a random gamma and a random scale, as scanners give them. ``texture`` is a
    standard-normal field ``(*spatial)`` that the texture follows (drawn for this image if None);
    ``noise_scale`` multiplies the scanner noise's standard deviation.
    """
    shape, device = labels.shape[1:], labels.device
    image = torch.zeros(shape, dtype=torch.float32, device=device)
    for label, mean in label_means.items():
        image[labels[0] == label] = mean
    is_ct = modality == "ct"
    contrast = 10.0 if is_ct else 0.05
    inside = labels[0] > 0
    amplitude = _uniform(0.1, 0.5, generator)
    if texture is None:
        texture = _smooth_noise(shape, 4.0, generator, device=device)[0]
    image = image + inside * contrast * amplitude * texture
    sigma = _uniform(0.3, 1.0, generator)
    image = _gaussian_blur(image, sigma)
    if not is_ct:
        bias = torch.exp(_uniform(0.05, 0.3, generator) * _smooth_noise(shape, 64.0 / min(spacing), generator, device=device)[0])
        image = (image * bias).clamp(min=0)
        image = (image / image.max().clamp(min=1e-6)) ** math.exp(_uniform(-0.25, 0.25, generator))
    noise_std = _uniform(2.0, 8.0, generator) if is_ct else _uniform(0.005, 0.03, generator)
    image = image + noise_scale * noise_std * torch.randn(shape, generator=generator).to(device)
    if not is_ct:
        image = image.clamp(min=0) * _uniform(500.0, 2000.0, generator)
    return image.unsqueeze(0)


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    n = image.dim()
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = image[None, None]
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    for axis in range(n):
        shape = [1] * n
        shape[axis] = kernel.numel()
        padding = [0] * n
        padding[axis] = radius
        padded = F.pad(out, [p for r in reversed(padding) for p in (r, r)], mode="replicate")
        out = conv(padded, kernel.view(1, 1, *shape))
    return out[0, 0]


class SyntheticPairGenerator:
    """Makes one multi-modal pair per seed; see the module docstring for what a pair holds.

    Args:
        shape: spatial shape of the fixed grid (2 or 3 axes).
        spacing: voxel size in mm of the fixed grid.
        modalities: (moving, fixed) modalities, each of ``ct``, ``t1``, ``t2``, ``pd``.
        random_direction: swap the two modalities for a random half of the seeds, so that a
            network trained on the pairs works in either direction.
        num_structures: random interior structures of the generated head.
        skull_probability: share of heads with scalp and skull (the rest are skull-stripped brains).
        rotation_deg, translation_mm: bounds of the uniform random rigid motion per axis.
        scaling: bound of a random scaling per axis, ``1 +- scaling`` about the grid's centre, which
            makes the global motion affine (FIRE's training data); 0 keeps it rigid.
        deformation_mm: standard deviation of the velocity field; 0 makes rigid-only pairs.
        deformation_scale_mm: spacing of the velocity field's random control values.
        moving_grid: ``"same"`` as the fixed grid, or ``"random"``: another orientation, spacing
            and size, as two scans of one patient have.
        intensity_spread: share of each tissue's intensity range that a label's mean is drawn
            from, centred on the range's middle. 1 (the default) varies contrast from pair to
            pair as different scanners and protocols do; near 0 every pair has one protocol's
            contrast, as in a study that scanned every subject alike (FIRE's training data).
        anatomy: ``"generated"``, a random head per seed, or ``"mni152"``: the MNI152 head
            (:func:`regplugins.data.anatomy.mni152_head_labels`, needs nilearn) on the fixed grid,
            one anatomy that every pair shares as real heads do.
        subject_deformation_mm: standard deviation of a random diffeomorphism (at
            ``deformation_scale_mm``) applied to the anatomy before the pair is made: with the
            ``"mni152"`` anatomy or a user's label map, one subject per seed; 0 keeps it as is.
        labels, labels_affine, tissue_of_label: the user's label map ``(1, *spatial)`` with its
            affine and the tissue name of each label, instead of ``anatomy``; ``shape`` and
            ``spacing`` are then taken from it.
        texture: the smooth texture inside each tissue. ``"independent"``: each image draws its
            own, so fine structure in one modality has no counterpart in the other.
            ``"shared"``: one texture of the anatomy, carried to the moving grid with the labels,
            as the fine anatomy (vessels, sulci) that both modalities show; each image weighs it
            by its own amplitude. ``"none"``: tissues of uniform intensity before blur and noise.
        noise_scale: factor on each image's scanner noise (drawn per image from 2-8 HU for CT,
            0.5-3 % of the range for MR); 0 makes noise-free pairs.
        paired_images: how each grid's anatomy is imaged in the other modality (``fixed_paired``,
            ``moving_paired``). ``"rendered"``: drawn anew on that grid, exactly aligned, with its
            own bias field, texture and noise. ``"registered"``: the other image resampled onto the
            grid through the true transform, as paired training data are made from one subject's
            two scans (the dual-similarity paper registers each subject's MR to its CT): the same
            scan, so the intra-modality terms compare an image with a warped copy of itself.
        device: where the volumes are computed and returned; a GPU takes the interpolation,
            blurring and warping off CPU cores that training runs need. Random numbers are drawn
            on the CPU from the seed either way, so a seed makes the same pair on every device,
            up to floating-point rounding.
    """

    def __init__(
        self,
        shape: Sequence[int] = (96, 96, 96),
        spacing: float | Sequence[float] = 2.0,
        modalities: Sequence[str] = ("ct", "t1"),
        random_direction: bool = False,
        num_structures: int = 8,
        skull_probability: float = 0.7,
        rotation_deg: float = 5.0,
        translation_mm: float = 5.0,
        scaling: float = 0.0,
        deformation_mm: float = 3.0,
        deformation_scale_mm: float = 32.0,
        moving_grid: str = "same",
        intensity_spread: float = 1.0,
        anatomy: str = "generated",
        subject_deformation_mm: float = 0.0,
        labels: torch.Tensor | None = None,
        labels_affine: torch.Tensor | None = None,
        tissue_of_label: dict[int, str] | None = None,
        texture: str = "independent",
        noise_scale: float = 1.0,
        paired_images: str = "rendered",
        device: str | torch.device | None = None,
    ):
        if isinstance(modalities, str):
            modalities = modalities.split(",")
        modalities = tuple(m.strip().lower() for m in modalities)
        unknown = [m for m in modalities if m not in INTENSITY_RANGES]
        if len(modalities) != 2 or unknown:
            raise ValueError(f"modalities must be two of {sorted(INTENSITY_RANGES)}, got {modalities}.")
        if moving_grid not in ("same", "random"):
            raise ValueError(f'moving_grid must be "same" or "random", got "{moving_grid}".')
        if not 0.0 <= intensity_spread <= 1.0:
            raise ValueError(f"intensity_spread must lie in [0, 1], got {intensity_spread}.")
        if paired_images not in ("rendered", "registered"):
            raise ValueError(f'paired_images must be "rendered" or "registered", got "{paired_images}".')
        if texture not in TEXTURES:
            raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}.")
        if anatomy not in ("generated", "mni152"):
            raise ValueError(f'anatomy must be "generated" or "mni152", got "{anatomy}".')
        if labels is not None:
            if labels_affine is None or tissue_of_label is None:
                raise ValueError("a user label map needs labels_affine and tissue_of_label as well.")
            shape = labels.shape[1:]
            spacing = [float(v) for v in labels_affine[:-1, :-1].norm(dim=0)]
        self.shape = tuple(int(s) for s in shape)
        self.spatial_dims = len(self.shape)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"shape must have 2 or 3 axes, got {self.shape}.")
        if anatomy == "mni152" and self.spatial_dims != 3:
            raise ValueError(f"the mni152 anatomy is a 3D head; shape {self.shape} has {self.spatial_dims} axes.")
        spacing = [float(spacing)] * self.spatial_dims if isinstance(spacing, (int, float)) else list(spacing)
        self.spacing = spacing
        self.modalities, self.random_direction = modalities, as_flag(random_direction, "random_direction")
        self.num_structures, self.skull_probability = num_structures, skull_probability
        self.rotation_deg, self.translation_mm, self.scaling = rotation_deg, translation_mm, scaling
        self.deformation_mm, self.deformation_scale_mm = deformation_mm, deformation_scale_mm
        self.moving_grid, self.intensity_spread = moving_grid, intensity_spread
        self.subject_deformation_mm, self.paired_images = subject_deformation_mm, paired_images
        self.texture, self.noise_scale = texture, noise_scale
        self.fixed_affine = labels_affine.double() if labels is not None else grid_affine(spacing, self.shape)
        if labels is None and anatomy == "mni152":
            labels, tissue_of_label = mni152_head_labels(self.shape, self.fixed_affine), HEAD_TISSUES
        self.device = torch.device(device or "cpu")
        self.user_labels = None if labels is None else labels.long().to(self.device)
        self.tissue_of_label = tissue_of_label
        self.integrate = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="border")

    # -- anatomy --------------------------------------------------------------------------
    def _head_labels(self, generator: torch.Generator) -> tuple[torch.Tensor, dict[int, str]]:
        n, shape = self.spatial_dims, self.shape
        extent = torch.tensor([s * p for s, p in zip(shape, self.spacing)])
        world = apply_affine(self.fixed_affine.float(), voxel_grid(shape, device=self.device))
        center = torch.tensor([_uniform(-0.03, 0.03, generator) * e for e in extent.tolist()], device=self.device)
        semi_axes = torch.tensor([_uniform(0.36, 0.44, generator) * e for e in extent.tolist()], device=self.device)
        offset = (world - center.view(n, *([1] * n))) / semi_axes.view(n, *([1] * n))
        radius = offset.norm(dim=0) + 0.04 * _smooth_noise(shape, 12.0, generator, device=self.device)[0]
        mean_axis = semi_axes.mean().item()
        with_skull = _uniform(0, 1, generator) < self.skull_probability
        scalp = _uniform(4.0, 8.0, generator) / mean_axis if with_skull else 0.0
        skull = _uniform(4.0, 9.0, generator) / mean_axis if with_skull else 0.0
        rim = _uniform(2.0, 5.0, generator) / mean_axis
        labels = torch.zeros(shape, dtype=torch.int64, device=self.device)
        structures = _smooth_noise(shape, _uniform(6.0, 14.0, generator), generator, channels=self.num_structures, device=self.device)
        labels[:] = FIRST_STRUCTURE_LABEL + structures.argmax(dim=0)
        labels[radius >= 1 - scalp - skull - rim] = CSF_RIM
        labels[radius >= 1 - scalp - skull] = SKULL
        labels[radius >= 1 - scalp] = SCALP
        labels[radius >= 1] = 0
        tissues = {0: "background", CSF_RIM: "csf"}
        if with_skull:
            tissues.update({SCALP: "soft_tissue", SKULL: "bone"})
        for k in range(self.num_structures):
            pick = k if k < 3 else int(torch.randint(len(_INTERIOR_TISSUES), (), generator=generator))
            tissues[FIRST_STRUCTURE_LABEL + k] = _INTERIOR_TISSUES[pick]
        return labels.unsqueeze(0), tissues

    # -- geometry --------------------------------------------------------------------------
    def _displacements(self, generator: torch.Generator, deformation_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Voxel DDFs ``(1, N, *shape)`` of a random diffeomorphism on the fixed grid and of its inverse.

        The velocity field is integrated at half resolution (it is smooth at the scale of its
        control values) and the two displacements are interpolated back, which is 6x faster.
        """
        n = self.spatial_dims
        half = [max(4, s // 2) for s in self.shape]
        voxel_size = torch.tensor([p * s / h for p, s, h in zip(self.spacing, self.shape, half)], dtype=torch.float32, device=self.device)
        scale = self.deformation_scale_mm / voxel_size.min().item()
        velocity = deformation_mm * _smooth_noise(half, scale, generator, channels=n, device=self.device)
        velocity = (velocity / voxel_size.view(n, *([1] * n))).unsqueeze(0)
        mode = "bilinear" if n == 2 else "trilinear"
        factor = torch.tensor([s / h for s, h in zip(self.shape, half)], device=self.device).view(1, n, *([1] * n))
        return tuple(F.interpolate(self.integrate(v), size=self.shape, mode=mode, align_corners=True) * factor for v in (velocity, -velocity))

    def _global_motion(self, generator: torch.Generator) -> torch.Tensor:
        """World-frame rigid (with ``scaling``, affine) motion about the fixed grid's centre, ``(N + 1, N + 1)``."""
        n = self.spatial_dims
        num_angles = 1 if n == 2 else 3
        angles = [_uniform(-self.rotation_deg, self.rotation_deg, generator) for _ in range(num_angles)]
        translation = torch.tensor([_uniform(-self.translation_mm, self.translation_mm, generator) for _ in range(n)])
        center = self.fixed_affine[:n, :n] @ torch.tensor([(s - 1) / 2.0 for s in self.shape], dtype=torch.float64)
        center = center + self.fixed_affine[:n, n]
        linear = _rotation_matrix(angles)
        if self.scaling:  # drawn only when asked for, so rigid sets keep their seeds' pairs
            scales = [_uniform(1 - self.scaling, 1 + self.scaling, generator) for _ in range(n)]
            linear = linear @ torch.diag(torch.tensor(scales, dtype=torch.float64))
        motion = torch.eye(n + 1, dtype=torch.float64)
        motion[:n, :n] = linear
        motion[:n, n] = center - linear @ center + translation.double()
        return motion

    def _moving_geometry(self, generator: torch.Generator) -> tuple[torch.Tensor, tuple[int, ...]]:
        if self.moving_grid == "same":
            return self.fixed_affine.clone(), self.shape
        n = self.spatial_dims
        spacing = [p * _uniform(0.8, 1.3, generator) for p in self.spacing]
        shape = tuple(max(8, int(round(s * p / q))) for s, p, q in zip(self.shape, self.spacing, spacing))
        # a different orientation: flip some axes and permute them, as scanners store volumes
        permutation = torch.randperm(n, generator=generator)
        signs = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
        rotation = torch.eye(n, dtype=torch.float64)[:, permutation] * signs
        shape = tuple(shape[int(p)] for p in permutation)
        spacing = [spacing[int(p)] for p in permutation]
        return grid_affine(spacing, shape, rotation), shape

    def _label_mean(self, modality: str, tissue: str, generator: torch.Generator) -> float:
        low, high = INTENSITY_RANGES[modality][tissue]
        middle, half_width = (low + high) / 2, self.intensity_spread * (high - low) / 2
        return _uniform(middle - half_width, middle + half_width, generator)

    # -- one pair --------------------------------------------------------------------------
    def __call__(self, seed: int) -> dict:
        generator = torch.Generator().manual_seed(int(seed))
        if self.user_labels is not None:
            fixed_labels, tissues = self.user_labels, dict(self.tissue_of_label)
        else:
            fixed_labels, tissues = self._head_labels(generator)
        moving_modality, fixed_modality = self.modalities
        if self.random_direction and _uniform(0, 1, generator) < 0.5:
            moving_modality, fixed_modality = fixed_modality, moving_modality

        n = self.spatial_dims
        if self.subject_deformation_mm:  # drawn only when asked for, so other sets keep their seeds' pairs
            subject, _ = self._displacements(generator, self.subject_deformation_mm)
            subject_points = voxel_grid(self.shape, device=self.device).unsqueeze(0) + subject
            fixed_labels = sample(fixed_labels[None].float(), subject_points, mode="nearest")[0].long()
        forward, backward = self._displacements(generator, self.deformation_mm)
        motion = self._global_motion(generator)
        moving_affine, moving_shape = self._moving_geometry(generator)

        # moving voxel -> world -> global motion -> fixed voxel -> diffeomorphism -> anatomy
        to_fixed_voxel = torch.linalg.inv(self.fixed_affine) @ motion @ moving_affine
        moving_voxels = voxel_grid(moving_shape, device=self.device, dtype=torch.float64)
        points = apply_affine(to_fixed_voxel, moving_voxels).float().unsqueeze(0)
        points = points + sample(forward, points, padding_mode="border")
        moving_labels = sample(fixed_labels[None].float(), points, mode="nearest")[0].long()

        # true field: fixed voxel -> inverse diffeomorphism -> world -> inverse motion, minus the start
        fixed_voxels = voxel_grid(self.shape, device=self.device).unsqueeze(0)
        anatomy = (fixed_voxels + backward)[0].double()
        corresponding = apply_affine(torch.linalg.inv(motion) @ self.fixed_affine, anatomy)
        true_ddf = (corresponding - apply_affine(self.fixed_affine, fixed_voxels[0].double())).float()

        means = {
            modality: {label: self._label_mean(modality, tissue, generator) for label, tissue in tissues.items()}
            for modality in (moving_modality, fixed_modality)
        }
        moving_spacing = [float(v) for v in moving_affine[:n, :n].norm(dim=0)]

        fixed_texture = moving_texture = None  # None: each image draws its own
        if self.texture == "shared":
            fixed_texture = _smooth_noise(self.shape, 4.0, generator, device=self.device)
            moving_texture = sample(fixed_texture[None], points, padding_mode="border")[0, 0]
            fixed_texture = fixed_texture[0]
        elif self.texture == "none":
            fixed_texture, moving_texture = torch.zeros(self.shape, device=self.device), torch.zeros(moving_shape, device=self.device)

        def image(labels, modality, affine, spacing, texture):
            return MetaTensor(synthesize_image(labels, means[modality], modality, generator, spacing, texture, self.noise_scale), affine=affine)

        def resampled(scan, voxel_points, affine):  # the other scan at its corresponding points
            return MetaTensor(sample(scan.as_tensor()[None], voxel_points, padding_mode="border")[0], affine=affine)

        fixed = image(fixed_labels, fixed_modality, self.fixed_affine, self.spacing, fixed_texture)
        moving = image(moving_labels, moving_modality, moving_affine, moving_spacing, moving_texture)
        if self.paired_images == "registered":
            moving_points = apply_affine(torch.linalg.inv(moving_affine), corresponding).float().unsqueeze(0)
            fixed_paired = resampled(moving, moving_points, self.fixed_affine)
            moving_paired = resampled(fixed, points, moving_affine)
        else:
            fixed_paired = image(fixed_labels, moving_modality, self.fixed_affine, self.spacing, fixed_texture)
            moving_paired = image(moving_labels, fixed_modality, moving_affine, moving_spacing, moving_texture)
        return {
            "fixed": fixed,
            "moving": moving,
            "fixed_label": MetaTensor(fixed_labels.float(), affine=self.fixed_affine),
            "moving_label": MetaTensor(moving_labels.float(), affine=moving_affine),
            "fixed_paired": fixed_paired,
            "moving_paired": moving_paired,
            "true_ddf": MetaTensor(true_ddf, affine=self.fixed_affine),
            "true_affine": torch.linalg.inv(motion),
            "fixed_modality": fixed_modality,
            "moving_modality": moving_modality,
        }


class SynthesizePaird(Transform):
    """Dictionary transform that replaces ``data["seed"]`` by the pair of that seed.

    Lets a plain ``monai.data.Dataset`` of ``[{"seed": s}, ...]`` serve synthetic pairs, so the
    training and validation data of a bundle need no files. A pair depends on its seed alone, so
    it is a deterministic MONAI ``Transform``: a ``CacheDataset`` synthesises each pair once.
    """

    def __init__(self, **generator_args):
        self.generator = SyntheticPairGenerator(**generator_args)

    def __call__(self, data: dict) -> dict:
        out = {k: v for k, v in data.items() if k != "seed"}
        out.update(self.generator(int(data["seed"])))
        return out
