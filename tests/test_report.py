"""The README's bundle table comes from one bench run's results.json, and says what that run measured."""

from __future__ import annotations

import json

import pytest

from regplugins.report import BUNDLE_ROWS, CARD_MARKER, MARKER, bundle_table, card_table, eval_metrics, update_readme

from conftest import ROOT


def _kind(methods: dict[str, tuple[float, float, float]], pairs: int = 4) -> dict:
    """One kind of a bench report: method -> (Dice, field error, s/pair with load)."""
    return {
        "pairs": [f"pair{i}" for i in range(pairs)],
        "methods": {
            method: {"summary": {"dice": {"mean": dice}, "field_error_mm": {"mean": error}, "seconds_per_pair_with_load": {"mean": seconds}}}
            for method, (dice, error, seconds) in methods.items()
        },
    }


def _report(rigid_kind: bool = True) -> dict:
    kinds = {
        # the best ANTs Dice and the best ANTs field error come from different rows in ct_t1
        "ct_t1": _kind(
            {
                "none": (0.4, 7.0, 0.3),
                "ants_affine": (0.7, 2.5, 7.0),
                "ants_syn_tuned": (0.72, 2.8, 18.0),
                "fcn_multires_selfsup_reg": (0.8, 1.5, 3.0),
            }
        ),
        "mni152_t2_t1": _kind(
            {
                "none": (0.5, 9.0, 0.3),
                "ants_affine": (0.7, 2.5, 7.0),
                "ants_syn_tuned": (0.78, 1.7, 19.0),
                "fcn_multires_selfsup_reg": (0.84, 1.1, 4.0),
            }
        ),
        "mni152_pd_t1": _kind({"none": (0.5, 9.0, 0.3), "ants_syn_tuned": (0.76, 2.0, 18.0), "fcn_multires_selfsup_reg": (0.82, 1.2, 4.0)}),
        "mni152_ct_t1": _kind({"none": (0.5, 9.0, 0.3), "ants_syn": (0.77, 2.2, 10.0), "fcn_multires_selfsup_reg": (0.7, 2.5, 4.0)}),
    }
    if rigid_kind:
        kinds["rigid_mni152"] = _kind({"none": (0.6, 5.0, 0.3), "ants_rigid": (0.9, 0.2, 10.0), "head_ct_mr_rigid_reg": (0.91, 0.1, 4.5)})
    return {"date": "2026-11-29", "regplugins": "0.5.0", "device": "cpu", "machine": "2 CPU cores", "kinds": kinds}


def test_each_row_averages_its_kinds_against_the_best_ants_row_of_each_kind():
    table = bundle_table(_report())
    fcn = next(line for line in table.splitlines() if "`fcn_multires_selfsup_reg`" in line)
    cells = [cell.strip() for cell in fcn.split("|")[1:-1]]
    assert cells[3] == "0.475 → **0.790**"  # none and the bundle, means over the four kinds
    assert cells[4] == f"{(0.72 + 0.78 + 0.76 + 0.77) / 4:.3f}"  # the best ANTs Dice of each kind
    assert cells[5] == f"{(1.5 + 1.1 + 1.2 + 2.5) / 4:.2f} ({(2.5 + 1.7 + 2.0 + 2.2) / 4:.2f})"  # the lowest ANTs error of each kind
    assert cells[6] == "3.8" and cells[7] == "beats best ANTs"
    rigid = next(line for line in table.splitlines() if "`head_ct_mr_rigid_reg`" in line)
    assert "0.600 → **0.910**" in rigid and "0.10 (0.20)" in rigid
    assert "2026-11-29" in table and "regplugins 0.5.0" in table and "2 CPU cores, no GPU" in table
    assert len(table.splitlines()[0].split("|")) - 2 <= 8  # at most eight columns


def test_a_bundle_missing_from_a_kind_gets_no_row_and_a_worse_one_says_so():
    report = _report(rigid_kind=False)
    report["kinds"]["ct_t1"]["methods"]["fcn_multires_selfsup_reg"]["summary"]["dice"]["mean"] = 0.1
    table = bundle_table(report)
    assert "head_ct_mr_rigid_reg" not in table
    assert table.splitlines()[2].endswith("| below best ANTs |")


def test_update_readme_rewrites_only_the_marked_table(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(_report()), encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- bundle table from results.json -->\nold\n<!-- end of bundle table -->\n\nAfter.\n", encoding="utf-8")
    update_readme(readme)
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\n<!-- bundle table from results.json -->\n| bundle |") and text.endswith(
        "<!-- end of bundle table -->\n\nAfter.\n"
    )
    assert "old" not in text and bundle_table(_report()) in text
    run = _report()
    run["kinds"]["ct_t1"]["methods"]["none"]["pairs"] = [{"pair": "pair0", "dice": 0.4}]  # per-pair scores stay out of the summary
    for kind in run["kinds"].values():
        for scores in kind["methods"].values():
            scores["timing"] = {"run_seconds": 1.2}
    (tmp_path / "run.json").write_text(json.dumps(run), encoding="utf-8")
    update_readme(readme, tmp_path / "run.json")
    summary = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert "pairs" not in summary["kinds"]["ct_t1"]["methods"]["none"] and summary["kinds"]["ct_t1"]["methods"]["none"]["timing"]
    assert bundle_table(run) in readme.read_text(encoding="utf-8")
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no '<!-- bundle table from RESULTS -->'"):
        update_readme(readme)


def test_the_readme_table_is_the_one_its_results_json_gives():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = MARKER.search(text)
    assert found is not None, "README.md has lost its bundle table markers"
    report = json.loads((ROOT / found["path"]).read_text(encoding="utf-8"))
    assert bundle_table(report) in text, "README.md's bundle table differs from its results.json: run `regplugins table`"
    assert set(report["kinds"]) >= {"ct_t1", "mni152_t2_t1", "mni152_pd_t1", "mni152_ct_t1", "rigid_mni152"}


def test_the_deformable_cards_tables_and_metadata_are_those_of_the_same_results():
    found = MARKER.search((ROOT / "README.md").read_text(encoding="utf-8"))
    report = json.loads((ROOT / found["path"]).read_text(encoding="utf-8"))
    marked = []
    for bundle in BUNDLE_ROWS:
        card = (ROOT / "bundles" / bundle / "docs" / "README.md").read_text(encoding="utf-8")
        if CARD_MARKER.search(card):
            marked.append(bundle)
            assert card_table(report, bundle) in card, f"{bundle}'s card table differs from {found['path']}: run `regplugins table`"
            metadata = json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
            assert metadata["eval_metrics"] == eval_metrics(report, bundle)
    assert len(marked) == 4  # the deformable bundles; the rigid card keeps its own rigid-error table
