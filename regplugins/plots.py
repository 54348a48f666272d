"""PNG figures of registration results: slice overlays for ``make demo`` and the plots of ``regplugins bench``.

matplotlib is an optional dependency (the ``bundle`` and ``demo`` extras); it is imported here only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from regplugins.io import load_nifti
from regplugins.layers import jacobian_determinant, warp_physical


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def on_fixed_grid(path: str, fixed: str, mode: str = "bilinear") -> np.ndarray:
    """The image at ``path`` resampled onto the grid of ``fixed`` by world coordinates alone (no registration)."""
    image, affine = load_nifti(path)
    fixed_image, fixed_affine = load_nifti(fixed)
    zero = torch.zeros(1, 3, *fixed_image.shape)
    moved = warp_physical(torch.from_numpy(image)[None, None], torch.as_tensor(affine), zero, torch.as_tensor(fixed_affine), mode)
    return moved[0, 0].numpy()


def _window(image: np.ndarray) -> tuple[float, float]:
    """A display window that works for CT (HU) and MR alike: the 1st to 99th percentile of the foreground."""
    foreground = image[image > np.percentile(image, 5)]
    values = foreground if foreground.size else image
    return float(np.percentile(values, 1)), float(np.percentile(values, 99))


def save_slice_panels(panels: Sequence[tuple[np.ndarray, str]], outline: np.ndarray, path: str | Path, title: str = "") -> None:
    """One axial slice of each volume (all on one grid) side by side, with the red ``outline`` mask drawn on each."""
    plt = _pyplot()
    z = outline.shape[2] // 2
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.6), squeeze=False)
    for axis, (image, name) in zip(axes[0], panels):
        low, high = _window(image)
        axis.imshow(image[:, :, z].T, origin="lower", cmap="gray", vmin=low, vmax=high)
        axis.contour(outline[:, :, z].T, levels=[0.5], colors="red", linewidths=0.8)
        axis.set_title(name)
        axis.axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def save_dice_box_plot(dice_per_method: dict[str, Sequence[float]], path: str | Path) -> None:
    """Box plot of the per-pair mean Dice of every method."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(1.6 * len(dice_per_method) + 2, 4))
    axis.boxplot(list(dice_per_method.values()))
    axis.set_xticks(range(1, len(dice_per_method) + 1), list(dice_per_method), rotation=20, ha="right")
    axis.set_ylabel("mean Dice per pair")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def save_dice_vs_seconds_plot(points: dict[str, tuple[float, float]], path: str | Path) -> None:
    """Mean Dice against seconds per pair (log scale), one labelled point per method."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for method, (seconds, dice) in points.items():
        axis.scatter(max(seconds, 1e-3), dice)
        axis.annotate(method, (max(seconds, 1e-3), dice), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("seconds per pair (model load excluded)")
    axis.set_ylabel("mean Dice")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# display windows: CT in a soft-tissue window (HU), so that brain, muscle and fat all show; MR by percentiles
CT_WINDOW_HU = (-160.0, 240.0)


def _display_window(image: np.ndarray) -> tuple[float, float]:
    return CT_WINDOW_HU if float(image.min()) < -500.0 else _window(image)


def _outline_source(image: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The fixed image windowed to [0, 1] and smoothed over about 1.5 mm, whose iso-lines outline its structures."""
    from regplugins.layers import gaussian_smooth

    low, high = _display_window(image)
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)
    return gaussian_smooth(torch.from_numpy(scaled), [float(1.5 / s) for s in spacing]).numpy()


# iso-lines of the windowed fixed image drawn over the moving image: the head's outline and its inner structures
OUTLINE_LEVELS = (0.2, 0.55)


def save_registration_qc(fixed_path: str, moving_path: str, warped: np.ndarray, field: np.ndarray, path: str | Path) -> None:
    """``qc.png``: three planes through the fixed image's centre of mass, before and after, and the field's Jacobian.

    Columns: the fixed image; the moving image on the fixed grid before registration (by the
    headers alone) and after, each with the fixed image's outlines in colour over it, so that
    alignment can be judged at a glance; the Jacobian determinant of ``field`` (a physical RAS
    field on the fixed grid; 1 keeps volume, blue shrinks, red grows, black folds). Rows: axial,
    coronal and sagittal planes, shown as a radiologist expects whatever the grid's orientation;
    CT in a soft-tissue window.
    """
    import nibabel as nib

    plt = _pyplot()
    fixed, affine = load_nifti(fixed_path)
    volumes = [fixed, on_fixed_grid(moving_path, fixed_path), warped, jacobian_determinant(field, affine)]
    # to RAS axis order, so that every row shows its plane the right way up
    orientation = nib.orientations.io_orientation(affine)
    volumes = [nib.orientations.apply_orientation(v, orientation) for v in volumes]
    spacing = np.empty(3)
    spacing[orientation[:, 0].astype(int)] = np.linalg.norm(affine[:3, :3], axis=0)
    foreground = np.clip(volumes[0] - _display_window(volumes[0])[0], 0, None)
    profiles = [foreground.sum(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)]
    center = [int(round(float((np.arange(p.size) * p).sum() / max(p.sum(), 1e-6)))) for p in profiles]
    outline = _outline_source(volumes[0], spacing)
    planes = [("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2))]
    titles = ["fixed", "moving before, fixed outlines", "moving after, fixed outlines", "Jacobian determinant"]
    figure, axes = plt.subplots(3, 4, figsize=(13, 10))
    for row, (plane, axis, (horizontal, vertical)) in enumerate(planes):
        aspect = spacing[vertical] / spacing[horizontal]
        for column, volume in enumerate(volumes):
            image = np.take(volume, center[axis], axis=axis).T
            ax = axes[row, column]
            if column == 3:
                shown = ax.imshow(np.where(image <= 0, np.nan, image), origin="lower", cmap="coolwarm", vmin=0.5, vmax=1.5, aspect=aspect)
                ax.set_facecolor("black")
            else:
                low, high = _display_window(volumes[0] if column == 0 else volume)
                ax.imshow(image, origin="lower", cmap="gray", vmin=low, vmax=high, aspect=aspect)
                if column:
                    ax.contour(np.take(outline, center[axis], axis=axis).T, levels=OUTLINE_LEVELS, colors=["yellow", "cyan"], linewidths=0.7)
            ax.set_title(f"{titles[column]}" if row == 0 else "")
            ax.set_ylabel(plane)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.colorbar(shown, ax=axes[:, 3], shrink=0.6, label="volume change (black: folding)")
    figure.suptitle(f"{Path(moving_path).name} to {Path(fixed_path).name}")
    figure.savefig(path, dpi=80)
    plt.close(figure)
