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
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from regplugins.bundles import BundleRunner, bundle_root
from regplugins.io import pair_output_name

# the request's ``moving`` that registers the atlas
ATLAS = "atlas"


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

    The moving image is the datastore image that the request's ``moving`` parameter names (the
    task's ``moving`` setting lists them, so a client offers them as a choice), with its final
    labels; ``atlas`` (the default) takes the atlas. The bundle's workflow is built on the first
    request and kept for the next ones (one per device), so later requests skip loading the
    network (the result's ``network_kept``). The warped image stays under ``output_dir/<moving>_to_<fixed>/``; the ITK
    displacement field is also saved in the datastore as a label of the open image, tagged
    ``ddf_<bundle>``, which a client downloads from ``/datastore/label`` (the result's ``ddf_url``)
    and loads as a transform.

    Args:
        bundle: name of a bundle (:func:`regplugins.bundles.bundle_root`) or the path of one.
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
            description=f"Registration by {meta['name']} {meta['version']}: "
            "the moving image's labels (param 'moving', else the atlas) warped onto this image",
            config={"moving": ATLAS, "device": device},
        )
        self.datastore, self.atlas, self.output_dir = datastore, atlas, Path(output_dir)
        self.runners: dict[str, BundleRunner] = {}
        self.lock = threading.Lock()  # one registration at a time: a runner's workflow is not thread-safe

    def config(self) -> dict:
        """The settings a client shows: ``moving`` as a choice of the atlas and every datastore image, listed now."""
        return {**self._config, "moving": [ATLAS, *sorted(self.datastore.list_images())]}

    def is_valid(self) -> bool:
        return (self.bundle / "models" / "model.pt").exists()

    def _moving(self, moving_id: str) -> tuple[str, str, dict[str, int]]:
        """Image, label file ("" when it has none) and label names of the moving image."""
        if moving_id == ATLAS:
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

    def _runner(self, device: str) -> BundleRunner:
        if device not in self.runners:
            self.runners[device] = BundleRunner(self.bundle, output_dir=str(self.output_dir), device=device)
        return self.runners[device]

    def _image_id(self, path: str) -> str | None:
        """The datastore id of the image at ``path`` (the server hands the task the path, not the id)."""
        return next((image_id for image_id in self.datastore.list_images() if self.datastore.get_image_uri(image_id) == path), None)

    def __call__(self, request) -> tuple[str | None, dict]:
        fixed = request["image"]
        moving_id = request.get("moving") or ATLAS
        moving_id = moving_id[0] if isinstance(moving_id, list) else moving_id  # a client may echo the whole choice
        device = request.get("device") or self._config["device"]
        try:
            moving, moving_label, names = self._moving(moving_id)
            with self.lock:
                warm = device in self.runners
                self._runner(device).run({"fixed": fixed, "moving": moving, "moving_label": moving_label})
        except (ValueError, RuntimeError, OSError) as error:
            # the client shows this message; the server would otherwise answer a bare 500
            raise HTTPException(status_code=400, detail=str(_root_cause(error))) from error
        folder = self.output_dir / pair_output_name(moving, fixed)
        result = {
            "moving": moving_id,
            "label_names": names,
            "warped_image": str(folder / "warped.nii.gz"),
            "ddf": str(folder / "ddf.nii.gz"),
            "network_kept": warm,
        }
        fixed_id = self._image_id(fixed)
        if fixed_id is not None:
            tag = f"ddf_{self.bundle.name}"
            label_id = self.datastore.save_label(
                fixed_id, str(folder / "ddf.nii.gz"), tag, {"transform": "ITK displacement field", "moving": moving_id}
            )
            result["ddf_url"] = f"/datastore/label?label={label_id}&tag={tag}"
        if not moving_label:
            return None, result
        # the server deletes the file it sends; the kept copy stays in the output folder
        sent = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        shutil.copyfile(folder / "warped_label.nii.gz", sent)
        return sent, result
