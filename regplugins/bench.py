"""``regplugins bench``: bundles and classical baselines on the same pairs, scored by the same code.

Writes ``results.json``, ``results.md`` and three PNGs (:func:`save_plots`); :func:`run_scaling`
times every method on one pair per volume size. Every method writes the contract's files for every pair (``<method>/<moving>_to_<fixed>/``), and
:func:`regplugins.metrics.score_registration` scores those files, so a bundle and ANTs are
judged identically. Each method runs in a child process of its own, which gives its peak
memory (the high-water mark of its own address space) without the benchmark's memory mixed in.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import regplugins
from regplugins.bundles import BUNDLES_DIR, inference_workflow
from regplugins.io import load_itk_displacement_field, load_nifti, pair_output_name, registration_pairs
from regplugins.metrics import score_registration

# FIRE's motion: a random affine of up to 10 degrees, 10 mm and 10 % scaling per axis, between T1 and T2
FIRE_AFFINE_PAIRS = {"modalities": ("t1", "t2"), "rotation_deg": 10.0, "translation_mm": 10.0, "scaling": 0.1}
# MNI152 heads at the template's 2 mm (a 128^3 grid holds the whole head), fine anatomy shared by both contrasts
MNI152_DEFORMABLE_PAIRS = {
    "anatomy": "mni152",
    "subject_deformation_mm": 4.0,
    "spacing": 2.0,
    "texture": "shared",
    "rotation_deg": 8.0,
    "translation_mm": 6.0,
    "scaling": 0.05,
    "deformation_mm": 3.0,
}
# the held-out synthetic sets: fixed seeds far from the training seeds of every bundle
SYNTHETIC_SETS = {
    "ct_t1": {"modalities": ("ct", "t1")},
    "t1_t2": {"modalities": ("t1", "t2")},
    "rigid": {"modalities": ("ct", "t1"), "deformation_mm": 0.0},
    # rigid pairs of MNI152 heads, one subject per seed: heads that share an anatomy, as real ones do
    "rigid_mni152": {
        "modalities": ("ct", "t1"),
        "deformation_mm": 0.0,
        "anatomy": "mni152",
        "subject_deformation_mm": 4.0,
        "deformation_scale_mm": 48.0,
    },
    # the same heads as T2-like against T1-like, turned up to 10 degrees per axis: rigid MR/MR
    "rigid_mni152_t2_t1": {
        "modalities": ("t2", "t1"),
        "deformation_mm": 0.0,
        "anatomy": "mni152",
        "subject_deformation_mm": 4.0,
        "deformation_scale_mm": 48.0,
        "rotation_deg": 10.0,
    },
    # the CT/T1 heads turned up to 60 degrees per axis: a head scanned in another position, beyond the rigid
    # network's training (15 degrees) and beyond what a local search from the identity finds
    "rigid_mni152_turned": {
        "modalities": ("ct", "t1"),
        "deformation_mm": 0.0,
        "anatomy": "mni152",
        "subject_deformation_mm": 4.0,
        "deformation_scale_mm": 48.0,
        "rotation_deg": 60.0,
    },
    # the CT/T1 heads turned any way, each Euler angle up to half a turn: upside down, about several axes
    "rigid_mni152_far": {
        "modalities": ("ct", "t1"),
        "deformation_mm": 0.0,
        "anatomy": "mni152",
        "subject_deformation_mm": 4.0,
        "deformation_scale_mm": 48.0,
        "rotation_deg": 180.0,
    },
    # FIRE's setting: multi-contrast pairs with a random affine (rotation, translation, scaling) plus a deformation
    "t1_t2_affine": FIRE_AFFINE_PAIRS,
    # the same on MNI152 heads, whose outline shows a rotation that the generator's round heads hide
    # (docs/experiments/fire_inverse_consistent_reg.md, item 20)
    "t1_t2_affine_mni152": {**FIRE_AFFINE_PAIRS, "anatomy": "mni152", "subject_deformation_mm": 4.0},
    # real anatomy against every contrast: the MNI152 head, one subject per seed, T1 fixed and a T2-, PD- or CT-like
    # moving image with bias field and noise, moved by an affine and a smooth deformation, on another grid
    **{f"mni152_{moving}_t1": {**MNI152_DEFORMABLE_PAIRS, "modalities": (moving, "t1")} for moving in ("t2", "pd", "ct")},
    # the radiotherapy direction: an MR moving onto a planning CT
    "mni152_t1_ct": {**MNI152_DEFORMABLE_PAIRS, "modalities": ("t1", "ct")},
    # a CT and an MR of one head often lie turned further apart than 8 degrees (the head tilted on the CT table)
    "mni152_ct_t1_turned": {**MNI152_DEFORMABLE_PAIRS, "modalities": ("ct", "t1"), "rotation_deg": 25.0},
}
HELD_OUT_SEED = 2_000_000
# the kinds that the accuracy claims of the deformable bundles rest on (docs/benchmarks.md)
DEFORMABLE_KINDS = ("ct_t1", "mni152_t2_t1", "mni152_pd_t1", "mni152_ct_t1")

# ants.registration settings behind the baseline names; all use Mattes mutual information. ``n4`` corrects the
# bias field of every image that is not CT first (mask from ants.get_mask): default SyN is thrown off by it.
ANTS_BASELINES = {
    "ants_rigid": {"type_of_transform": "Rigid"},
    "ants_affine": {"type_of_transform": "Affine"},
    "ants_syn": {"type_of_transform": "SyN"},
    "ants_synra": {"type_of_transform": "SyNRA"},
    # the best of a 20-configuration sweep on multi-modal head pairs with a bias field (issue 46)
    "ants_syn_tuned": {"type_of_transform": "SyN", "flow_sigma": 5, "total_sigma": 4, "n4": True},
}
# the rigid head paper's ground-truth generation (ITK), with and without its symmetry alignment
GROUND_TRUTH_BASELINES = {"groundtruth": True, "groundtruth_nosym": False}
BASELINES = ("none", *ANTS_BASELINES, *GROUND_TRUTH_BASELINES)

# the columns of results.md: (key in the scores, header)
COLUMNS = (
    ("dice", "Dice"),
    ("hd95", "HD95 mm"),
    ("asd", "ASD mm"),
    ("folding_percent", "folding %"),
    ("std_log_jacobian", "std log J"),
    ("field_error_mm", "field error mm"),
    ("inverse_consistency_mm", "inverse consistency mm"),
    ("inverse_folding_percent", "inverse folding %"),
    ("rotation_error_deg", "rotation error deg"),
    ("translation_error_mm", "translation error mm"),
    ("head_dsc", "DSC"),
    ("head_jsc", "JSC"),
    ("rp", "Rp"),
    ("rs", "Rs"),
    ("cms", "CMS"),
    ("ssim", "SSIM"),
    ("seconds_per_pair", "s/pair"),
    ("network_seconds_per_pair", "network s/pair"),
    ("seconds_per_pair_with_load", "s/pair incl. load"),
    ("peak_memory_mb", "peak memory MB"),
)


def synthetic_datalist(out: str | Path, kind: str = "ct_t1", n: int = 4, shape: Sequence[int] = (128, 128, 128), spacing: float = 1.5) -> Path:
    """Write (once) a held-out synthetic set of ``kind`` and return its datalist (``spacing`` unless the kind sets its own)."""
    from regplugins.data import write_synthetic_set

    if kind not in SYNTHETIC_SETS:
        raise ValueError(f"unknown synthetic set {kind!r}; choose from {sorted(SYNTHETIC_SETS)}.")
    folder = Path(out) / f"data_{kind}_{n}x{'x'.join(map(str, shape))}"
    datalist = folder / "datalist.json"
    if not datalist.exists():
        write_synthetic_set(folder, n=n, shape=shape, seed=HELD_OUT_SEED, **{"spacing": spacing, **SYNTHETIC_SETS[kind]})
    return datalist


def bundle_and_overrides(method: str) -> tuple[str, dict]:
    """Split a bundle method ``name[:key=value...]`` into the bundle and its config overrides.

    ``ct_mr_gradient_fusion_reg:fusion=average`` or ``fcn_multires_selfsup_reg:prealign=none``
    benchmark a variant of a bundle as a row of its own; values are JSON where they parse as
    JSON (numbers, lists, booleans) and strings otherwise, as on the ``monai.bundle`` command line.
    """
    name, *settings = method.split(":")
    overrides = {}
    for setting in settings:
        key, separator, value = setting.partition("=")
        if not separator:
            raise SystemExit(f"error: {method}: an override is key=value, got {setting!r}.")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def method_folder(out: Path, method: str) -> Path:
    """The folder of ``method``'s outputs under ``out``, named after it with each ``#`` of a config id as ``.``:
    MONAI's config parser turns a ``#`` in the output path given to a bundle into ``::``."""
    return out / method.replace("#", ".")


def register_with_bundle(method: str, datalist: str, out: str, device: str) -> dict:
    """The contract run of a bundle (with the overrides of ``method``) on a datalist, in this process; returns its timings.

    ``monai.bundle run`` is this same sequence; splitting it times the model load apart.
    """
    bundle, overrides = bundle_and_overrides(method)
    start = time.perf_counter()
    workflow = inference_workflow(bundle, datalist=datalist, output_dir=out, device=device, **overrides)
    network_seconds = _time_forward_passes(workflow.parser.get_parsed_content("network"), device)
    _synchronize(device)
    loaded = time.perf_counter()
    workflow.run()
    _synchronize(device)
    done = time.perf_counter()
    workflow.finalize()
    return {"load_seconds": loaded - start, "run_seconds": done - loaded, "network_seconds": network_seconds[0]}


def _time_forward_passes(network, device: str) -> list[float]:
    """Hooks that add the time of every forward pass of ``network`` to the returned one-element list.

    This is the network's own share of a bundle's time, apart from loading, resampling and
    writing. In pair-optimisation mode the hooks travel with the inferer's copy of the network
    and count its forward passes, not its backward passes.
    """
    total, started = [0.0], [0.0]

    def before(module, inputs):
        _synchronize(device)
        started[0] = time.perf_counter()

    def after(module, inputs, outputs):
        _synchronize(device)
        total[0] += time.perf_counter() - started[0]

    network.register_forward_pre_hook(before)
    network.register_forward_hook(after)
    return total


def register_with_baseline(baseline: str, datalist: str, out: str) -> dict:
    """Register every pair with a baseline and write the contract's files; returns its timings."""
    from regplugins.outputs import warp_native_images, write_registration_outputs

    run_seconds = 0.0
    for pair in registration_pairs(datalist=datalist):
        start = time.perf_counter()
        rigid = None
        if baseline in ANTS_BASELINES:
            field = _ants_field(pair, ANTS_BASELINES[baseline])
        elif baseline in GROUND_TRUTH_BASELINES:
            field, rigid = _ground_truth_field(pair, GROUND_TRUTH_BASELINES[baseline])
        else:
            field = _zero_field(pair)
        outputs = warp_native_images(field, pair["fixed"], pair["moving"], pair.get("moving_label"))
        write_registration_outputs(Path(out) / pair_output_name(pair["moving"], pair["fixed"]), outputs, rigid=rigid)
        run_seconds += time.perf_counter() - start
    return {"load_seconds": 0.0, "run_seconds": run_seconds}


def _zero_field(pair: dict) -> np.ndarray:
    import nibabel as nib

    return np.zeros((3, *nib.load(pair["fixed"]).shape[:3]), np.float32)


def _ground_truth_field(pair: dict, symmetry: bool) -> tuple[np.ndarray, dict]:
    """The ground-truth generation's rigid transform as a field on the fixed grid, and as ``rigid.json`` holds it."""
    import nibabel as nib

    from regplugins.rigid import generate_ground_truth, grid_center_lps, rigid_field

    matrix = generate_ground_truth(pair["fixed"], pair["moving"], symmetry=symmetry)
    fixed = nib.load(pair["fixed"])
    rigid = {
        "matrix_lps": matrix,
        "center_mm": grid_center_lps(fixed.affine, fixed.shape[:3]),
        "method": "groundtruth",
        "symmetry_alignment": symmetry,
    }
    return rigid_field(matrix, fixed.affine, fixed.shape[:3]), rigid


def _ants_field(pair: dict, settings: dict) -> np.ndarray:
    """ANTs registration with Mattes MI, its transforms composed into one field on the fixed grid (RAS mm)."""
    import ants

    settings = dict(settings)
    fixed, moving = ants.image_read(pair["fixed"]), ants.image_read(pair["moving"])
    if settings.pop("n4", False):
        fixed, moving = (_n4_unless_ct(image) for image in (fixed, moving))
    # ANTs' transform files go in a folder of our own: left in /tmp, as ANTs leaves them, a SyN pair at 256^3 leaves 350 MB
    with tempfile.TemporaryDirectory() as folder:
        prefix = os.path.join(folder, "ants_")
        result = ants.registration(fixed, moving, aff_metric="mattes", syn_metric="mattes", random_seed=0, outprefix=prefix, **settings)
        composed = ants.apply_transforms(fixed, moving, result["fwdtransforms"], compose=prefix + "composed_")
        field, _ = load_itk_displacement_field(composed)
    return field


def _n4_unless_ct(image):
    """N4 bias-field correction of an MR image inside its head mask; CT (air near -1000 HU) has no bias field."""
    import ants

    from regplugins.transforms.intensity import looks_like_ct

    if looks_like_ct(image):
        return image
    return ants.n4_bias_field_correction(image, mask=ants.get_mask(image))


def _synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def peak_resident_mb() -> float:
    """This process's peak resident memory since its ``exec``, in MiB.

    Not ``ru_maxrss``: Linux carries the forking parent's peak over ``exec`` into it, so every
    child would report at least the benchmark's own memory. ``VmHWM`` is the new image's own.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:  # no procfs (macOS): the inherited peak is the best there is
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform.startswith("linux") else 2**20)


def _child_main(method: str, datalist: str, out: str, device: str, result_path: str) -> None:
    """Entry point of the child process that runs one method."""
    if method in BASELINES:
        timing = register_with_baseline(method, datalist, out)
    else:
        timing = register_with_bundle(method, datalist, out, device)
    timing["peak_memory_mb"] = peak_resident_mb()
    if str(device).startswith("cuda"):
        import torch

        timing["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(result_path).write_text(json.dumps(timing))


def measure_method(method: str, datalist: str, out: Path, device: str, num_pairs: int) -> dict:
    """Run ``method`` in a child process; its timings and peak resident memory.

    A progress bar counts the pairs whose field the child has written, with the time left.
    """
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "timing.json"
    code = "import sys; from regplugins.bench import _child_main; _child_main(*sys.argv[1:])"
    child = subprocess.Popen([sys.executable, "-c", code, method, str(datalist), str(out), device, str(result_path)])
    with tqdm(total=num_pairs, desc=method, unit="pair", mininterval=2.0) as progress:
        while True:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            progress.update(len(list(out.glob("*/ddf.nii.gz"))) - progress.n)
            if pid:
                break
            time.sleep(0.5)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{method} failed with exit code {os.waitstatus_to_exitcode(status)}; its error is printed above.")
    return json.loads(result_path.read_text())


def score_method(pairs: Sequence[dict], folder: Path, timing: dict) -> dict:
    scores = [score_registration(pair, folder / pair_output_name(pair["moving"], pair["fixed"])) for pair in pairs]
    n = len(pairs)
    timing = {
        **timing,
        "seconds_per_pair": timing["run_seconds"] / n,
        "seconds_per_pair_with_load": (timing["run_seconds"] + timing["load_seconds"]) / n,
    }
    if "network_seconds" in timing:
        timing["network_seconds_per_pair"] = timing["network_seconds"] / n
    summary = {}
    for key, _ in COLUMNS:
        values = [s[key] for s in scores if key in s]
        if values:
            summary[key] = {"mean": float(np.nanmean(values)), "sd": float(np.nanstd(values))}
        elif key in timing:  # one number per method: no spread to report
            summary[key] = {"mean": float(timing[key]), "sd": None}
    return {"summary": summary, "timing": timing, "pairs": scores}


def results_table(results: dict) -> str:
    """Methods as rows, metrics as columns, mean ± sd."""
    present = [(k, h) for k, h in COLUMNS if any(k in r["summary"] for r in results.values())]
    lines = ["| method | " + " | ".join(h for _, h in present) + " |", "|---" * (len(present) + 1) + "|"]
    for method, result in results.items():
        cells = []
        for key, _ in present:
            value = result["summary"].get(key)
            if value is None:
                cells.append("")
            else:
                cells.append(f"{value['mean']:.3g}" + ("" if value["sd"] is None else f" ± {value['sd']:.2g}"))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_bench(
    bundles: Sequence[str] = ("fcn_multires_selfsup_reg",),
    data: str = "synth",
    baselines: Sequence[str] = ("none", "ants_syn"),
    device: str = "cpu",
    out: str = "bench_out",
    n: int = 4,
    shape: Sequence[int] = (128, 128, 128),
    kind: str | Sequence[str] = "ct_t1",
) -> dict:
    """Register ``data`` (a datalist, or ``synth`` for held-out synthetic sets) with every method; write the results.

    ``kind`` names one synthetic set or several (a sequence or ``"a,b"``). With several, each
    set's results go to ``OUT/<kind>/`` and ``OUT/results.md`` holds every set's table under
    one machine line, so that every method is compared on every set in one run.
    """
    kinds = [k.strip() for k in kind.split(",")] if isinstance(kind, str) else list(kind)
    unknown = [k for k in kinds if k not in SYNTHETIC_SETS]
    if data == "synth" and unknown:
        raise SystemExit(f"error: unknown synthetic set {', '.join(unknown)}; choose from {', '.join(sorted(SYNTHETIC_SETS))}.")
    if data != "synth" or len(kinds) == 1:
        return _bench_datalist(bundles, data, baselines, device, Path(out).resolve(), n, shape, kinds[0])
    reports = {k: _bench_datalist(bundles, data, baselines, device, Path(out).resolve() / k, n, shape, k) for k in kinds}
    machine = next(iter(reports.values()))["machine"]
    report = {"date": datetime.date.today().isoformat(), "regplugins": regplugins.__version__, "device": device, "machine": machine, "kinds": reports}
    (Path(out) / "results.json").write_text(json.dumps(report, indent=2))
    sections = [f"### {k}\n\n{len(r['pairs'])} pairs, `{k}/results.md`\n\n{results_table(r['methods'])}" for k, r in reports.items()]
    (Path(out) / "results.md").write_text(f"Device {device} ({machine})\n\n" + "\n".join(sections))
    return report


def _bench_datalist(bundles, data, baselines, device, out_path: Path, n, shape, kind) -> dict:
    """One datalist (or one synthetic set of ``kind``), every method: ``out_path/results.json``, ``results.md``, plots."""
    datalist = synthetic_datalist(out_path, kind, n, shape) if data == "synth" else Path(data).resolve()
    pairs = registration_pairs(datalist=str(datalist))
    methods = list(baselines) + list(bundles)
    unknown = [b for b in bundles if not (BUNDLES_DIR / bundle_and_overrides(b)[0] / "configs" / "inference.json").exists()]
    if unknown:
        raise SystemExit(f"error: no such bundle under {BUNDLES_DIR}: {', '.join(unknown)}")
    results, notes = {}, []
    for method in methods:
        if method in ANTS_BASELINES and not _has_ants():
            notes.append(f"{method} skipped: antspyx is not installed (pip install 'regplugins[baselines]').")
            continue
        folder = method_folder(out_path, method)
        timing = measure_method(method, str(datalist), folder, device, len(pairs))
        results[method] = score_method(pairs, folder, timing)
    report = {
        "date": datetime.date.today().isoformat(),
        "regplugins": regplugins.__version__,
        "datalist": str(datalist),
        "device": device,
        "machine": _machine(device),
        "notes": notes,
        "methods": results,
    }
    report["pairs"] = [pair_output_name(pair["moving"], pair["fixed"]) for pair in pairs]
    (out_path / "results.json").write_text(json.dumps(report, indent=2))
    table = results_table(results)
    header = f"{len(pairs)} pairs from `{datalist.name}` in `{datalist.parent.name}`, device {device} ({report['machine']})\n\n"
    (out_path / "results.md").write_text(header + table + "".join(f"\n{note}\n" for note in notes))
    save_plots(pairs, results, out_path)
    print(header + table + "\n".join(notes))
    return report


def save_plots(pairs: Sequence[dict], results: dict, out: Path) -> None:
    """``dice_boxplot.png``, ``dice_vs_seconds.png`` and ``overlay.png`` (the first pair, every method) in ``out``."""
    from regplugins.plots import on_fixed_grid, save_dice_box_plot, save_dice_vs_seconds_plot, save_slice_panels

    scored = {m: r for m, r in results.items() if "dice" in r["summary"]}
    if scored:
        save_dice_box_plot({m: [p["dice"] for p in r["pairs"]] for m, r in scored.items()}, out / "dice_boxplot.png")
        points = {m: (r["timing"]["seconds_per_pair"], r["summary"]["dice"]["mean"]) for m, r in scored.items()}
        save_dice_vs_seconds_plot(points, out / "dice_vs_seconds.png")
    pair = pairs[0]
    name = pair_output_name(pair["moving"], pair["fixed"])
    panels = [(load_nifti(pair["fixed"])[0], "fixed"), (on_fixed_grid(pair["moving"], pair["fixed"]), "moving")]
    panels += [(load_nifti(str(method_folder(out, method) / name / "warped.nii.gz"))[0], method) for method in results]
    outline = load_nifti(pair["fixed_label"])[0] > 0 if pair.get("fixed_label") else np.zeros_like(panels[0][0])
    save_slice_panels(panels, outline, out / "overlay.png", title=f"{name}; red: the fixed image's head outline")


def run_scaling(
    bundles: Sequence[str] = ("fcn_multires_selfsup_reg",),
    baselines: Sequence[str] = ("ants_syn",),
    sizes: Sequence[int | str] = (64, 128, 192, 256),
    device: str = "cpu",
    out: str = "bench_scaling",
    kind: str = "ct_t1",
) -> str:
    """Seconds and peak memory of every method on one pair per cubic size; writes and returns ``OUT/scaling.md``.

    The size ``clinical`` is a 512 x 512 x 300 CT (fixed) against a 256 x 256 x 176 T1
    (:func:`regplugins.data.write_clinical_pair`).

    A method that fails at a size (typically for lack of memory) gets "failed" in its cells, and
    the error its child printed stays above the table.
    """
    methods = [*baselines, *bundles]
    cells = {method: [] for method in methods}
    for size in sizes:
        folder = Path(out).resolve() / f"{size}"
        if size == "clinical":
            from regplugins.data import write_clinical_pair

            datalist = folder / "data" / "datalist.json"
            if not datalist.exists():
                write_clinical_pair(folder / "data", seed=HELD_OUT_SEED)
        else:
            datalist = synthetic_datalist(folder, kind, n=1, shape=(size, size, size))
        for method in methods:
            try:
                timing = measure_method(method, str(datalist), method_folder(folder, method), device, num_pairs=1)
            except RuntimeError as error:
                print(f"[bench] {method} at {size}^3: {error}", flush=True)
                cells[method].append("failed")
                continue
            memory = timing.get("gpu_peak_memory_mb", timing["peak_memory_mb"])
            cells[method].append(f"{timing['run_seconds']:.3g} s, {memory:.0f} MB")
    memory_kind = "GPU max allocated" if str(device).startswith("cuda") else "peak RSS"
    lines = [
        f"One {kind} pair per size, device {device} ({_machine(device)}): seconds per pair (load excluded), {memory_kind}.",
        "",
        "| method | " + " | ".join("512x512x300 CT / 256x256x176 T1" if s == "clinical" else f"{s}^3" for s in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
        *[f"| {method} | " + " | ".join(row) + " |" for method, row in cells.items()],
    ]
    table = "\n".join(lines) + "\n"
    (Path(out) / "scaling.md").write_text(table)
    print(table)
    return table


def _has_ants() -> bool:
    import importlib.util

    return importlib.util.find_spec("ants") is not None


def _machine(device: str) -> str:
    """The device in words; for a CPU also its model and whether the bundles compute in bfloat16 there, which halves their time."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    from regplugins.inferers import bfloat16_is_fast

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    model = f" of {models[0]}" if models else ""
    units, precision = ("with", "bfloat16") if bfloat16_is_fast("cpu") else ("without", "float32")
    return f"{len(os.sched_getaffinity(0))} CPU cores{model}, {units} bfloat16 units: bundles in {precision} by default"
