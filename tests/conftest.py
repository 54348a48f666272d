"""Shared fixtures: tiny synthetic pairs written once per session, and the contract command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundles" / "fcn_multires_selfsup_reg"
# every bundle, and those that ship trained weights in models/model.pt
BUNDLES = [
    BUNDLE,
    ROOT / "bundles" / "ct_mr_gradient_fusion_reg",
    ROOT / "bundles" / "ct_mr_dual_similarity_reg",
    ROOT / "bundles" / "head_ct_mr_rigid_reg",
    ROOT / "bundles" / "fire_inverse_consistent_reg",
]
TRAINED_BUNDLES = [bundle for bundle in BUNDLES if (bundle / "models" / "model.pt").exists()]


# a train config's smallest run: one epoch of a few 32^3 pairs (keys a bundle lacks are ignored)
TINY = [
    "--working_shape",
    "[32,32,32]",
    "--working_spacing",
    "6.0",
    "--num_train_pairs",
    "4",
    "--num_val_pairs",
    "2",
    "--train#trainer#max_epochs",
    "1",
    "--batch_size",
    "2",
    "--num_workers",
    "0",
    "--val_interval",
    "1",
    "--device",
    "cpu",
    "--augmentations_per_original",
    "1",
    "--validation_augmentations",
    "1",
]


def predicts_rigid_parameters(bundle: Path) -> bool:
    """A rigid bundle's network returns transform parameters, not a field, and it also writes rigid.tfm and rigid.json."""
    return json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]["format"] == "parameters"


def writes_inverse_field(bundle: Path) -> bool:
    """An inverse-consistent bundle (FIRE) also writes inverse_ddf.nii.gz on the moving grid."""
    return "inverse_ddf_key" in (bundle / "configs" / "inference.json").read_text()


@pytest.fixture(scope="session")
def synthetic_pairs(tmp_path_factory) -> Path:
    """Two CT-like/T1-like pairs at 2 mm, 64^3 fixed grid, the moving image on another grid."""
    from regplugins.data import write_synthetic_set

    return write_synthetic_set(tmp_path_factory.mktemp("pairs"), n=2, shape=(64, 64, 64), modalities=("ct", "t1"), seed=11)


@pytest.fixture(scope="session")
def pairs(synthetic_pairs) -> list[dict]:
    from regplugins.io import registration_pairs

    return registration_pairs(datalist=str(synthetic_pairs))


def reoriented_copy(path: str, out: Path) -> str:
    """The same image stored with its first two axes flipped and swapped (an LPS-like, transposed layout)."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    flipped = data[::-1, ::-1].swapaxes(0, 1)
    shape = data.shape
    # voxel (i, j, k) of the copy is voxel (shape0 - 1 - j, shape1 - 1 - i, k) of the original
    index_map = np.array([[0, -1, 0, shape[0] - 1], [-1, 0, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    copy = nib.Nifti1Image(np.ascontiguousarray(flipped), image.affine @ index_map)
    nib.save(copy, str(out))
    return str(out)


def run_bundle(
    *args: str, config: str = "inference.json", bundle: Path = BUNDLE, timeout: int = 600, env: dict | None = None, processes: int = 1
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` with a config of ``bundle``, as a user runs it (``env``: variables to add).

    ``processes`` > 1 runs it under ``torchrun`` (gloo on a CPU), as a cohort over several GPUs is run.
    """
    config_files = config if config.startswith("[") else str(bundle / "configs" / config)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [
        sys.executable,
        *launcher,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        config_files,
        "--logging_file",
        str(bundle / "configs" / "logging.conf"),
        "--bundle_root",
        str(bundle),
        *args,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=env, cwd=ROOT)


def loss_before_and_after_steps(train_config, inputs, target, steps: int = 1) -> tuple:
    """`steps` steps of a parsed train config's optimiser on one batch: its loss before and after them."""
    network, loss, optimizer = (train_config.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
    network.train()
    before = loss(network(inputs), target)
    current = before
    for _ in range(steps):
        optimizer.zero_grad()
        current.backward()
        optimizer.step()
        current = loss(network(inputs), target)
    return before, current.detach()


def refines_its_field(bundle: Path) -> bool:
    """A bundle that refines its network's field on each pair also writes quality.json (the stages' similarity)."""
    return "RefineDisplacementd" in (bundle / "configs" / "inference.json").read_text()


def read_datalist(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())


def itk_resample(moving_path: str, reference_path: str, ddf_path: str, nearest: bool = False) -> np.ndarray:
    """ITK's own resampling of ``moving_path`` onto ``reference_path`` through the displacement field file, as ``(x, y, z)`` voxels."""
    import itk

    moving = itk.imread(str(moving_path), itk.F)
    reference = itk.imread(str(reference_path), itk.F)
    stored = itk.imread(str(ddf_path), pixel_type=itk.Vector[itk.F, 3])
    # ITK Python's resampler takes double-precision transforms only; same field, same geometry
    field = itk.image_from_array(itk.array_from_image(stored).astype(np.float64), is_vector=True)
    field.SetOrigin(stored.GetOrigin())
    field.SetSpacing(stored.GetSpacing())
    field.SetDirection(stored.GetDirection())
    transform = itk.DisplacementFieldTransform[itk.D, 3].New()
    transform.SetDisplacementField(field)
    interpolator = itk.NearestNeighborInterpolateImageFunction if nearest else itk.LinearInterpolateImageFunction
    resampled = itk.resample_image_filter(
        moving, transform=transform, use_reference_image=True, reference_image=reference, interpolator=interpolator[itk.Image[itk.F, 3], itk.D].New()
    )
    return np.transpose(itk.array_from_image(resampled), (2, 1, 0))
