"""The ``regplugins`` command (python-fire): ``regplugins register``, ``apply``, ``synth``, ``augment``, ``groundtruth``, ``demo``,
``bench``, ``scaling``, ``table`` and ``release``."""

from __future__ import annotations

from collections.abc import Sequence

import fire


def _ints(value) -> tuple[int, ...]:
    return tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))


def _names(value) -> tuple[str, ...]:
    return tuple(str(v).strip() for v in (value.split(",") if isinstance(value, str) else value))


def register(fixed: str = "", moving: str = "", out: str = "registered", **options) -> None:
    """Register MOVING to FIXED into OUT/<moving>_to_<fixed>/ with a bundle's inference config (the contract's files).

    Options: --bundle NAME (a bundle's name or path; without it, a pair with a CT gets
    ct_mr_gradient_fusion_reg, two MR images fcn_multires_selfsup_reg, and --rigid the rigid head
    bundle), --moving_label FILE, --device cpu|cuda:0, --qc (a picture of each result, qc.png),
    --datalist FILE (many pairs, one line each; a failing pair is reported and the rest go on;
    --skip_existing resumes a stopped run; OUT/summary.json records them). Images may be NIfTI,
    NRRD, MHA/MHD, MGZ or a DICOM series folder. Any other --name value sets the bundle's config,
    e.g. --refine_iterations 0, --prealign rigid, --ckpt_path none. Hyphens work as underscores.
    """
    from regplugins.register import register_pairs

    if register_pairs(fixed, moving, out, **options)["failed"]:
        raise SystemExit(1)


def apply(transform: str, moving: str, reference: str, out: str, nearest: bool = False) -> None:
    """Resample MOVING onto REFERENCE's grid through TRANSFORM (ddf.nii.gz or rigid.tfm) into OUT, as ITK does.

    --nearest for labels. It reproduces the bundle's warped.nii.gz from its ddf.nii.gz, and maps
    any other image of the moving subject the same way.
    """
    from regplugins.register import apply_transform
    from regplugins.utils import as_flag

    try:
        nearest = as_flag(nearest, "--nearest")
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    print(apply_transform(transform, moving, reference, out, nearest=nearest))


def synth(
    out: str,
    n: int = 4,
    shape: str | Sequence[int] = "96,96,96",
    modalities: str | Sequence[str] = "ct,t1",
    seed: int = 0,
    spacing: float = 2.0,
    moving_grid: str = "random",
    rotation_deg: float = 5.0,
    translation_mm: float = 5.0,
    deformation_mm: float = 3.0,
    anatomy: str = "generated",
    subject_deformation_mm: float = 0.0,
    kind: str | None = None,
) -> str:
    """Write N synthetic pairs (moving, fixed modality) as NIfTI files and OUT/datalist.json.

    --moving_grid random gives the moving image another orientation, spacing and size;
    --deformation_mm 0 makes rigid-only pairs; --anatomy mni152 draws every head from the MNI152
    template (nilearn), one subject per seed with --subject_deformation_mm above 0. --kind takes
    the settings of one of the benchmark's sets (e.g. mni152_t2_t1) instead: with another --seed,
    pairs of the same kind that the benchmark never scores.
    """
    from regplugins.bench import SYNTHETIC_SETS
    from regplugins.data import write_synthetic_set

    settings = dict(
        modalities=_names(modalities),
        spacing=spacing,
        moving_grid=moving_grid,
        rotation_deg=rotation_deg,
        translation_mm=translation_mm,
        deformation_mm=deformation_mm,
        anatomy=anatomy,
        subject_deformation_mm=subject_deformation_mm,
    )
    if kind is not None:
        if kind not in SYNTHETIC_SETS:
            raise SystemExit(f"error: --kind: {kind!r} is not one of {', '.join(sorted(SYNTHETIC_SETS))}.")
        settings = {"spacing": 1.5, "moving_grid": "random", **SYNTHETIC_SETS[kind]}
    return str(write_synthetic_set(out, n=n, shape=_ints(shape), seed=seed, **settings))


def demo(out: str = "demo_out", bundle: str = "fcn_multires_selfsup_reg", device: str = "cpu", seed: int = 0) -> None:
    """Register a CT-like image to the MNI152 T1 template with BUNDLE and write a before/after PNG."""
    from regplugins.demo import run_demo

    run_demo(out=out, bundle=bundle, device=device, seed=seed)


def bench(
    bundles: str | Sequence[str] = "fcn_multires_selfsup_reg",
    data: str = "synth",
    baselines: str | Sequence[str] = "none,ants_syn",
    device: str = "cpu",
    out: str = "bench_out",
    n: int = 4,
    shape: str | Sequence[int] = "128,128,128",
    kind: str = "ct_t1",
) -> None:
    """Score BUNDLES and BASELINES on the same pairs; writes OUT/results.json, OUT/results.md and PNG plots.

    --data is a datalist (fixed, moving, moving_label, fixed_label[, true_ddf]) or "synth" for
    held-out synthetic sets of --kind (--n pairs of --shape voxels at 1.5 mm, or at the kind's own
    spacing); several kinds, "ct_t1,mni152_t2_t1", are scored in one run, each in OUT/<kind>/.
    Kinds: ct_t1, t1_t2, rigid, rigid_mni152 (rigid_mni152_t2_t1 T2/T1, rigid_mni152_turned turned up
    to 60 degrees per axis, rigid_mni152_far up to 180), t1_t2_affine, t1_t2_affine_mni152, the MNI152
    anatomy against a T1 fixed image, mni152_t2_t1, mni152_pd_t1 and mni152_ct_t1, and a T1 moving
    image against a CT fixed one, mni152_t1_ct; mni152_ct_t1_turned turns the CT-like head up to 25
    degrees per axis instead of 8.
    Baselines: none, ants_rigid, ants_affine, ants_syn, ants_synra, ants_syn_tuned (N4 first, then a
    smoother SyN; all Mattes MI, need the baselines extra), and the rigid head paper's ground-truth
    generation, groundtruth and groundtruth_nosym (without its symmetry alignment).
    A bundle may carry config overrides as a row of its own: fcn_multires_selfsup_reg:prealign=none.
    """
    from regplugins.bench import run_bench

    run_bench(
        bundles=_names(bundles) if bundles else (),
        data=data,
        baselines=_names(baselines) if baselines else (),
        device=device,
        out=out,
        n=n,
        shape=_ints(shape),
        kind=kind,
    )


def scaling(
    bundles: str | Sequence[str] = "fcn_multires_selfsup_reg",
    baselines: str | Sequence[str] = "ants_syn",
    sizes: str | Sequence[int | str] = "64,128,192,256",
    device: str = "cpu",
    out: str = "bench_scaling",
) -> None:
    """Time and peak memory of BUNDLES and BASELINES on one synthetic CT-like/T1-like pair per cubic size; writes OUT/scaling.md.

    --sizes clinical: a 512 x 512 x 300 CT against a 256 x 256 x 176 T1.
    """
    from regplugins.bench import run_scaling

    run_scaling(
        bundles=_names(bundles) if bundles else (),
        baselines=_names(baselines) if baselines else (),
        sizes=[size if str(size) == "clinical" else int(size) for size in _names(sizes)],
        device=device,
        out=out,
    )


def table(results: str | None = None, readme: str = "README.md") -> None:
    """Rewrite README's bundle table from the bench results that its marker names: `<!-- bundle table from FILE -->`.

    --results RUN/results.json (a multi-kind `regplugins bench` run) first replaces FILE with that
    run's summaries.
    """
    from regplugins.report import update_readme

    print(update_readme(readme, results))


def augment(
    datalist: str, out: str, n: int = 99, test_fraction: float = 0.4, max_rotation_deg: float = 15.0, max_translation_mm: float = 5.0, seed: int = 0
) -> str:
    """Write N rigidly moved copies of every pair of DATALIST (the rigid head paper's augmentation) and OUT/datalist.json.

    Copies stay in their original's subset ("training" or "testing", --test_fraction of the
    originals); each has its true_rigid, the motion composed with the original's true_rigid
    (the pair is taken as aligned without one: give one made by `regplugins groundtruth`).
    """
    from regplugins.io import RegistrationInputError
    from regplugins.rigid import write_augmented_set

    try:
        return str(
            write_augmented_set(
                datalist, out, n=n, test_fraction=test_fraction, max_rotation_deg=max_rotation_deg, max_translation_mm=max_translation_mm, seed=seed
            )
        )
    except RegistrationInputError as error:
        raise SystemExit(f"error: {error}") from None


def groundtruth(fixed: str, moving: str, out: str, symmetry: bool = True, seed: int = 0) -> str:
    """Write the rigid ground truth of a CT/MR head pair into OUT: rigid.tfm, rigid.json and warped.nii.gz.

    PCA symmetry alignment of both heads, then One-Plus-One Mattes MI registration with the rigid
    head paper's settings; --symmetry False registers the original images directly, for comparison.
    """
    from regplugins.io import RegistrationInputError
    from regplugins.rigid import write_ground_truth
    from regplugins.utils import as_flag

    try:
        symmetry = as_flag(symmetry, "--symmetry")
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        write_ground_truth(fixed, moving, out, symmetry=symmetry, seed=seed)
    except RegistrationInputError as error:
        raise SystemExit(f"error: {error}") from None
    return str(out)


def release(bundles: str | Sequence[str], out: str = "release", repo: str | None = None) -> None:
    """Write a model-zoo style OUT/<name>_v<version>.zip per bundle (names, paths, or "all" with weights) and OUT/model_info.json.

    --repo OWNER/REPO/TAG records the GitHub release address of each zip in the index, where
    `python -m monai.bundle download --source github --repo OWNER/REPO/TAG` will look for it.
    """
    from regplugins.bundles import trained_bundles
    from regplugins.release import build_release

    chosen = trained_bundles() if bundles == "all" else _names(bundles)
    for bundle in chosen:
        print(build_release(bundle, out, repo=repo))


def main() -> None:
    fire.Fire(
        {
            "register": register,
            "apply": apply,
            "synth": synth,
            "augment": augment,
            "groundtruth": groundtruth,
            "demo": demo,
            "bench": bench,
            "scaling": scaling,
            "table": table,
            "release": release,
        }
    )


if __name__ == "__main__":
    main()
