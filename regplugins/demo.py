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

from regplugins.bundles import bundle_root
from regplugins.data import SyntheticPairGenerator, write_synthetic_set
from regplugins.data.anatomy import BRAIN_TISSUES, mni152_brain
from regplugins.io import load_nifti, pair_output_name, save_itk_displacement_field, save_nifti
from regplugins.metrics import label_overlap
from regplugins.plots import on_fixed_grid


def build_demo_pair(out: str | Path, seed: int = 0) -> dict:
    """Write the demo pair under ``out`` and return its datalist entry (paths and what it was made from)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        t1, affine, labels = mni152_brain()
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
        tissue_of_label=BRAIN_TISSUES,
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


def labels_on_fixed_grid(pair: dict) -> np.ndarray:
    """The moving labels on the fixed grid by world coordinates alone: the overlap before registration."""
    return on_fixed_grid(pair["moving_label"], pair["fixed_label"], mode="nearest")


def mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    scores = label_overlap(pred, truth, spacing=(1.0, 1.0, 1.0))
    return float(np.nanmean([s["dice"] for s in scores.values()]))


def run_demo(out: str = "demo_out", bundle: str = "fcn_multires_selfsup_reg", device: str = "cpu", seed: int = 0) -> dict:
    """Build the pair, register it with ``bundle`` through the contract command, and report."""
    out = Path(out).resolve()
    pair = build_demo_pair(out / "data", seed=seed)
    root = bundle_root(bundle)
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(root / "configs" / "inference.json"),
        "--logging_file",
        str(root / "configs" / "logging.conf"),
        "--bundle_root",
        str(root),
        "--fixed_image",
        pair["fixed"],
        "--moving_image",
        pair["moving"],
        "--moving_label",
        pair["moving_label"],
        "--output_dir",
        str(out / "registered"),
        "--device",
        device,
        "--qc",
        "true",
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
        "picture": str(folder / "qc.png"),
    }
    print(f"pair: {report['pair']}")
    print(f"mean Dice of CSF/grey/white matter: {report['dice_before']:.3f} before, {report['dice_after']:.3f} after")
    print(f"outputs: {report['outputs']}")
    print(f"picture: {report['picture']}")
    return report
