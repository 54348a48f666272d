"""The package's architecture: each module imports only the layers below it, so the import graph has no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import regplugins

PACKAGE = Path(regplugins.__file__).parent

# lowest first; a module (or subpackage) of regplugins imports only modules of lower layers,
# inside functions as well as at the top
LAYERS = [
    {"utils", "layers", "optimizers"},  # conventions: yes/no settings, fields in voxels and millimetres, warping; Adam
    {"losses", "networks", "inferers"},  # what the papers define
    {"alignment", "refinement"},  # the registration steps around the networks
    {"io"},  # the contract's inputs and their checks
    {"rigid", "plots"},  # rigid parameters and .tfm files, pictures
    {"outputs"},  # the contract's outputs
    {"metrics", "transforms"},  # scoring the outputs; the bundles' dictionary transforms
    {"data"},  # synthetic pairs and the training sets
    {"engines"},  # ignite batch preparation and training stages
    {"bundles"},  # finding and running bundles
    {"bench", "demo", "register", "release", "monailabel"},  # the commands
    {"report"},  # the README's table from a bench run
    {"cli"},
]


def imported_units(path: Path, own_package: tuple[str, ...]) -> set[str]:
    """The regplugins units (``regplugins.<unit>``) that a source file imports, anywhere in it."""
    units = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = list(own_package[: len(own_package) - node.level + 1])
            names = [".".join(base + [node.module])] if node.module else [".".join(base + [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        units |= {name.split(".")[1] for name in names if name.startswith("regplugins.")}
    return units


def test_every_module_imports_only_the_layers_below_it():
    layer_of = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        unit = parts[1]
        if unit in ("__init__", "__main__"):
            continue
        assert unit in layer_of, f"{unit}: place it in tests/test_layout.py's LAYERS"
        for imported in imported_units(path, parts[:-1]) - {unit}:
            if layer_of[imported] >= layer_of[unit]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports regplugins.{imported}")
    assert not upward, upward


def test_an_upward_import_is_caught(tmp_path):
    source = tmp_path / "spatial.py"
    source.write_text("def f():\n    from regplugins.metrics import folding_percent\n    from ..io import load_nifti\n", encoding="utf-8")
    assert imported_units(source, ("regplugins", "layers")) == {"metrics", "io"}
