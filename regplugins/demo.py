"""``make demo``: a CT-like/T1 pair from real anatomy, registered by a bundle, with a before/after picture.

The fixed image is the MNI152 T1 template that nilearn ships; the moving image is a CT-like
image synthesised from the template's grey/white matter maps and moved by a known random
deformation. Without nilearn, a synthetic head pair stands in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from regplugins.data import SyntheticPairGenerator, write_synthetic_set
from regplugins.io import load_nifti, pair_output_name, save_itk_displacement_field, save_nifti
from regplugins.layers import warp_physical
from regplugins.metrics import label_overlap

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
DEMO_TISSUES = {0: "background", 1: "csf", 2: "grey_matter", 3: "white_matter"}


def mni_tissue_labels():
    """MNI152 T1 (2 mm), its affine, and a CSF/grey/white label map from nilearn's tissue maps."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    grey = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    white = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
    csf = np.clip(1.0 - grey - white, 0.0, None)
    labels = (np.argmax(np.stack([csf, grey, white]), axis=0) + 1) * mask
    return template.get_fdata().astype(np.float32), template.affine, labels.astype(np.int16)


def build_demo_pair(out: str | Path, seed: int = 0) -> dict:
    """Write the demo pair under ``out`` and return its datalist entry (paths and what it was made from)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        t1, affine, labels = mni_tissue_labels()
    except ImportError:
        datalist = write_synthetic_set(out, n=1, shape=(96, 96, 96), modalities=("ct", "t1"), seed=seed, moving_grid="same")
        import json

        entry = json.loads(datalist.read_text())[0]
        return {k: str(out / v) for k, v in entry.items() if k in ("fixed", "moving", "moving_label", "fixed_label", "true_ddf")} | {
            "source": "synthetic head (nilearn is not installed)"
        }
    generator = SyntheticPairGenerator(
        labels=torch.from_numpy(labels.astype(np.int64))[None],
        labels_affine=torch.as_tensor(affine),
        tissue_of_label=DEMO_TISSUES,
        modalities=("ct", "t1"),
        rotation_deg=4.0,
        translation_mm=4.0,
        deformation_mm=3.0,
    )
    pair = generator(seed)
    paths = {
        "fixed": out / "mni152_t1.nii.gz",
        "moving": out / "ct_like.nii.gz",
        "moving_label": out / "ct_like_tissues.nii.gz",
        "fixed_label": out / "mni152_tissues.nii.gz",
        "true_ddf": out / "true_ddf.nii.gz",
    }
    save_nifti(paths["fixed"], t1, affine)
    save_nifti(paths["moving"], pair["moving"][0].numpy(), pair["moving"].affine.numpy())
    save_nifti(paths["moving_label"], pair["moving_label"][0].numpy(), pair["moving"].affine.numpy(), dtype=np.int16)
    save_nifti(paths["fixed_label"], labels, affine, dtype=np.int16)
    save_itk_displacement_field(paths["true_ddf"], pair["true_ddf"].numpy(), affine)
    return {k: str(v) for k, v in paths.items()} | {"source": "MNI152 T1 template (nilearn) and a CT-like image of its tissues"}


def labels_on_fixed_grid(pair: dict, field: np.ndarray | None = None) -> np.ndarray:
    """The moving labels on the fixed grid, through ``field`` (RAS mm) or by world coordinates alone."""
    moving, moving_affine = load_nifti(pair["moving_label"])
    fixed_label, fixed_affine = load_nifti(pair["fixed_label"])
    field = np.zeros((3, *fixed_label.shape), np.float32) if field is None else field
    warped = warp_physical(
        torch.from_numpy(moving)[None, None], torch.as_tensor(moving_affine), torch.from_numpy(field)[None], torch.as_tensor(fixed_affine), "nearest"
    )
    return warped[0, 0].numpy()


def mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    scores = label_overlap(pred, truth, spacing=(1.0, 1.0, 1.0))
    return float(np.nanmean([s["dice"] for s in scores.values()]))


def save_overlay(pair: dict, folder: Path, path: Path) -> None:
    """Three axial slices: fixed, moving before and moving after, each with the fixed tissue outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed, fixed_affine = load_nifti(pair["fixed"])
    truth, _ = load_nifti(pair["fixed_label"])
    moving, moving_affine = load_nifti(pair["moving"])
    before = warp_physical(
        torch.from_numpy(moving)[None, None], torch.as_tensor(moving_affine), torch.zeros(1, 3, *fixed.shape), torch.as_tensor(fixed_affine)
    )[0, 0].numpy()
    after, _ = load_nifti(str(folder / "warped.nii.gz"))
    z = fixed.shape[2] // 2
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    panels = [(fixed, "fixed: MNI152 T1"), (before, "moving CT-like, before"), (after, "moving CT-like, after registration")]
    for axis, (image, title) in zip(axes, panels):
        window = (-100, 150) if image is not fixed else (None, None)
        axis.imshow(image[:, :, z].T, origin="lower", cmap="gray", vmin=window[0], vmax=window[1])
        axis.contour(truth[:, :, z].T == 3, levels=[0.5], colors="red", linewidths=0.8)
        axis.set_title(title)
        axis.axis("off")
    figure.suptitle("red: white-matter outline of the fixed image")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def run_demo(out: str = "demo_out", bundle: str = "fcn_multires_selfsup_reg", device: str = "cpu", seed: int = 0) -> dict:
    """Build the pair, register it with ``bundle`` through the contract command, and report."""
    out = Path(out).resolve()
    pair = build_demo_pair(out / "data", seed=seed)
    bundle_root = BUNDLES / bundle
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle_root / "configs" / "inference.json"),
        "--logging_file", str(bundle_root / "configs" / "logging.conf"),
        "--bundle_root", str(bundle_root),
        "--fixed_image", pair["fixed"], "--moving_image", pair["moving"], "--moving_label", pair["moving_label"],
        "--output_dir", str(out / "registered"), "--device", device,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    folder = out / "registered" / pair_output_name(pair["moving"], pair["fixed"])
    truth, _ = load_nifti(pair["fixed_label"])
    after, _ = load_nifti(str(folder / "warped_label.nii.gz"))
    report = {
        "pair": pair["source"],
        "dice_before": mean_dice(labels_on_fixed_grid(pair), truth),
        "dice_after": mean_dice(after, truth),
        "outputs": str(folder),
        "overlay": str(out / "overlay.png"),
    }
    save_overlay(pair, folder, out / "overlay.png")
    print(f"pair: {report['pair']}")
    print(f"mean Dice of CSF/grey/white matter: {report['dice_before']:.3f} before, {report['dice_after']:.3f} after")
    print(f"outputs: {report['outputs']}")
    print(f"overlay: {report['overlay']}")
    return report
