"""Our bundles: finding them by name, and running their inference config in this process as
``monai.bundle run`` does, once or pair after pair."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

# the bundles of a source checkout; a downloaded bundle is reached by its own path
BUNDLES_DIR = Path(__file__).resolve().parent.parent / "bundles"
# where a wheel installs them (pyproject.toml's data-files), for an install that is not editable
INSTALLED_BUNDLES_DIR = Path(sysconfig.get_path("data")) / "share" / "regplugins" / "bundles"
# a folder of bundles of the user's own (e.g. downloaded with `python -m monai.bundle download`), searched first
BUNDLES_DIR_VARIABLE = "REGPLUGINS_BUNDLES_DIR"


def bundle_dirs() -> list[Path]:
    """The folders searched for a bundle given by name: $REGPLUGINS_BUNDLES_DIR, the checkout's, the installed ones."""
    chosen = [Path(os.environ[BUNDLES_DIR_VARIABLE])] if os.environ.get(BUNDLES_DIR_VARIABLE) else []
    return [*chosen, BUNDLES_DIR, INSTALLED_BUNDLES_DIR]


def bundle_root(bundle: str | Path) -> Path:
    """The folder of ``bundle``: a path to a bundle, or the name of one in :func:`bundle_dirs`."""
    for root in (Path(bundle), *(folder / str(bundle) for folder in bundle_dirs())):
        if (root / "configs" / "inference.json").exists():
            return root
    searched = ", ".join(str(folder) for folder in bundle_dirs())
    raise ValueError(f"{bundle}: not a bundle (no configs/inference.json there or in {searched}; set {BUNDLES_DIR_VARIABLE} to a folder of bundles).")


def trained_bundles() -> list[Path]:
    """The bundles of the checkout's ``bundles/`` that ship trained weights."""
    return sorted(path.parent.parent for path in BUNDLES_DIR.glob("*/models/model.pt"))


def inference_workflow(bundle: str | Path, bundle_logging: bool = True, **overrides):
    """The initialised ``ConfigWorkflow`` of the bundle's inference config with ``overrides`` (fixed_image, output_dir, ...).

    ``bundle_logging=False`` leaves the process's logging alone (the bundle's logging.conf would
    reconfigure it), for a host such as a MONAI Label server.
    """
    from monai.bundle import ConfigWorkflow

    root = bundle_root(bundle)
    workflow = ConfigWorkflow(
        config_file=str(root / "configs" / "inference.json"),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf") if bundle_logging else False,
        workflow_type="infer",
        bundle_root=str(root),
        **overrides,
    )
    workflow.initialize()
    return workflow


class BundleRunner:
    """A bundle's inference workflow built on its first pair and run again for each next one.

    The config is parsed and the network built once per runner, for a cohort (``regplugins
    register --datalist``) or a server (MONAI Label); beside a registration that saves little
    (docs/benchmarks.md, "MONAI Label"). The checkpoint handler reloads the weights at each run. Each pair is
    checked (:func:`regplugins.io.check_registration_inputs`) before its work. Not thread-safe:
    a server holds a lock around :meth:`run`.
    """

    def __init__(self, bundle: str | Path, bundle_logging: bool = False, **overrides):
        self.root, self.bundle_logging, self.overrides = bundle_root(bundle), bundle_logging, overrides
        self.workflow = None

    def run(self, pair: dict) -> None:
        """Register ``pair`` (``fixed``, ``moving``, optional ``moving_label``) into the runner's ``output_dir``.

        Raises :class:`regplugins.io.RegistrationInputError` for an input that cannot be used and
        :class:`regplugins.io.RegistrationError` for a registration that failed on the way.
        """
        from regplugins.engines import PairsFailed
        from regplugins.io import RegistrationError, check_registration_inputs

        check_registration_inputs([pair])
        entry = {key: pair[key] for key in ("fixed", "moving", "moving_label") if pair.get(key)}
        if self.workflow is None:
            self.workflow = inference_workflow(
                self.root,
                self.bundle_logging,
                fixed_image=entry["fixed"],
                moving_image=entry["moving"],
                moving_label=entry.get("moving_label", ""),
                **{"evaluator#summary_dir": None},  # the host keeps its own record of the pairs
                **self.overrides,
            )
        self.workflow.dataset.data = [entry]
        try:
            self.workflow.run()
        except PairsFailed as failure:  # an exception a host catches, not the end of its process
            raise RegistrationError(failure.errors[0]) from None
