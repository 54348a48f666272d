"""Which Mattes MI finish for the rigid bundle? ITK against SimpleITK, and optimiser variants (docs/experiments/head_ct_mr_rigid_reg.md)

For the pairs 000-003 of a rigid_mni152 bench folder, starts 1.5 degrees and 1.5 mm off the true
motion (about where the network leaves a pair) and finishes with the bundle's recipe through
``itk`` (``{'itk': True}``) or SimpleITK, or a variant of it: gradient descent as ANTs Rigid
(``optimizer='gd'``), other sampling (``strategy``, ``sampling``), pyramids (``shrink``,
``sigmas``), a second pass (``polish``: the settings of it), the images at other spacings
(``spacing``, the fixed image's and by default the moving one's; ``moving_spacing``, 0 for the
moving image's own grid). Prints the errors and the seconds, reading the images included.

    python experiments/rigid_finish_sitk_probe.py bench/rigid_mni152/data_rigid_mni152_4x128x128x128 "{'sampling': 0.2}"
"""

import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from regplugins.metrics import rigid_errors
from regplugins.rigid.parameters import grid_center_lps, rigid_matrix

DATA = Path(sys.argv[1])


def itk_resampled(path, spacing_mm):
    """0.5.0's ``resampled``, on the ``itk`` package."""
    import itk

    from regplugins.rigid.groundtruth import _isotropic, _read

    image = _read(path)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    if spacing.min() >= spacing_mm:
        return image
    sigma = [max(float(np.sqrt(max(spacing_mm**2 - s**2, 0.0)) / 2.0), 0.01 * s) for s in spacing]
    return _isotropic(itk.smoothing_recursive_gaussian_image_filter(image, sigma_array=sigma), spacing_mm)


def itk_refine(fixed, moving, matrix, center, shrink=(2, 1), sigmas=(1.0, 0.0), iterations=100, sampling=0.05, bins=32, seed=0):
    """0.5.0's ``refine_rigid``, on the ``itk`` package (its first call loads the Mattes metric: about 8 s)."""
    import itk

    from regplugins.rigid.groundtruth import _euler_matrix

    transform = itk.Euler3DTransform[itk.D].New()
    transform.SetCenter([float(c) for c in center])
    transform.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(matrix[:3, :3], dtype=np.float64)))
    c = np.asarray(center, dtype=np.float64)
    transform.SetTranslation((matrix[:3, 3] - c + matrix[:3, :3] @ c).tolist())
    metric = itk.MattesMutualInformationImageToImageMetricv4[type(fixed), type(moving)].New()
    metric.SetNumberOfHistogramBins(int(bins))
    scales = itk.RegistrationParameterScalesFromPhysicalShift[type(metric)].New(Metric=metric)
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New(
        LearningRate=1.0, MinimumStepLength=0.01, RelaxationFactor=0.9, NumberOfIterations=int(iterations), ScalesEstimator=scales
    )
    optimizer.SetDoEstimateLearningRateOnce(True)
    registration = itk.ImageRegistrationMethodv4[type(fixed), type(moving)].New(
        FixedImage=fixed, MovingImage=moving, Metric=metric, Optimizer=optimizer, InitialTransform=transform
    )
    registration.SetInPlace(True)
    registration.SetNumberOfLevels(len(shrink))
    registration.SetShrinkFactorsPerLevel([int(s) for s in shrink])
    registration.SetSmoothingSigmasPerLevel([float(s) for s in sigmas])
    registration.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(False)
    registration.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM)
    registration.SetMetricSamplingPercentage(float(sampling))
    registration.MetricSamplingReinitializeSeed(int(seed))
    registration.Update()
    return _euler_matrix(transform)


def s_read(path, spacing_mm):
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    spacing = np.array(image.GetSpacing())
    if spacing.min() >= spacing_mm:
        return image
    sigma = [max(float(np.sqrt(max(spacing_mm**2 - s**2, 0.0)) / 2.0), 0.01 * s) for s in spacing]
    image = sitk.SmoothingRecursiveGaussian(image, sigma)
    size = np.array(image.GetSize())
    new = [int(n) for n in np.maximum(1, np.floor((size - 1) * spacing / spacing_mm).astype(int) + 1)]
    return sitk.Resample(
        image, new, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [spacing_mm] * 3, image.GetDirection(), 0.0, sitk.sitkFloat32
    )


def s_euler(matrix, center):
    t = sitk.Euler3DTransform()
    t.SetCenter([float(c) for c in center])
    t.SetMatrix([float(v) for v in matrix[:3, :3].ravel()])
    c = np.asarray(center, float)
    t.SetTranslation((matrix[:3, 3] - c + matrix[:3, :3] @ c).tolist())
    return t


def s_matrix(t):
    m = np.eye(4)
    m[:3, :3] = np.array(t.GetMatrix()).reshape(3, 3)
    c = np.array(t.GetCenter())
    tr = np.array(t.GetTranslation())
    m[:3, 3] = tr + c - m[:3, :3] @ c
    return m


def s_refine(
    fixed,
    moving,
    matrix,
    center,
    shrink=(2, 1),
    sigmas=(1.0, 0.0),
    iterations=100,
    sampling=0.05,
    bins=32,
    seed=1,
    strategy="random",
    min_step=0.01,
    relax=0.9,
    optimizer="rsgd",
    max_step=0.2,
    lr=1.0,
):
    t = s_euler(matrix, center)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(bins)
    r.SetMetricSamplingStrategy({"random": r.RANDOM, "regular": r.REGULAR, "none": r.NONE}[strategy])
    if strategy != "none":
        r.SetMetricSamplingPercentage(sampling, seed)
    r.SetInterpolator(sitk.sitkLinear)
    if optimizer == "rsgd":
        r.SetOptimizerAsRegularStepGradientDescent(
            learningRate=lr, minStep=min_step, numberOfIterations=iterations, relaxationFactor=relax, estimateLearningRate=r.Once
        )
    else:
        r.SetOptimizerAsGradientDescent(
            learningRate=1.0,
            numberOfIterations=iterations,
            convergenceMinimumValue=1e-6,
            convergenceWindowSize=10,
            estimateLearningRate=r.EachIteration,
            maximumStepSizeInPhysicalUnits=max_step,
        )
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel(list(shrink))
    r.SetSmoothingSigmasPerLevel(list(sigmas))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    r.SetInitialTransform(t, inPlace=True)
    r.Execute(fixed, moving)
    return s_matrix(t)


def perturbed(true, center, rng, deg=1.5, mm=1.5):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    shift = rng.normal(size=3)
    shift *= mm / np.linalg.norm(shift)
    delta = rigid_matrix(deg * axis, shift, center)
    return true @ delta


variant = dict(eval(sys.argv[2])) if len(sys.argv) > 2 else {}
use_itk = variant.pop("itk", False)
spacing = variant.pop("spacing", 2.0)
moving_spacing = variant.pop("moving_spacing", spacing)
rng = np.random.default_rng(0)
res = []
t0 = time.perf_counter()
for i in range(4):
    fp, mp = DATA / f"{i:03d}_fixed_t1.nii.gz", DATA / f"{i:03d}_moving_ct.nii.gz"
    native = nib.load(fp)
    center = grid_center_lps(native.affine, native.shape[:3])
    true = np.array(json.loads((DATA / f"{i:03d}_true_rigid.json").read_text())["matrix"])
    start = perturbed(true, center, rng)
    t = time.perf_counter()
    if use_itk:
        f, m = itk_resampled(str(fp), spacing), itk_resampled(str(mp), spacing)
        out = itk_refine(f, m, start, center, **variant)
    else:
        f, m = s_read(fp, spacing), s_read(mp, moving_spacing)
        polish = variant.get("polish")
        v = {k: x for k, x in variant.items() if k != "polish"}
        out = s_refine(f, m, start, center, **v)
        if polish:
            out = s_refine(f, m, out, center, **polish)
    e0 = rigid_errors(start, true, center)
    e = rigid_errors(out, true, center)
    res.append((e["rotation_error_deg"], e["translation_error_mm"], time.perf_counter() - t))
    print(
        f"{i} start {e0['rotation_error_deg']:.2f} {e0['translation_error_mm']:.2f}",
        f"-> {e['rotation_error_deg']:.3f} deg {e['translation_error_mm']:.3f} mm {res[-1][2]:.2f} s",
        flush=True,
    )
r = np.array(res)
print("MEAN", sys.argv[2:], f"{r[:, 0].mean():.3f} deg {r[:, 1].mean():.3f} mm {r[:, 2].mean():.2f} s/pair, total {time.perf_counter() - t0:.1f}")
