"""MONAI Label app: registration by the regplugins bundles that ship trained weights.

Each bundle is an infer task named after it. The image open in the client is the fixed image;
the request's ``moving`` parameter names the moving image in the datastore, and without it the
atlas is registered onto the open image. Configuration (``--conf key value``):

- ``bundles``: comma-separated bundle names or paths (default: every bundle under bundles/ with
  models/model.pt);
- ``atlas_image``, ``atlas_label``, ``atlas_label_names`` (a JSON file of name: value): the atlas
  (default: a synthetic T1-like head with 11 labels, generated into ``<app>/atlas`` on first start);
- ``output_dir``: where warped images and displacement fields are kept (default: ``<studies>/registrations``);
- ``device``: ``cpu`` (default) or ``cuda:0``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp

import regplugins
from regplugins.bundles import trained_bundles
from regplugins.data import load_atlas, write_atlas
from regplugins.monailabel import RegistrationInferTask


def atlas_from(conf: dict, app_dir: str) -> dict:
    """The configured atlas, or the synthetic one (written once into the app's folder)."""
    if conf.get("atlas_image"):
        names = json.loads(Path(conf["atlas_label_names"]).read_text())
        return {"image": conf["atlas_image"], "label": conf["atlas_label"], "names": names}
    folder = os.path.join(app_dir, "atlas")
    return load_atlas(folder) or write_atlas(folder)


class RegistrationApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.bundles = [b.strip() for b in conf["bundles"].split(",")] if conf.get("bundles") else trained_bundles()
        self.atlas = atlas_from(conf, app_dir)
        self.output_dir = conf.get("output_dir") or os.path.join(studies, "registrations")
        self.device = conf.get("device", "cpu")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="regplugins registration",
            description="Deformable and rigid registration by the regplugins MONAI bundles",
            version=regplugins.__version__,
        )

    def init_infers(self):
        tasks = {}
        for bundle in self.bundles:
            task = RegistrationInferTask(bundle, self.datastore(), self.atlas, self.output_dir, device=self.device)
            tasks[task.bundle.name] = task
        return tasks
