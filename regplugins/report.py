"""The README's bundle table and the model cards' results tables, written from one ``regplugins bench`` run's ``results.json``.

One row per bundle, every number from the same run: the bundle's mean over the kinds it is
made for, beside no registration and the best ANTs row of each kind (highest Dice; lowest field
error), so that a reader sees in one glance which bundle fits their images and how it compares.
:func:`update_readme` rewrites the table between two markers that name the results file, and
each marked card's table and ``eval_metrics`` (:func:`update_cards`); ``tests/test_report.py``
checks that the committed README, cards and results agree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from regplugins.bench import ANTS_BASELINES, DEFORMABLE_KINDS

__all__ = ["BUNDLE_ROWS", "bundle_table", "card_table", "eval_metrics", "summary_of", "update_cards", "update_readme"]

# bundle: the paper in short, the images it takes, the bench kinds its row averages
BUNDLE_ROWS = {
    "fcn_multires_selfsup_reg": ("Li & Fan 2017", "CT/MR, MR/MR", DEFORMABLE_KINDS),
    "ct_mr_gradient_fusion_reg": ("Xu et al. 2020", "CT/MR", DEFORMABLE_KINDS),
    "ct_mr_dual_similarity_reg": ("Cao et al. 2018", "CT/MR", DEFORMABLE_KINDS),
    "fire_inverse_consistent_reg": ("Wang et al. 2019", "MR/MR, CT/MR, both ways", DEFORMABLE_KINDS),
    "head_ct_mr_rigid_reg": ("Islam et al. 2021", "any head pair, rigid", ("rigid_mni152",)),
}
MARKER = re.compile(r"<!-- bundle table from (?P<path>\S+) -->\n.*?<!-- end of bundle table -->", re.S)
CARD_MARKER = re.compile(r"<!-- results table -->\n.*?<!-- end of results table -->", re.S)
# the kinds of a card's rows, in words
KIND_NAMES = {
    "ct_t1": "CT/T1, generated heads",
    "mni152_t2_t1": "T2/T1, MNI152 anatomy",
    "mni152_pd_t1": "PD/T1, MNI152 anatomy",
    "mni152_ct_t1": "CT/T1, MNI152 anatomy",
}
ANTS_NAMES = {"ants_rigid": "ANTs Rigid", "ants_affine": "ANTs Affine", "ants_syn": "SyN", "ants_synra": "SyNRA", "ants_syn_tuned": "tuned SyN"}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _summary(report: dict, kind: str, method: str, key: str) -> float | None:
    value = report["kinds"][kind]["methods"].get(method, {}).get("summary", {}).get(key)
    return None if value is None else value["mean"]


def _best_ants(report: dict, kind: str, key: str, lowest: bool) -> float:
    return _summary(report, kind, _best_ants_method(report, kind, key, lowest), key)


def _best_ants_method(report: dict, kind: str, key: str, lowest: bool) -> str:
    """The ANTs row of ``kind`` with the lowest (or highest) ``key``."""
    scored = {m: v for m in ANTS_BASELINES if (v := _summary(report, kind, m, key)) is not None}
    if not scored:
        raise ValueError(f"results have no ANTs row for {kind}; run the bench with --baselines including ants_affine, ants_syn_tuned.")
    return (min if lowest else max)(scored, key=scored.get)


def bundle_table(report: dict) -> str:
    """The Markdown table of every bundle of :data:`BUNDLE_ROWS` that ``report`` (a multi-kind bench ``results.json``) holds."""
    rows = [
        "| bundle | paper | images | Dice: none → bundle | best ANTs Dice | field error mm (best ANTs) | s/pair | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups = {}  # the rows that average the same kinds
    for bundle, (paper, images, kinds) in BUNDLE_ROWS.items():
        if not all(bundle in report["kinds"].get(kind, {}).get("methods", {}) for kind in kinds):
            continue
        groups.setdefault(kinds, []).append(bundle)
        none = _mean([_summary(report, k, "none", "dice") for k in kinds])
        dice = _mean([_summary(report, k, bundle, "dice") for k in kinds])
        ants_dice = _mean([_best_ants(report, k, "dice", lowest=False) for k in kinds])
        error = _mean([_summary(report, k, bundle, "field_error_mm") for k in kinds])
        ants_error = _mean([_best_ants(report, k, "field_error_mm", lowest=True) for k in kinds])
        seconds = _mean([_summary(report, k, bundle, "seconds_per_pair_with_load") for k in kinds])
        status = "beats best ANTs" if dice >= ants_dice and error <= ants_error else "below best ANTs"
        rows.append(
            f"| [`{bundle}`](bundles/{bundle}/docs/README.md) | {paper} | {images} | {none:.3f} → **{dice:.3f}** | "
            f"{ants_dice:.3f} | {error:.2f} ({ants_error:.2f}) | {seconds:.1f} | {status} |"
        )
    counts = sorted({len(report["kinds"][k]["pairs"]) for k in report["kinds"]})
    averaged = "; ".join(
        f"{f'`{names[0]}`' if len(names) == 1 else f'{len(names)} bundles'} over {', '.join(f'`{k}`' for k in group)}"
        for group, names in groups.items()
    )
    machine = report["machine"] + (", no GPU" if report["device"] == "cpu" else "")
    return "\n".join(rows) + (
        f"\n\nMeans over the kinds each bundle is made for ({averaged}; {'/'.join(map(str, counts))} held-out pairs each), "
        f"one run on {machine}, {report['date']}, regplugins {report['regplugins']}. "
        "s/pair includes loading the model.\n"
    )


def _cell(report: dict, kind: str, method: str) -> str:
    return f"{_summary(report, kind, method, 'dice'):.3f} ({_summary(report, kind, method, 'field_error_mm'):.2f} mm)"


def _seconds(report: dict, kinds, method: str) -> str:
    values = [_summary(report, k, method, "seconds_per_pair_with_load") for k in kinds]
    return f"{min(values):.1f} to {max(values):.1f}"


def card_table(report: dict, bundle: str) -> str:
    """A deformable bundle's model-card table: per kind, none, the best ANTs row, the bundle, and its pre-alignment and network unrefined."""
    kinds = [k for k in BUNDLE_ROWS[bundle][2] if k in KIND_NAMES]
    feed_forward = f"{bundle}:refine_iterations=0"
    counts = "/".join(sorted({str(len(report["kinds"][k]["pairs"])) for k in kinds}))
    rows = [f"| pairs ({counts} per kind) | none | best ANTs | this bundle | pre-alignment and network, no refinement |", "|---|---|---|---|---|"]
    for kind in kinds:
        ants = _best_ants_method(report, kind, "dice", lowest=False)
        rows.append(
            f"| {KIND_NAMES[kind]} (`{kind}`) | {_cell(report, kind, 'none')} | {_cell(report, kind, ants)}, {ANTS_NAMES[ants]} | "
            f"**{_cell(report, kind, bundle)}** | {_cell(report, kind, feed_forward)} |"
        )
    rows.append(
        f"| seconds per pair, load included | | tuned SyN {_seconds(report, kinds, 'ants_syn_tuned')} | {_seconds(report, kinds, bundle)} | "
        f"{_seconds(report, kinds, feed_forward)} |"
    )
    hd95 = [_summary(report, k, bundle, "hd95") for k in kinds]
    ants_hd95 = [_best_ants(report, k, "hd95", lowest=True) for k in kinds]
    folding = max(_summary(report, k, m, "folding_percent") or 0.0 for k in kinds for m in (bundle, feed_forward))
    machine = report["machine"] + (", no GPU" if report["device"] == "cpu" else "")
    return "\n".join(rows) + (
        f"\n\nMean Dice (mean field error inside the head). HD95 {min(hd95):.2f} to {max(hd95):.2f} mm (best ANTs "
        f"{min(ants_hd95):.2f} to {max(ants_hd95):.2f} mm); "
        + ("no voxel folds" if folding == 0 else f"at most {folding:.3f} % of voxels fold")
        + f". One `regplugins bench` run, {report['date']}, regplugins {report['regplugins']}, {machine}; these rows again:\n\n"
        f"```\nregplugins bench --bundles {bundle},{feed_forward} "
        f"--baselines none,{','.join(m for m in ANTS_BASELINES if m in report['kinds'][kinds[0]]['methods'])} "
        f"--kind {','.join(kinds)}\n```\n"
    )


def eval_metrics(report: dict, bundle: str) -> dict[str, float]:
    """The card's headline numbers as ``metadata.json`` gives them: the bundle's mean Dice and field error per kind."""
    metrics = {}
    for kind in BUNDLE_ROWS[bundle][2]:
        metrics[f"mean_dice_{kind}"] = round(_summary(report, kind, bundle, "dice"), 3)
        metrics[f"mean_field_error_mm_{kind}"] = round(_summary(report, kind, bundle, "field_error_mm"), 2)
    return metrics


def update_cards(report: dict, bundles_dir: str | Path) -> list[Path]:
    """Each marked card's table (``<!-- results table -->`` ... ``<!-- end of results table -->``) and its ``eval_metrics``."""
    updated = []
    for bundle in BUNDLE_ROWS:
        card = Path(bundles_dir) / bundle / "docs" / "README.md"
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
        if not CARD_MARKER.search(text):
            continue
        card.write_text(
            CARD_MARKER.sub(lambda _: f"<!-- results table -->\n{card_table(report, bundle)}<!-- end of results table -->", text), encoding="utf-8"
        )
        metadata = card.parent.parent / "configs" / "metadata.json"
        block = json.dumps(eval_metrics(report, bundle), indent=4).replace("\n", "\n    ")
        meta_text = re.sub(r'"eval_metrics": \{.*?\}', lambda _: f'"eval_metrics": {block}', metadata.read_text(encoding="utf-8"), flags=re.S)
        metadata.write_text(meta_text, encoding="utf-8")
        updated += [card, metadata]
    return updated


def summary_of(report: dict) -> dict:
    """A multi-kind bench report without its per-pair scores: what the table and a reader need, small enough to commit."""
    kinds = {
        kind: {
            "pairs": result["pairs"],
            "methods": {method: {"summary": scores["summary"], "timing": scores["timing"]} for method, scores in result["methods"].items()},
        }
        for kind, result in report["kinds"].items()
    }
    return {**{key: value for key, value in report.items() if key != "kinds"}, "kinds": kinds}


def update_readme(readme: str | Path = "README.md", results: str | Path | None = None) -> Path:
    """Rewrite the table between ``<!-- bundle table from RESULTS -->`` and ``<!-- end of bundle table -->`` from RESULTS.

    ``results``, a bench run's ``results.json``, first replaces RESULTS with its :func:`summary_of`.
    """
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    found = MARKER.search(text)
    if found is None:
        raise SystemExit(f"error: {readme}: no '<!-- bundle table from RESULTS -->' ... '<!-- end of bundle table -->' markers.")
    if results is not None:
        summary = summary_of(json.loads(Path(results).read_text(encoding="utf-8")))
        (readme.parent / found["path"]).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    report = json.loads((readme.parent / found["path"]).read_text(encoding="utf-8"))
    table = f"<!-- bundle table from {found['path']} -->\n{bundle_table(report)}<!-- end of bundle table -->"
    readme.write_text(text[: found.start()] + table + text[found.end() :], encoding="utf-8")
    update_cards(report, readme.parent / "bundles")
    return readme
