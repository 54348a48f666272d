"""Rigid transforms as ITK writes them: Euler angles, translation and centre, in LPS millimetres.

The rigid bundle's network regresses six numbers, ITK's ``Euler3DTransform`` parameters: the
rotations about x, y and z (here in degrees) and the translation (mm), about a centre ``c``. The
transform maps a fixed point to the moving point it samples, ``y = R (x - c) + c + t``, with
ITK's default order ``R = Rz Rx Ry``. Everything here is in ITK's LPS world frame; NIfTI's RAS
matrices convert with :func:`ras_to_lps` (the same conjugation both ways).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "euler_rotation",
    "euler_angles",
    "rigid_matrix",
    "rigid_parameters",
    "ras_to_lps",
    "random_rigid_parameters",
    "grid_center_lps",
    "rigid_field",
    "write_rigid_files",
]

_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_to_lps(matrix: np.ndarray) -> np.ndarray:
    """A 4x4 world transform in RAS as the same transform in LPS (and back: the conjugation is its own inverse)."""
    return _FLIP @ np.asarray(matrix, dtype=np.float64) @ _FLIP


def euler_rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """``Rz Rx Ry`` of the three angles (degrees) about x, y and z, as ITK's Euler3DTransform builds it."""
    ax, ay, az = (math.radians(float(a)) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ rx @ ry


def euler_angles(rotation: np.ndarray) -> np.ndarray:
    """The angles (degrees) of :func:`euler_rotation` that give ``rotation``; x in [-90, 90] degrees."""
    r = np.asarray(rotation, dtype=np.float64)
    ax = math.asin(float(np.clip(r[2, 1], -1.0, 1.0)))
    ay = math.atan2(-r[2, 0], r[2, 2])
    az = math.atan2(-r[0, 1], r[1, 1])
    return np.degrees([ax, ay, az])


def rigid_matrix(angles_deg: Sequence[float], translation_mm: Sequence[float], center_mm: Sequence[float]) -> np.ndarray:
    """The 4x4 matrix of ``x -> R (x - c) + c + t``."""
    rotation, center = euler_rotation(angles_deg), np.asarray(center_mm, dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = center + np.asarray(translation_mm, dtype=np.float64) - rotation @ center
    return matrix


def rigid_parameters(matrix: np.ndarray, center_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The angles (degrees) and translation (mm) about ``center_mm`` of a 4x4 rigid matrix."""
    matrix, center = np.asarray(matrix, dtype=np.float64), np.asarray(center_mm, dtype=np.float64)
    translation = matrix[:3, :3] @ center + matrix[:3, 3] - center
    return euler_angles(matrix[:3, :3]), translation


def random_rigid_parameters(
    rng: np.random.Generator, max_rotation_deg: float = 15.0, max_translation_mm: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's augmentation: a rotation by up to ``max_rotation_deg`` about a random axis, and a
    translation of up to ``max_translation_mm`` along each axis; returned as Euler angles and translation."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew  # Rodrigues
    return euler_angles(rotation), rng.uniform(-max_translation_mm, max_translation_mm, size=3)


def grid_center_lps(affine: np.ndarray, spatial_shape) -> np.ndarray:
    """World centre (LPS mm) of a grid with RAS voxel-to-world ``affine``: the centre the rigid parameters turn about."""
    affine = np.asarray(affine, dtype=np.float64)
    center = affine[:3, :3] @ ((np.asarray(spatial_shape, dtype=np.float64) - 1) / 2) + affine[:3, 3]
    return center * np.array([-1.0, -1.0, 1.0])


def rigid_field(matrix_lps: np.ndarray, affine: np.ndarray, spatial_shape) -> np.ndarray:
    """The contract's dense field ``(3, *spatial_shape)`` (RAS mm) of a rigid transform on the grid of ``affine``: ``T(x) - x``."""
    import torch

    from regplugins.layers import apply_affine, voxel_grid

    voxel_to_displacement = torch.from_numpy(ras_to_lps(matrix_lps) @ affine - affine)
    return apply_affine(voxel_to_displacement, voxel_grid(spatial_shape, dtype=torch.float64)).float().numpy()


def write_rigid_files(folder: str | Path, matrix_lps: np.ndarray, center_mm: Sequence[float], **details) -> None:
    """Write the contract's ``rigid.tfm`` (an ITK Euler3DTransform) and ``rigid.json`` into ``folder``.

    ``matrix_lps`` maps a fixed LPS point to the moving one; ``details`` (e.g. the roles chosen by
    the modality classifier and its probability) go into the JSON as they are. The ``.tfm`` is
    ITK's text transform format, written directly (importing ITK takes seconds): the angles in
    radians and the translation, then the centre and ITK's flag for the default X-Y-Z order,
    each number in the shortest form that reads back exactly.
    """
    folder = Path(folder)
    angles, translation = rigid_parameters(matrix_lps, center_mm)
    parameters = [math.radians(a) for a in angles] + [float(t) for t in translation]
    fixed_parameters = [float(c) for c in center_mm] + [0]
    (folder / "rigid.tfm").write_text(
        "#Insight Transform File V1.0\n#Transform 0\nTransform: Euler3DTransform_double_3_3\n"
        f"Parameters: {' '.join(map(repr, parameters))}\nFixedParameters: {' '.join(map(repr, fixed_parameters))}\n"
    )
    record = {
        "matrix": np.asarray(matrix_lps, dtype=np.float64).tolist(),
        "rotation_deg": [float(a) for a in angles],
        "translation_mm": [float(t) for t in translation],
        "center_mm": [float(c) for c in center_mm],
        **details,
    }
    (folder / "rigid.json").write_text(json.dumps(record, indent=2))


def read_rigid_tfm(path: str) -> np.ndarray:
    """The 4x4 LPS matrix (fixed point to moving point) of an ``Euler3DTransform`` file, as :func:`write_rigid_files` writes."""
    fields = dict(line.split(":", 1) for line in Path(path).read_text().splitlines() if ":" in line and not line.startswith("#"))
    if fields.get("Transform", "").strip() != "Euler3DTransform_double_3_3":
        raise ValueError(f"{path}: only ITK Euler3DTransform files (rigid.tfm) are read, found {fields.get('Transform', 'none').strip()!r}.")
    parameters = [float(v) for v in fields["Parameters"].split()]
    center = [float(v) for v in fields["FixedParameters"].split()[:3]]
    return rigid_matrix(np.degrees(parameters[:3]), parameters[3:], center)
