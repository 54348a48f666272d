"""Does applying the rigid head network again, to the moving image it has already moved, shrink its error?

For each pair of a datalist with ``true_rigid`` (e.g. the ``rigid_mni152`` benchmark set), the
bundle's inference preprocessing gives the two working images; the network's transform is applied
to the moving one and the network asked again, ``--passes`` times, composing the answers. Prints
the rotation (degrees) and translation (mm) errors after each pass, as ``regplugins bench`` scores
them (the first pass is the bundle's own answer).

    python experiments/rigid_repeat_probe.py bench_rigid_mni_fast/data_rigid_mni152_4x144x144x144/datalist.json
"""

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from regplugins.alignment import warp_affine
from regplugins.metrics import read_rigid_matrix, rigid_errors
from regplugins.rigid.parameters import grid_center_lps, ras_to_lps, rigid_matrix

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "head_ct_mr_rigid_reg"


def bundle_parts():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"], parser["device"] = str(BUNDLE), "$torch.device('cpu')"
    network, classifier = parser.get_parsed_content("network"), parser.get_parsed_content("classifier")
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu"))
    classifier.load_state_dict(torch.load(BUNDLE / "models" / "classifier.pt", map_location="cpu"))
    return network.eval(), parser.get_parsed_content("preprocessing")


def errors_per_pass(network, preprocessing, pair: dict, passes: int) -> list[tuple[float, float]]:
    data = preprocessing({"fixed": pair["fixed"], "moving": pair["moving"]})
    working_affine = np.asarray(data["fixed"].affine, dtype=np.float64)
    fixed, moving = (data[key].as_tensor().float() for key in ("fixed", "moving"))
    center = grid_center_lps(working_affine, fixed.shape[1:])
    native = nib.load(pair["fixed"])
    native_center = native.affine[:3, :3] @ ((np.array(native.shape[:3]) - 1) / 2) + native.affine[:3, 3]
    true, total, moved, errors = read_rigid_matrix(pair["true_rigid"]), np.eye(4), moving, []
    for _ in range(passes):
        with torch.no_grad():
            parameters = network(torch.cat([moved, fixed])[None])[0].double().numpy()
        total = total @ rigid_matrix(parameters[:3], parameters[3:], center)  # LPS, fixed point to moving point
        scores = rigid_errors(ras_to_lps(total), true, native_center)
        errors.append((scores["rotation_error_deg"], scores["translation_error_mm"]))
        moved = warp_affine(moving[None], torch.from_numpy(np.linalg.inv(working_affine) @ ras_to_lps(total) @ working_affine))[0]
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalist")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    folder = Path(args.datalist).parent
    network, preprocessing = bundle_parts()
    table = []
    for entry in json.loads(Path(args.datalist).read_text()):
        pair = {key: str(folder / entry[key]) for key in ("fixed", "moving", "true_rigid")}
        table.append(errors_per_pass(network, preprocessing, pair, args.passes))
        print(entry["moving"], " ".join(f"{r:.2f} deg {t:.2f} mm" for r, t in table[-1]), flush=True)
    table = np.array(table)
    for index in range(args.passes):
        print(
            f"pass {index + 1}: rotation mean {table[:, index, 0].mean():.3f} median {np.median(table[:, index, 0]):.3f} deg, "
            f"translation mean {table[:, index, 1].mean():.3f} median {np.median(table[:, index, 1]):.3f} mm"
        )


if __name__ == "__main__":
    main()
