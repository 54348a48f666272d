"""Probe: the refinement's settings on benchmark pairs, from a bundle's network field computed once per pair.

For each pair the bundle's own pre-processing and network run once (with the config overrides
given); then :class:`regplugins.transforms.RefineDisplacementd` runs with each setting, and the
result is scored as `regplugins bench` scores it: mean label Dice, field error inside the head,
folding, and the refinement's seconds. The rows "prealignment" and "network" are the stages
before refinement. Used to choose the refinement's defaults (docs/experiments/refinement.md).

    python experiments/refinement_probe.py ct_mr_gradient_fusion_reg DATALIST \\
        '[{}, {"control_spacing": [12, 6]}]' --overrides '{"prealign": "affine"}'
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from regplugins.bundles import inference_workflow
from regplugins.io import load_itk_displacement_field, load_nifti, registration_pairs
from regplugins.metrics import field_error, folding_percent, jacobian_determinant, label_overlap
from regplugins.transforms import ComposeAffined, RefineDisplacementd
from regplugins.transforms.io import register_on_native_grids


def network_fields(bundle: str, datalist: str, overrides: dict) -> list[dict]:
    """Each pair's post-processing input: the pre-processed data with the network's field (``pred``), pre-alignment folded in."""
    workflow = inference_workflow(bundle, datalist=datalist, output_dir="unused", device="cpu", **overrides)
    evaluator = workflow.parser.get_parsed_content("evaluator")
    checkpoint = torch.load(workflow.parser.get_parsed_content("ckpt_path"), map_location="cpu", weights_only=False)
    evaluator.network.load_state_dict(checkpoint.get("model", checkpoint))
    evaluator.network.eval()
    items = []
    for data in workflow.parser.get_parsed_content("dataset"):
        with torch.no_grad():
            pred = evaluator.inferer(data["image"][None].as_tensor(), evaluator.network)[0]
        data["pred"] = pred[: pred.dim() - 1]  # the forward field: FIRE's inferer stacks its inverse after it
        items.append(ComposeAffined("pred")(data))
    return items


def score(data: dict, pair: dict, ddf: torch.Tensor) -> tuple[float, float, float]:
    """Mean Dice, field error inside the head (mm) and folding (%) of a working-grid field, as the benchmark scores them."""
    return score_outputs(register_on_native_grids(ddf, data["fixed"].affine, pair["fixed"], pair["moving"], pair["moving_label"]), pair)


def score_outputs(out: dict, pair: dict) -> tuple[float, float, float]:
    """:func:`score` of a field already taken to the native grids (:func:`register_on_native_grids`' outputs)."""
    truth, affine = load_nifti(pair["fixed_label"])
    per_label = label_overlap(out["warped_label"], truth, np.linalg.norm(affine[:3, :3], axis=0))
    true_field, _ = load_itk_displacement_field(pair["true_ddf"])
    return (
        float(np.nanmean([v["dice"] for v in per_label.values()])),
        field_error(out["ddf"], true_field, truth > 0),
        folding_percent(jacobian_determinant(out["ddf"], out["fixed_affine"])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("datalist")
    parser.add_argument("settings", help="JSON list of RefineDisplacementd settings, one row each")
    parser.add_argument("--overrides", default="{}", help="JSON config overrides of the bundle (e.g. prealign)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pairs = registration_pairs(datalist=args.datalist)
    items = network_fields(args.bundle, args.datalist, json.loads(args.overrides))
    rows = {
        "prealignment": [
            score(d, p, ComposeAffined("pred")({"pred": torch.zeros_like(d["pred"]), "prealign_matrix": d["prealign_matrix"]})["pred"])
            for d, p in zip(items, pairs)
        ],
        "network": [score(d, p, d["pred"]) for d, p in zip(items, pairs)],
    }
    seconds = {}
    for settings in json.loads(args.settings):
        name, refine = json.dumps(settings), RefineDisplacementd(**settings)
        rows[name], seconds[name] = [], 0.0
        for data, pair in zip(items, pairs):
            start = time.perf_counter()
            refined = refine(dict(data))["pred"]
            seconds[name] += (time.perf_counter() - start) / len(items)
            rows[name].append(score(data, pair, refined))
    print("| setting | Dice | field error mm | folding % | s/pair (refinement) | Dice per pair |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, values in rows.items():
        a = np.array(values)
        cell = f"{seconds[name]:.2f}" if name in seconds else ""
        print(f"| `{name}` | {a[:, 0].mean():.4f} | {a[:, 1].mean():.3f} | {a[:, 2].mean():.3f} | {cell} | {np.round(a[:, 0], 3).tolist()} |")


if __name__ == "__main__":
    main()
