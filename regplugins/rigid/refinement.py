"""Mutual-information refinement of a rigid transform with ITK: the finishing stage of the rigid head bundle.

The paper's network (the DCNN regression with its ANN stage) brings a pair to within about a
degree and a millimetre, from a 5 mm working grid. ANTs Rigid gets a tenth of that with Mattes
mutual information and regular-step gradient descent, coarse to fine; the paper's own
ground-truth pipeline (:mod:`regplugins.rigid.groundtruth`) uses the One-Plus-One optimiser and
is slower and less precise. :func:`refine_rigid` runs ANTs's recipe from the network's estimate,
on the images at ``spacing_mm`` (2 mm: finer costs time and adds no precision the metric can
see), and :func:`mattes_value` measures a transform the same way for every candidate, so that
the bundle keeps whichever aligns the pair best.

Everything is in ITK's LPS millimetres and ITK's convention: a 4x4 matrix maps a fixed point to
the moving point it samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .groundtruth import _euler_matrix, _isotropic, _mattes_value, _read

__all__ = ["refine_rigid", "mattes_value"]


def _euler_transform(matrix: np.ndarray, center_mm: Sequence[float]):
    """An ITK ``Euler3DTransform`` about ``center_mm`` equal to the 4x4 ``matrix``."""
    import itk

    transform = itk.Euler3DTransform[itk.D].New()
    transform.SetCenter([float(c) for c in center_mm])
    transform.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(matrix[:3, :3], dtype=np.float64)))
    # y = R x + b = R (x - c) + c + t, so t = b - c + R c
    center = np.asarray(center_mm, dtype=np.float64)
    transform.SetTranslation((matrix[:3, 3] - center + matrix[:3, :3] @ center).tolist())
    return transform


def mattes_value(fixed, moving, matrix: np.ndarray, center_mm: Sequence[float], histogram_bins: int = 32) -> float:
    """Mattes MI (ITK's sign: lower is more similar) of ``moving`` through ``matrix`` against ``fixed``, over every fixed voxel.

    ``fixed`` and ``moving`` are float ITK images (as :func:`refine_rigid` resamples them) or paths.
    """
    transform = _euler_transform(np.asarray(matrix, dtype=np.float64), center_mm)
    return _mattes_value(_read(fixed), _read(moving), histogram_bins, transform)


def resampled(image, spacing_mm: float):
    """``image`` (a path or float ITK image) smoothed and resampled to cubic voxels of ``spacing_mm`` where it is finer."""
    import itk

    image = _read(image)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    if spacing.min() >= spacing_mm:
        return image
    # a voxel's blur to a new voxel's; ITK's filter wants every sigma above zero, even along an axis as coarse already
    sigma = [max(float(np.sqrt(max(spacing_mm**2 - s**2, 0.0)) / 2.0), 0.01 * s) for s in spacing]
    smoothed = itk.smoothing_recursive_gaussian_image_filter(image, sigma_array=sigma)
    return _isotropic(smoothed, spacing_mm)


def refine_rigid(
    fixed,
    moving,
    matrix: np.ndarray,
    center_mm: Sequence[float],
    spacing_mm: float = 2.0,
    shrink_factors: Sequence[int] = (2, 1),
    smoothing_sigmas: Sequence[float] = (1.0, 0.0),
    iterations: int = 100,
    sampling_percentage: float = 0.05,
    histogram_bins: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """The rigid 4x4 matrix that maximises Mattes MI, by regular-step gradient descent from ``matrix``, coarse to fine.

    Args:
        fixed, moving: paths or float ITK images; both are taken to cubic ``spacing_mm`` voxels first
            (:func:`resampled`) unless they are that coarse already.
        matrix: the start, 4x4, fixed LPS point to moving LPS point (the network's estimate).
        center_mm: the rotation centre of the Euler transform (the fixed grid's centre).
        shrink_factors, smoothing_sigmas: the pyramid, in voxels of ``spacing_mm``, coarse to fine.
        iterations: at most, per level; the step shrinks by a tenth whenever the gradient turns
            back (by half, ITK's default, the noise of the random sampling ends a level 6 degrees
            short on small heads) and the level ends when it is below a hundredth of a millimetre.
        sampling_percentage: of the fixed voxels drawn at random (seeded) for the metric, as ANTs does
            (5 % of a head at 2 mm: some 60,000 points, 0.2 s a level on 2 cores).
        histogram_bins: of the joint histogram.
    """
    import itk

    fixed, moving = resampled(fixed, spacing_mm), resampled(moving, spacing_mm)
    transform = _euler_transform(np.asarray(matrix, dtype=np.float64), center_mm)
    metric = itk.MattesMutualInformationImageToImageMetricv4[type(fixed), type(moving)].New()
    metric.SetNumberOfHistogramBins(int(histogram_bins))
    # steps in mm of motion of the fixed image's corners, whatever the parameter (radians or mm)
    scales = itk.RegistrationParameterScalesFromPhysicalShift[type(metric)].New(Metric=metric)
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New(
        LearningRate=1.0, MinimumStepLength=0.01, RelaxationFactor=0.9, NumberOfIterations=int(iterations), ScalesEstimator=scales
    )
    optimizer.SetDoEstimateLearningRateOnce(True)
    registration = itk.ImageRegistrationMethodv4[type(fixed), type(moving)].New(
        FixedImage=fixed, MovingImage=moving, Metric=metric, Optimizer=optimizer, InitialTransform=transform
    )
    registration.SetInPlace(True)
    registration.SetNumberOfLevels(len(shrink_factors))
    registration.SetShrinkFactorsPerLevel([int(s) for s in shrink_factors])
    registration.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_sigmas])
    registration.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(False)
    registration.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM)
    registration.SetMetricSamplingPercentage(float(sampling_percentage))
    registration.MetricSamplingReinitializeSeed(int(seed))
    registration.Update()
    return _euler_matrix(transform)
