"""The saving transform that writes a bundle's contract outputs on the fixed image's native grid."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
from monai.transforms import MapTransform

from regplugins.io import pair_output_name
from regplugins.outputs import register_on_native_grids, write_registration_outputs
from regplugins.utils import as_flag

logger = logging.getLogger(__name__)


class SaveRegistrationd(MapTransform):
    """Write ``warped.nii.gz``, ``warped_label.nii.gz`` and ``ddf.nii.gz`` into ``<output_dir>/<moving>_to_<fixed>/``.

    ``ddf_key`` holds the voxel DDF on the working grid, ``working_grid_key`` an image on that
    grid (its MetaTensor affine), ``fixed_key``/``moving_key`` the loaded images (their
    ``filename_or_obj`` points to the native files) and ``label_key`` the path of the moving
    labels, if any. ``inverse_ddf_key``, when given, holds the inverse voxel DDF on the working
    grid, written as ``inverse_ddf.nii.gz`` on the moving grid; ``quality_key``, when the data holds
    it, the record of :class:`regplugins.transforms.RefineDisplacementd` (``quality.json``); ``qc``
    adds the picture ``qc.png``; ``ddf_spacing`` (mm) writes ``ddf.nii.gz`` on a coarser grid and
    records in ``quality.json`` how far the field ITK reads from it is from the registration's
    (:func:`regplugins.outputs.warp_native_images`). See :func:`write_registration_outputs` for how
    the folder is written.
    """

    def __init__(
        self,
        output_dir: str,
        ddf_key: str = "pred",
        working_grid_key: str = "fixed",
        fixed_key: str = "fixed",
        moving_key: str = "moving",
        label_key: str = "moving_label",
        inverse_ddf_key: str | None = None,
        quality_key: str = "quality",
        qc: bool = False,
        ddf_spacing: float = 0.0,
    ):
        super().__init__(keys=[ddf_key])
        if float(ddf_spacing) < 0:
            raise ValueError(f"ddf_spacing must be 0 (the fixed grid) or a spacing in mm, got {ddf_spacing}.")
        self.ddf_spacing = float(ddf_spacing)
        self.quality_key, self.qc = quality_key, as_flag(qc, "qc")
        self.output_dir = Path(output_dir)
        self.ddf_key, self.working_grid_key, self.inverse_ddf_key = ddf_key, working_grid_key, inverse_ddf_key
        self.fixed_key, self.moving_key, self.label_key = fixed_key, moving_key, label_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        fixed_path = d[self.fixed_key].meta["filename_or_obj"]
        moving_path = d[self.moving_key].meta["filename_or_obj"]
        label_path = d.get(self.label_key) or None
        inverse = torch.as_tensor(d[self.inverse_ddf_key]) if self.inverse_ddf_key else None
        outputs = register_on_native_grids(
            torch.as_tensor(d[self.ddf_key]), d[self.working_grid_key].affine, fixed_path, moving_path, label_path, inverse, self.ddf_spacing
        )
        name = pair_output_name(moving_path, fixed_path)
        quality = d.get(self.quality_key)
        if "ddf_file_error_mm" in outputs:
            cost = outputs["ddf_file_error_mm"]
            quality = {**(quality or {}), "ddf_file_error_mm": cost}
            logger.info(
                f"{name}: ddf.nii.gz on a {cost['ddf_spacing']:g} mm grid; the field ITK reads from it is "
                f"{cost['mean']:.3f} mm from the registration's on average, {cost['max']:.3f} mm at most."
            )
        folder = write_registration_outputs(self.output_dir / name, outputs, quality=quality, qc=(fixed_path, moving_path) if self.qc else None)
        d["output_folder"] = str(folder)
        return d
