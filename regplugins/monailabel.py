"""MONAI Label infer task that registers with any of our bundles: the image open in the viewer is the fixed image.

MONAI Label has no registration task of its own. This one answers an infer request with the
moving image's labels warped onto the open image, as a label map whose ``label_names`` the
client (3D Slicer, OHIF) shows as a segmentation. Needs the ``monailabel`` package; see
``apps/monailabel_registration/README.md``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from regplugins.bundles import bundle_root, inference_workflow
from regplugins.io import pair_output_name


def label_names_of(label_file: str, info: dict) -> dict[str, int]:
    """Names of a datastore label map's values: its info's ``label_names`` or ``label_info``, else numbered."""
    if info.get("label_names"):
        return {str(name): int(value) for name, value in info["label_names"].items()}
    if info.get("label_info"):
        return {str(entry["name"]): int(entry["idx"]) for entry in info["label_info"]}
    values = np.unique(np.asanyarray(nib.load(label_file).dataobj))
    return {f"label_{int(v)}": int(v) for v in values if v > 0}


def _root_cause(error: BaseException) -> BaseException:
    """The first error of a chain: bundle configs wrap the message that names the bad file."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


class RegistrationInferTask(InferTask):
    """Warp a moving image and its labels onto the open image with a registration bundle.

    The moving image is the datastore image that the request's ``moving`` parameter names,
    with its final labels; without ``moving``, the atlas. The warped image and the ITK
    displacement field (``ddf.nii.gz``) stay under ``output_dir/<moving>_to_<fixed>/``, and the
    result's JSON gives their paths.

    Args:
        bundle: name of a bundle under ``bundles/`` or the path of one.
        datastore: the app's datastore, where ``moving`` images and their labels are found.
        atlas: ``image``, ``label`` and ``names`` (name: value) of the default moving image.
        output_dir: where the bundle's outputs are kept.
        device: ``cpu`` or ``cuda:0``; a request's ``device`` overrides it.
    """

    def __init__(self, bundle: str | Path, datastore: Datastore, atlas: dict, output_dir: str | Path, device: str = "cpu"):
        self.bundle = bundle_root(bundle)
        meta = json.loads((self.bundle / "configs" / "metadata.json").read_text())
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=atlas["names"],
            dimension=3,
            description=f"Registration by {meta['name']} {meta['version']}: the moving image's labels (param 'moving', else the atlas) warped onto this image",
            config={"moving": "", "device": device},
        )
        self.datastore, self.atlas, self.output_dir = datastore, atlas, Path(output_dir)

    def is_valid(self) -> bool:
        return (self.bundle / "models" / "model.pt").exists()

    def _moving(self, moving_id: str) -> tuple[str, str, dict[str, int]]:
        """Image, label file ("" when it has none) and label names of the moving image."""
        if not moving_id:
            return self.atlas["image"], self.atlas["label"], self.atlas["names"]
        image = self.datastore.get_image_uri(moving_id)
        if not image:
            raise ValueError(f"moving image '{moving_id}' is not in the datastore.")
        labels = self.datastore.get_labels_by_image_id(moving_id)
        tag = DefaultLabelTag.FINAL if DefaultLabelTag.FINAL in labels else next(iter(labels), None)
        if tag is None:
            return image, "", {}
        label = self.datastore.get_label_uri(labels[tag], tag)
        return image, label, label_names_of(label, self.datastore.get_label_info(labels[tag], tag))

    def __call__(self, request) -> tuple[str | None, dict]:
        fixed = request["image"]
        try:
            moving, moving_label, names = self._moving(request.get("moving") or "")
            workflow = inference_workflow(
                self.bundle, bundle_logging=False, fixed_image=fixed, moving_image=moving, moving_label=moving_label,
                output_dir=str(self.output_dir), device=request.get("device") or self._config["device"],
            )
            workflow.run()
            workflow.finalize()
        except (ValueError, RuntimeError, OSError) as error:
            # the client shows this message; the server would otherwise answer a bare 500
            raise HTTPException(status_code=400, detail=str(_root_cause(error))) from error
        folder = self.output_dir / pair_output_name(moving, fixed)
        result = {
            "moving": request.get("moving") or "atlas",
            "label_names": names,
            "warped_image": str(folder / "warped.nii.gz"),
            "ddf": str(folder / "ddf.nii.gz"),
        }
        if not moving_label:
            return None, result
        # the server deletes the file it sends; the kept copy stays in the output folder
        sent = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        shutil.copyfile(folder / "warped_label.nii.gz", sent)
        return sent, result
