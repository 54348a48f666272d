"""``regplugins release``: model-zoo style zips of our bundles and their ``model_info.json`` index.

A release zip ``<name>_v<version>.zip`` holds one folder ``<name>/`` with the bundle's configs,
docs, LICENSE and models, plus ``models/model.ts``, the TorchScript export of the trained
network. Attached to a GitHub release with tag TAG, it downloads with
``python -m monai.bundle download --name <name> --version <version> --source github --repo OWNER/REPO/TAG``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from importlib.metadata import version as installed_version
from pathlib import Path

from regplugins.bundles import bundle_root

RELEASED_PARTS = ("LICENSE", "configs", "docs", "models")
# spatial size of the example input that traces a network with no fixed input size (a multiple of 16)
TRACE_SIZE = 64


def export_torchscript(root: Path, filepath: Path) -> None:
    """``monai.bundle ckpt_export`` of ``network_def`` with the trained weights, traced.

    Traced, not scripted: the networks compute their upsampling scales from tensor shapes,
    which TorchScript's compiler cannot type; the traced graph still runs on any input size
    the network itself accepts.
    """
    from monai.bundle import ckpt_export

    meta_file = root / "configs" / "metadata.json"
    image = json.loads(meta_file.read_text())["network_data_format"]["inputs"]["image"]
    spatial = [size if isinstance(size, int) else TRACE_SIZE for size in image["spatial_shape"]]
    ckpt_export(
        net_id="network_def",
        filepath=str(filepath),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(meta_file),
        config_file=str(root / "configs" / "inference.json"),
        key_in_ckpt="",
        use_trace=True,
        input_shape=[1, image["num_channels"], *spatial],
        bundle_root=str(root),
    )


def _checked_metadata(root: Path) -> dict:
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    if not (root / "models" / "model.pt").exists():
        raise ValueError(f"{root}: no trained weights in models/model.pt; a release ships a trained bundle.")
    pinned = meta.get("required_packages_version", {}).get("regplugins")
    if pinned != installed_version("regplugins"):
        raise ValueError(
            f"{root / 'configs' / 'metadata.json'}: required_packages_version names regplugins {pinned}, "
            f"but this is regplugins {installed_version('regplugins')}; update the metadata before releasing."
        )
    return meta


def github_release_url(repo: str, filename: str) -> str:
    """Where ``monai.bundle download --source github --repo OWNER/REPO/TAG`` looks for ``filename``."""
    parts = repo.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"--repo {repo}: expected OWNER/REPO/TAG, as monai.bundle download takes it.")
    owner, name, tag = parts
    return f"https://github.com/{owner}/{name}/releases/download/{tag}/{filename}"


def build_release(bundle: str | Path, out: str | Path, repo: str | None = None) -> Path:
    """Write ``OUT/<name>_v<version>.zip`` for ``bundle`` and add it to ``OUT/model_info.json``.

    ``repo`` (``OWNER/REPO/TAG``) makes the index's ``source`` the GitHub release address of
    the zip; without it the source is the zip's file name.
    """
    root = bundle_root(bundle)
    meta = _checked_metadata(root)
    name = root.name
    release = f"{name}_v{meta['version']}"
    source = github_release_url(repo, f"{release}.zip") if repo else f"{release}.zip"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    zip_path = out / f"{release}.zip"
    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(scratch) / "model.ts"
        export_torchscript(root, exported)
        partial = Path(scratch) / zip_path.name
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for part in RELEASED_PARTS:
                paths = [root / part] if (root / part).is_file() else sorted((root / part).rglob("*"))
                for path in paths:
                    if path.is_file() and path.name != "model.ts" and "__pycache__" not in path.parts:
                        archive.write(path, f"{name}/{path.relative_to(root)}")
            archive.write(exported, f"{name}/models/model.ts")
        shutil.move(partial, zip_path)
    index_path = out / "model_info.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[release] = {"checksum": hashlib.md5(zip_path.read_bytes()).hexdigest(), "source": source}
    index_path.write_text(json.dumps(index, indent=4, sort_keys=True) + "\n")
    return zip_path
