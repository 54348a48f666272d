"""A bench set whose fixed images show the same heads in a wider field of view, to tell the field of view from the pair.

FIRE's working grid spans the fixed image's whole field of view (the others crop to the head), so a
fixed image with the neck and shoulders, or a large-FOV MR, gives FIRE a coarser grid over the head.
This pads each fixed image, its labels and the true field of a bench datalist by PAD voxels a side
(the image with its own minimum: air); the moving images stay where they are. Scoring the padded set
beside the original (``regplugins bench --data``) shows what the wider view alone changes.

    python experiments/pad_fixed_fov.py SOURCE_FOLDER OUT_FOLDER [PAD]
"""

import json
import sys
from pathlib import Path

import numpy as np

from regplugins.io import load_itk_displacement_field, load_nifti, save_itk_displacement_field, save_nifti


def pad_fixed_fov(source: str, out: str, pad: int = 64) -> Path:
    source_dir, out_dir = Path(source), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    shift = np.eye(4)
    shift[:3, 3] = -pad  # voxel 0 of the padded grid is voxel -pad of the original
    entries = []
    for entry in json.loads((source_dir / "datalist.json").read_text()):
        image, affine = load_nifti(str(source_dir / entry["fixed"]))
        save_nifti(out_dir / entry["fixed"], np.pad(image, pad, constant_values=float(image.min())), affine @ shift)
        labels, affine = load_nifti(str(source_dir / entry["fixed_label"]))
        save_nifti(out_dir / entry["fixed_label"], np.pad(labels, pad), affine @ shift, dtype=np.int16)
        field, affine = load_itk_displacement_field(source_dir / entry["true_ddf"])
        save_itk_displacement_field(out_dir / entry["true_ddf"], np.pad(field, ((0, 0),) + ((pad, pad),) * 3), affine @ shift)
        moving = {key: str((source_dir / entry[key]).resolve()) for key in ("moving", "moving_label")}
        entries.append({key: entry[key] for key in ("fixed", "fixed_label", "true_ddf")} | moving)
    datalist = out_dir / "datalist.json"
    datalist.write_text(json.dumps(entries, indent=1))
    return datalist


if __name__ == "__main__":
    print(pad_fixed_fov(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:4])))
