"""Registration metrics, computed from the files a bundle writes so that every method is scored alike.

Overlap and surface distances come from MONAI (``compute_dice``, ``compute_hausdorff_distance``,
``compute_average_surface_distance``, with the voxel spacing so they are in mm); the field
metrics (Jacobian folding, inverse consistency, error against a true field, rigid errors) are
MONAI-less and live here (the Jacobian determinant itself in :mod:`regplugins.layers`, below the
qc picture that maps it). Fields are physical ``(N, *spatial)`` arrays in RAS mm with the
affine of their grid, as :func:`regplugins.io.load_itk_displacement_field` returns them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

from regplugins.io import RAS_TO_LPS, load_itk_displacement_field, load_nifti, pair_output_name
from regplugins.layers import jacobian_determinant, warp_physical

__all__ = [
    "label_overlap",
    "jacobian_determinant",
    "folding_percent",
    "std_log_jacobian",
    "inverse_consistency_error",
    "field_error",
    "rigid_errors",
    "fit_rigid",
    "read_rigid_matrix",
    "similarity_to_truth",
    "score_registration",
    "score_datalist",
]


def label_overlap(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], labels: Sequence[int] | None = None) -> dict[int, dict[str, float]]:
    """Dice, HD95 and ASD (mm) per label, for two label maps on one grid.

    A label missing from either map gets Dice 0 and NaN distances.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} and {truth.shape}.")
    if labels is None:
        labels = sorted(int(v) for v in np.unique(truth) if v != 0)
    pred_t, truth_t = torch.as_tensor(np.rint(pred)), torch.as_tensor(np.rint(truth))
    results = {}
    for label in labels:
        p = (pred_t == label)[None, None].float()
        t = (truth_t == label)[None, None].float()
        dice = float(compute_dice(p, t, include_background=True)[0, 0])
        if p.sum() == 0 or t.sum() == 0:
            results[int(label)] = {"dice": 0.0 if t.sum() > 0 else math.nan, "hd95": math.nan, "asd": math.nan}
            continue
        hd95 = float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=list(spacing))[0, 0])
        asd = float(compute_average_surface_distance(p, t, include_background=True, symmetric=True, spacing=list(spacing))[0, 0])
        results[int(label)] = {"dice": dice, "hd95": hd95, "asd": asd}
    return results


def folding_percent(jacobian: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percentage of voxels whose Jacobian determinant is not positive (the transform folds there)."""
    values = jacobian if mask is None else jacobian[mask > 0]
    return float(100.0 * np.mean(values <= 0))


def std_log_jacobian(jacobian: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Standard deviation of log J, with J clipped at 1e-9 (smoothness of the volume change)."""
    values = jacobian if mask is None else jacobian[mask > 0]
    return float(np.std(np.log(np.clip(values, 1e-9, None))))


def _sample_field(field: np.ndarray, affine: np.ndarray, at_field: np.ndarray, at_affine: np.ndarray) -> np.ndarray:
    """``field`` (on its grid) read at ``x + at_field(x)`` for the points x of another grid."""
    sampled = warp_physical(
        torch.from_numpy(field.astype(np.float32))[None],
        torch.as_tensor(affine),
        torch.from_numpy(at_field.astype(np.float32))[None],
        torch.as_tensor(at_affine),
        padding_mode="border",
    )
    return sampled[0].numpy()


def inverse_consistency_error(
    forward: np.ndarray, forward_affine: np.ndarray, inverse: np.ndarray, inverse_affine: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Mean distance in mm between ``x`` and ``x`` sent by the forward field and back by the inverse.

    ``forward`` lives on the fixed grid and maps fixed points to moving ones; ``inverse`` lives on
    the moving grid and maps back. Only the points ``x`` (in ``mask``) whose forward point lands
    inside the moving grid count: beyond it there is no inverse to check (a moving image that
    shows part of the head).
    """
    back = _sample_field(inverse, inverse_affine, forward, forward_affine)
    error = np.linalg.norm(forward + back, axis=0)
    n = forward.shape[0]
    voxels = np.stack(np.meshgrid(*[np.arange(s) for s in forward.shape[1:]], indexing="ij")).reshape(n, -1)
    moved = forward_affine[:n, :n] @ voxels + forward_affine[:n, n:] + forward.reshape(n, -1)
    on_inverse_grid = np.linalg.inv(inverse_affine)[:n, :n] @ moved + np.linalg.inv(inverse_affine)[:n, n:]
    counted = ((on_inverse_grid >= -0.5) & (on_inverse_grid < np.array(inverse.shape[1:])[:, None] - 0.5)).all(0).reshape(error.shape)
    if mask is not None:
        counted &= mask > 0
    return float(error[counted].mean()) if counted.any() else float("nan")


def field_error(field: np.ndarray, true_field: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean Euclidean distance in mm between an estimated and the true field on one grid."""
    error = np.linalg.norm(field - true_field, axis=0)
    return float(error.mean() if mask is None else error[mask > 0].mean())


def rigid_errors(matrix: np.ndarray, true_matrix: np.ndarray, center: Sequence[float] | None = None) -> dict[str, float]:
    """Rotation error (degrees, angle of R_true^T R) and translation error (mm) of two 4x4 rigid transforms.

    The translation error is measured at ``centre`` (default the origin): the distance between
    the points the two transforms send it to.
    """
    n = matrix.shape[0] - 1
    relative = true_matrix[:n, :n].T @ matrix[:n, :n]
    cosine = np.clip((np.trace(relative) - (n - 2)) / 2.0, -1.0, 1.0) if n == 3 else np.clip(relative[0, 0], -1.0, 1.0)
    point = np.append(np.zeros(n) if center is None else np.asarray(center, dtype=np.float64), 1.0)
    translation = np.linalg.norm((matrix @ point)[:n] - (true_matrix @ point)[:n])
    return {"rotation_error_deg": float(np.degrees(np.arccos(cosine))), "translation_error_mm": float(translation)}


def fit_rigid(field: np.ndarray, affine: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The rigid transform (4x4, RAS) closest in least squares to ``x -> x + field(x)`` (Kabsch).

    Gives every method, deformable ones included, a rotation and translation to compare with a
    rigid-only pair's true motion, from its written field alone.
    """
    n = field.shape[0]
    voxels = np.stack(np.meshgrid(*[np.arange(s) for s in field.shape[1:]], indexing="ij")).reshape(n, -1)
    points = affine[:n, :n] @ voxels + affine[:n, n:]
    moved = points + field.reshape(n, -1)
    if mask is not None:
        keep = mask.reshape(-1) > 0
        points, moved = points[:, keep], moved[:, keep]
    source_center, target_center = points.mean(axis=1, keepdims=True), moved.mean(axis=1, keepdims=True)
    u, _, vt = np.linalg.svd((moved - target_center) @ (points - source_center).T)
    reflection = np.diag([1.0] * (n - 1) + [np.sign(np.linalg.det(u @ vt))])
    rotation = u @ reflection @ vt
    matrix = np.eye(n + 1)
    matrix[:n, :n] = rotation
    matrix[:n, n] = (target_center - rotation @ source_center)[:, 0]
    return matrix


def similarity_to_truth(pred_mask: np.ndarray, true_mask: np.ndarray, image: np.ndarray, true_image: np.ndarray) -> dict[str, float]:
    """The rigid head paper's scores of a registration against the truth's (its eq. 1-6).

    DSC, JSC, registration precision ``Rp = |x & y| / |y|`` and sensitivity ``Rs = |x & y| / |x|``
    and the contour matching score (their harmonic mean) of the head masks (``y`` predicted,
    ``x`` true), and SSIM (MONAI's ``SSIMMetric``) of the warped image against the moving image
    warped by the true transform, both scaled by the latter's range.
    """
    from monai.metrics import SSIMMetric

    predicted, truth = pred_mask > 0, true_mask > 0
    overlap = float(np.logical_and(predicted, truth).sum())
    rp, rs = overlap / max(predicted.sum(), 1), overlap / max(truth.sum(), 1)
    low, high = float(true_image.min()), float(true_image.max())
    scaled = [torch.as_tensor((v - low) / max(high - low, 1e-6), dtype=torch.float32)[None, None] for v in (image, true_image)]
    return {
        "head_dsc": 2 * overlap / max(predicted.sum() + truth.sum(), 1),
        "head_jsc": overlap / max(np.logical_or(predicted, truth).sum(), 1),
        "rp": rp,
        "rs": rs,
        "cms": 2 * rp * rs / max(rp + rs, 1e-12),
        "ssim": float(SSIMMetric(spatial_dims=image.ndim, data_range=1.0)(*scaled).mean()),
    }


def read_rigid_matrix(path: str | Path) -> np.ndarray:
    """The ``"matrix"`` of a contract ``rigid.json`` (ITK: fixed LPS point to moving LPS point), as RAS."""
    flip = np.diag([*np.diag(RAS_TO_LPS), 1.0])
    return flip @ np.asarray(json.loads(Path(path).read_text())["matrix"], dtype=np.float64) @ flip


def score_registration(pair: dict, output_folder: str | Path, spatial_dims: int = 3) -> dict:
    """Score the contract outputs in ``output_folder`` for one datalist entry.

    Uses ``fixed_label`` (Dice, HD95, ASD of ``warped_label.nii.gz``), ``true_ddf`` (field error)
    and ``true_rigid`` (rotation and translation errors at the fixed grid's centre, and with
    ``true_ddf`` the rigid head paper's :func:`similarity_to_truth`) when the entry
    has them; ``ddf.nii.gz`` always gives folding and std(log J), and
    ``inverse_ddf.nii.gz``, when a bundle writes it, the inverse-consistency error and the inverse's
    own folding (FIRE's targets, both directions). The field error and the inverse consistency
    count the head alone (the fixed labels) when there are labels: beyond it no image shows
    where a point went, and a field is extrapolated there.
    """
    folder = Path(output_folder)
    fixed_label = load_nifti(pair["fixed_label"], spatial_dims) if pair.get("fixed_label") else None
    head = None if fixed_label is None else fixed_label[0] > 0
    field, affine = load_itk_displacement_field(folder / "ddf.nii.gz")
    jacobian = jacobian_determinant(field, affine)
    scores: dict = {"pair": folder.name, "folding_percent": folding_percent(jacobian), "std_log_jacobian": std_log_jacobian(jacobian)}
    if fixed_label is not None and (folder / "warped_label.nii.gz").exists():
        truth, truth_affine = fixed_label
        pred, _ = load_nifti(str(folder / "warped_label.nii.gz"), spatial_dims)
        spacing = np.linalg.norm(truth_affine[:spatial_dims, :spatial_dims], axis=0)
        per_label = label_overlap(pred, truth, spacing)
        scores["per_label"] = per_label
        for metric in ("dice", "hd95", "asd"):
            scores[metric] = float(np.nanmean([v[metric] for v in per_label.values()]))
    if pair.get("true_ddf"):
        true_field, _ = load_itk_displacement_field(pair["true_ddf"])
        scores["field_error_mm"] = field_error(field, true_field, head)
    if pair.get("true_rigid"):
        # a rigid bundle's own matrix where it writes one, else the rigid part of its field
        mask = None if fixed_label is None else fixed_label[0]
        rigid_file = folder / "rigid.json"
        matrix = read_rigid_matrix(rigid_file) if rigid_file.exists() else fit_rigid(field, affine, mask)
        center = affine[:spatial_dims, :spatial_dims] @ ((np.array(field.shape[1:]) - 1) / 2) + affine[:spatial_dims, spatial_dims]
        scores.update(rigid_errors(matrix, read_rigid_matrix(pair["true_rigid"]), center))
        if mask is not None and pair.get("true_ddf") and (folder / "warped_label.nii.gz").exists():
            from regplugins.outputs import warp_native_images

            true_warped = warp_native_images(true_field, pair["fixed"], pair["moving"])["warped"]
            warped, warped_label = (load_nifti(str(folder / name), spatial_dims)[0] for name in ("warped.nii.gz", "warped_label.nii.gz"))
            scores.update(similarity_to_truth(warped_label, mask, warped, true_warped))
    if (folder / "inverse_ddf.nii.gz").exists():
        inverse, inverse_affine = load_itk_displacement_field(folder / "inverse_ddf.nii.gz")
        scores["inverse_consistency_mm"] = inverse_consistency_error(field, affine, inverse, inverse_affine, head)
        scores["inverse_folding_percent"] = folding_percent(jacobian_determinant(inverse, inverse_affine))
    return scores


def score_datalist(pairs: Sequence[dict], output_dir: str | Path, spatial_dims: int = 3) -> dict:
    """Score every pair's outputs under ``output_dir``; writes and returns ``metrics.json`` (per pair and mean)."""
    output_dir = Path(output_dir)
    per_pair = [score_registration(pair, output_dir / pair_output_name(pair["moving"], pair["fixed"]), spatial_dims) for pair in pairs]
    keys = [k for k in per_pair[0] if isinstance(per_pair[0][k], float)]
    summary = {k: float(np.nanmean([p[k] for p in per_pair])) for k in keys}
    result = {"mean": summary, "pairs": per_pair}
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
