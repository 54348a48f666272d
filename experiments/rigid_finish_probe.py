"""Can a torch finish replace the rigid bundle's ITK one? (docs/experiments/head_ct_mr_rigid_reg.md)

For each pair of a rigid bench datalist, starts from the true motion turned by about 1.4 degrees
and moved by about 1.1 mm (where the network leaves a pair), and finishes it as the bundle's
``RefineRigidd`` would in torch: both images smoothed and resampled to 2 mm, the moving image
resampled through the start, and the residual rigid motion fitted by
``regplugins.alignment.fit_affine``. Prints the errors against the truth and the seconds.

    python experiments/rigid_finish_probe.py bench_rigid/rigid_mni152/data_rigid_mni152_4x144x144x144 \
        "dict(levels=(2, 1), iterations=(30, 60), num_samples=16384)"
"""

import json
import sys
import time

import nibabel as nib
import numpy as np
import torch
from monai.transforms import LoadImaged, ResampleToMatchd, Spacingd

from regplugins.alignment import fit_affine, warp_affine
from regplugins.metrics import read_rigid_matrix, rigid_errors
from regplugins.rigid.parameters import rigid_matrix
from regplugins.transforms import AntiAliasd, NormalizeModalityd

folder, settings = sys.argv[1], eval(sys.argv[2]) if len(sys.argv) > 2 else {}
for item in json.load(open(f"{folder}/datalist.json")):
    pair = {"fixed": f"{folder}/{item['fixed']}", "moving": f"{folder}/{item['moving']}"}
    began = time.perf_counter()
    d = LoadImaged(["fixed", "moving"], ensure_channel_first=True, image_only=True)(pair)
    d = NormalizeModalityd(["fixed", "moving"])(d)
    d = AntiAliasd(["fixed", "moving"], pixdim=[2.0] * 3)(d)
    d = Spacingd("fixed", pixdim=[2.0] * 3, mode="bilinear")(d)
    d = ResampleToMatchd("moving", key_dst="fixed", mode="bilinear", padding_mode="zeros")(d)
    loaded = time.perf_counter()
    affine = d["fixed"].affine.double().numpy()
    truth = read_rigid_matrix(f"{folder}/{item['true_rigid']}")  # RAS, fixed point to moving point
    image = nib.load(pair["fixed"])
    center = image.affine[:3, :3] @ ((np.array(image.shape[:3]) - 1) / 2) + image.affine[:3, 3]
    start = truth @ rigid_matrix([1.0, -0.7, 0.6], [0.8, -0.5, 0.6], center)
    start_voxels = torch.from_numpy(np.linalg.inv(affine) @ start @ affine)
    started = warp_affine(d["moving"][None].as_tensor().float(), start_voxels)[0, 0]
    finished = (start_voxels @ fit_affine(d["fixed"][0], started, transform="rigid", **settings)).numpy()
    fitted = time.perf_counter()
    before, after = rigid_errors(start, truth, center), rigid_errors(affine @ finished @ np.linalg.inv(affine), truth, center)
    print(
        f"{item['moving']}: start {before['rotation_error_deg']:.2f} deg {before['translation_error_mm']:.2f} mm -> "
        f"{after['rotation_error_deg']:.3f} deg {after['translation_error_mm']:.3f} mm; load {loaded - began:.2f} s, fit {fitted - loaded:.2f} s"
    )
