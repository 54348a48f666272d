"""How briefly can the pre-alignment's search screen its eleven starts and still keep the right pose?

For every pair of the given bench folders, the `fcn_multires_selfsup_reg` bundle's preprocessing up to
its pre-alignment (``AffineAlignd``, affine, ``moving_domain_key`` as the bundle has it), then the
pre-alignment without the search and with it under each screening setting STEPSxSAMPLES
(``AffineAlignd.screen_iterations`` and ``screen_samples``; 30x2048 since regplugins 0.29.0, 60x8192
before). Prints per pair each setting's time and the angle of its fit from the truth where the folder
has ``NNN_true_rigid.json`` (the rigid kinds), else from the fit without the search (a head in its
headers' pose: the search should keep that pose). Record: docs/experiments/refinement.md, "The search
by default".

    python experiments/search_screen_probe.py BENCH/rigid_mni152_far/data_rigid_mni152_far_12x128x128x128 off,60x8192,30x2048
"""

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from regplugins.transforms.spatial import voxel_to_lps

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "fcn_multires_selfsup_reg"


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """The angle between the rotations of two 4x4 matrices (their linear parts made orthogonal: an affine fit stretches)."""

    def rotation(matrix: np.ndarray) -> np.ndarray:
        u, _, vt = np.linalg.svd(matrix[:3, :3])
        return u @ vt

    relative = rotation(a).T @ rotation(b)
    return math.degrees(math.acos(np.clip((np.trace(relative) - 1) / 2, -1.0, 1.0)))


def preprocessing(pair: dict):
    """The bundle's transforms before its pre-alignment, and the pre-alignment, for the pair's modalities."""
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    parser.update({"fixed_image": "-", "moving_image": "-", "fixed_modality": pair["fixed_modality"], "moving_modality": pair["moving_modality"]})
    transforms = parser.get_parsed_content("preprocessing").transforms
    return transforms[:-2], transforms[-2]


def main(folders: str, settings: str) -> None:
    torch.set_num_threads(2)
    for folder in map(Path, folders.split(",")):
        pairs = json.loads((folder / "datalist.json").read_text())
        before, align = preprocessing(pairs[0])
        for pair in pairs:
            data = {"fixed": str(folder / pair["fixed"]), "moving": str(folder / pair["moving"])}
            for transform in before:
                data = transform(data)
            grid = voxel_to_lps(data["fixed"].affine)
            truth_file = folder / (pair["fixed"].split("_")[0] + "_true_rigid.json")
            truth = np.asarray(json.loads(truth_file.read_text())["matrix"]) if truth_file.exists() else None
            cells, reference = [], truth
            for setting in settings.split(","):
                align.search_turns = setting != "off"
                if align.search_turns:
                    align.screen_iterations, align.screen_samples = (int(value) for value in setting.split("x"))
                start = time.perf_counter()
                fitted = align(dict(data))["prealign_matrix"].numpy()
                seconds = time.perf_counter() - start
                matrix = grid @ fitted @ np.linalg.inv(grid)
                reference = matrix if reference is None else reference
                cells.append(f"{setting} {seconds:.2f} s {rotation_angle_deg(matrix, reference):6.2f} deg")
            print(f"{folder.name} {pair['fixed'][:3]} from {'truth' if truth is not None else 'first'}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
