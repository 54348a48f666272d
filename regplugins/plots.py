"""PNG figures of registration results: slice overlays for ``make demo`` and the plots of ``regplugins bench``.

matplotlib is an optional dependency (the ``bundle`` and ``demo`` extras); it is imported here only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from regplugins.io import load_nifti
from regplugins.layers import warp_physical


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
