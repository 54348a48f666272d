"""How long the bundles' quality check takes alone: ``RefineDisplacementd`` with no refinement steps, on bench pairs.

The check builds the pair on the refinement grid through the pre-alignment and, when that is not
the identity, a second moving copy as it lies, to score no registration. This times the
transform alone (the fastest of three calls per pair) with a pre-alignment turned 5 degrees (so
that both copies are built) or not at all, on the pairs of a bench datalist; run it at two checkouts
(``PYTHONPATH``) to compare their code.

    python experiments/quality_check_time.py bench_0_22_1/mni152_ct_t1/data_mni152_ct_t1_4x128x128x128 3.0 5.0

Arguments: the folder of a bench set (its ``datalist.json``), the working grid's spacing in mm, the
pre-alignment's turn in degrees (0: the identity, one copy only).
Results: docs/experiments/refinement.md, "Every stage on the same voxels, the fixed features once".
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import EnsureChannelFirstd, LoadImaged, Spacingd

import regplugins
from regplugins.alignment import affine_about
from regplugins.layers import affine_to_ddf
from regplugins.transforms import NormalizeModalityd, RefineDisplacementd


def check_inputs(folder: Path, item: dict, working_spacing: float, degrees: float) -> dict:
    """What a bundle's post-processing holds for one pair before the check, the network's field the pre-alignment's."""
    keys = ["native_fixed", "native_moving"]
    d = EnsureChannelFirstd(keys)(LoadImaged(keys)({"native_fixed": str(folder / item["fixed"]), "native_moving": str(folder / item["moving"])}))
    d = NormalizeModalityd(keys, modality=[item["fixed_modality"], item["moving_modality"]])(d)
    d["fixed"] = Spacingd("native_fixed", pixdim=working_spacing)({"native_fixed": d["native_fixed"]})["native_fixed"]
    shape = d["fixed"].shape[1:]
    centre = (torch.tensor(shape, dtype=torch.float64) - 1) / 2
    turn = torch.tensor([0.0, 0.0, np.radians(degrees)], dtype=torch.float64)
    d["prealign_matrix"] = affine_about(turn, torch.zeros(3, dtype=torch.float64), centre)
    d["pred"] = affine_to_ddf(d["prealign_matrix"][None], shape)[0].float()
    return d


def main(folder: str, working_spacing: str, degrees: str = "5.0") -> None:
    folder = Path(folder)
    print(f"regplugins {regplugins.__version__} from {Path(regplugins.__file__).parent}")
    check = RefineDisplacementd(spacing=2.0, iterations=0)
    seconds = []
    for item in json.loads((folder / "datalist.json").read_text()):
        d = check_inputs(folder, item, float(working_spacing), float(degrees))
        times = []
        for _ in range(3):
            start = time.perf_counter()
            quality = check(dict(d))["quality"]
            times.append(time.perf_counter() - start)
        seconds.append(min(times))
        print(f"{item['fixed']}: {seconds[-1]:.3f} s, dissimilarity {quality['dissimilarity']}", flush=True)
    print(f"mean {np.mean(seconds):.3f} s a pair")


if __name__ == "__main__":
    main(*sys.argv[1:])
