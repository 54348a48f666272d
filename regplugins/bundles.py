"""Our bundles: finding them, running their inference config in this process as ``monai.bundle run``
does, and reading a yes/no setting the way that command line hands it over."""

from __future__ import annotations

from pathlib import Path

# the bundles of a source checkout; a downloaded bundle is reached by its own path
BUNDLES_DIR = Path(__file__).resolve().parent.parent / "bundles"


def as_flag(value, name: str) -> bool:
    """A yes/no setting as a bool, whether a config holds it or the command line gave it.

    ``monai.bundle run`` reads its overrides with Python fire, which turns ``--x False`` into a
    bool but ``--x false`` into the string ``"false"``, and a string is true: the setting would
    silently flip on. Both spellings mean what they say here; anything else is an error.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def bundle_root(bundle: str | Path) -> Path:
    """The folder of ``bundle``: a path to a bundle, or the name of one under ``bundles/``."""
    root = Path(bundle)
    if not (root / "configs" / "inference.json").exists():
        root = BUNDLES_DIR / str(bundle)
    if not (root / "configs" / "inference.json").exists():
        raise ValueError(f"{bundle}: not a bundle (no configs/inference.json there or under {BUNDLES_DIR}).")
    return root


def trained_bundles() -> list[Path]:
    """The bundles under ``bundles/`` that ship trained weights."""
    return sorted(path.parent.parent for path in BUNDLES_DIR.glob("*/models/model.pt"))


def inference_workflow(bundle: str | Path, bundle_logging: bool = True, **overrides):
    """The initialised ``ConfigWorkflow`` of the bundle's inference config with ``overrides`` (fixed_image, output_dir, ...).

    ``bundle_logging=False`` leaves the process's logging alone (the bundle's logging.conf would
    reconfigure it), for a host such as a MONAI Label server.
    """
    from monai.bundle import ConfigWorkflow

    root = bundle_root(bundle)
    workflow = ConfigWorkflow(
        config_file=str(root / "configs" / "inference.json"), meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf") if bundle_logging else False, workflow_type="infer", bundle_root=str(root), **overrides,
    )
    workflow.initialize()
    return workflow
