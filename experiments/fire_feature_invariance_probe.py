"""Do FIRE's encoder features see a residual of a few millimetres across contrasts? The paper's encoder is
meant to give modality-independent features; the non-rigid sub-networks compare them to find the
field. For each bench pair's fixed head, whose T1 and T2 images show the same anatomy on one grid,
the features' squared distance (summed over channels, mean over the head, on the feature grid)
between the two contrasts, beside the distance between the T1 features and those of the T1 shifted
by one and two working voxels: where the contrasts differ as much as a shift of the residual's size,
features alone cannot tell that residual from the change of contrast.

    python experiments/fire_feature_invariance_probe.py WEIGHTS WORKING_SIZE WORKING_SPACING DATA_FOLDER...
"""

import sys
from pathlib import Path

import torch
from monai.bundle import ConfigParser

BUNDLE = "bundles/fire_inverse_consistent_reg"


def main(weights: str, working_size: int, working_spacing: float, *folders: str) -> None:
    # the inference config's own preparation, without pre-alignment: the two images already share a grid
    parser = ConfigParser()
    parser.read_config([f"{BUNDLE}/../_shared/configs/inference_common.json", f"{BUNDLE}/configs/inference.json"])
    grid = {"working_size": working_size, "working_spacing": working_spacing}
    parser.update({"bundle_root": BUNDLE, "device": "$torch.device('cpu')", "prealign": "none", **grid})
    network, prepare = parser.get_parsed_content("network_def"), parser.get_parsed_content("preprocessing")
    state = torch.load(weights, map_location="cpu")
    network.load_state_dict(state.get("model", state))
    network.eval()
    for path in sorted(p for folder in folders for p in Path(folder).glob("*_fixed_t1.nii.gz")):
        pair = prepare({"moving": str(path), "fixed": str(path).replace("_fixed_t1.", "_fixed_t2.")})["image"]
        t1, t2 = (torch.as_tensor(pair[i : i + 1])[None].float() for i in (0, 1))
        with torch.no_grad():
            features = [network.encoder(image) for image in (t1, t2, torch.roll(t1, 1, dims=2), torch.roll(t1, 2, dims=2))]
        head = torch.nn.functional.interpolate((t1 > -0.9).float(), size=features[0].shape[2:]) > 0.5

        def distance(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a - b).square().sum(1, keepdim=True)[head].mean())

        print(
            f"{path.parent.name}/{path.name}: |T1 features|^2 {float(features[0].square().sum(1, keepdim=True)[head].mean()):.1f}; "
            f"T1 to T2 {distance(features[0], features[1]):.3f}; T1 to T1 shifted {working_spacing:g} mm "
            f"{distance(features[0], features[2]):.3f}, {2 * working_spacing:g} mm {distance(features[0], features[3]):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:])
