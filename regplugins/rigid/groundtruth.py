"""Ground-truth rigid transforms of CT/MR head pairs: symmetry alignment, then One-Plus-One registration.

Part 2 of Islam et al., "A deep learning based framework for the registration of 3D multi-modal
medical images of the head". Each image is first brought to its "symmetry frame": origin at the
mean of the head's point cloud (Otsu foreground of the image resampled to isotropic voxels), axes
along the cloud's principal components. The two symmetry-aligned images then start the
intensity-based registration (One-Plus-One evolutionary optimiser, Mattes mutual information)
with similar orientations, which keeps it out of the local optima a large initial misalignment
leads to. The result composes the three transforms into one fixed-to-moving rigid matrix.

Everything is in ITK's LPS millimetres and ITK's convention: a transform maps a fixed point to
the moving point it samples. ``itk`` is imported inside the functions: its first import costs seconds.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from .parameters import write_rigid_files

__all__ = ["symmetry_frame", "settle_moving_frame", "generate_ground_truth", "write_ground_truth"]

# The 24 ways to relabel a frame's axes, with their signs, that keep it right-handed: the rotations
# of a cube. Principal axes carry arbitrary signs, and on a nearly spherical head two variances are
# close enough that CT and MR clouds of one head can order the axes differently.
_AXIS_RELABELLINGS = [
    relabelling
    for order in itertools.permutations(range(3))
    for signs in itertools.product((1.0, -1.0), repeat=3)
    if np.linalg.det(relabelling := np.diag([*signs, 1.0])[[*order, 3]]) > 0
]


def _read(image):
    """A float ITK image from a path, or the image itself."""
    import itk

    return itk.imread(str(image), itk.F) if isinstance(image, (str, Path)) else image


def _geometry(image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Origin, spacing, direction and size (ITK's x, y, z order) of an ITK image as arrays."""
    import itk

    return (
        np.array(image.GetOrigin(), dtype=np.float64),
        np.array(image.GetSpacing(), dtype=np.float64),
        itk.array_from_matrix(image.GetDirection()).astype(np.float64),
        np.array(image.GetLargestPossibleRegion().GetSize(), dtype=np.int64),
    )


def _grid_center(image) -> np.ndarray:
    """The physical (LPS) centre of an image's voxel grid: the rotation centre of the written transform."""
    origin, spacing, direction, size = _geometry(image)
    return origin + direction @ (spacing * (size - 1) / 2.0)


def _isotropic(image, spacing_mm: float | None):
    """``image`` resampled (linearly) to cubic voxels of ``spacing_mm`` (default its smallest spacing), same extent.

    As in the paper, so that the point cloud samples the head alike in every direction (thick
    slices would quantise one axis of it); a coarser ``spacing_mm`` thins a fine grid for speed.
    """
    import itk

    origin, spacing, direction, size = _geometry(image)
    step = float(spacing_mm) if spacing_mm else float(spacing.min())
    new_size = np.maximum(1, np.floor((size - 1) * spacing / step).astype(np.int64) + 1)
    return itk.resample_image_filter(
        image,
        size=[int(s) for s in new_size],
        output_spacing=[step] * 3,
        output_origin=origin.tolist(),
        output_direction=image.GetDirection(),
        default_pixel_value=float(itk.array_view_from_image(image).min()),
    )


def _head_points(image) -> np.ndarray:
    """Physical (LPS) points ``(n, 3)`` of the head: the Otsu foreground of ``image`` with its holes filled.

    Filling matters across modalities: bone is dark in MR, so Otsu alone leaves the skull (and CSF)
    out of an MR cloud but not out of a CT one, and the two clouds of one head would differ.
    """
    import itk

    mask_type = itk.Image[itk.UC, 3]
    # ITK's Otsu filter gives the inside value to the voxels at or below the threshold: the background
    otsu = itk.OtsuThresholdImageFilter[type(image), mask_type].New(image, InsideValue=0, OutsideValue=1)
    filled = itk.binary_fillhole_image_filter(otsu.GetOutput(), foreground_value=1)
    index = np.argwhere(itk.array_view_from_image(filled) > 0)[:, ::-1].astype(np.float64)  # (x, y, z)
    origin, spacing, direction, _ = _geometry(image)
    return origin + (index * spacing) @ direction.T


def _principal_frame(points: np.ndarray) -> np.ndarray:
    """The 4x4 frame-to-world matrix of a point cloud: origin at its mean, right-handed axes by decreasing variance."""
    mean = points.mean(axis=0)
    variances, axes = np.linalg.eigh(np.cov(points - mean, rowvar=False))
    axes = axes[:, np.argsort(variances)[::-1]]
    if np.linalg.det(axes) < 0:
        axes[:, 2] = -axes[:, 2]
    frame = np.eye(4)
    frame[:3, :3], frame[:3, 3] = axes, mean
    return frame


def symmetry_frame(image, spacing_mm: float | None = None) -> np.ndarray:
    """The 4x4 matrix (LPS mm) from the head's symmetry frame to the image's physical space.

    The frame's origin is the mean of the head's point cloud and its axes are the cloud's principal
    components by decreasing variance, made right-handed; each axis keeps an arbitrary sign, which
    :func:`settle_moving_frame` settles by similarity. ``image`` is a path or an ITK image;
    ``spacing_mm`` is the isotropic voxel size of the cloud (default the image's smallest spacing).
    The axes are only as well defined as the head is elongated: two close variances leave the
    frame free to turn about the third axis.
    """
    return _principal_frame(_head_points(_isotropic(_read(image), spacing_mm)))


def _in_frame(image, frame: np.ndarray):
    """The image with its physical space re-expressed in ``frame``'s coordinates (a header change, no resampling).

    A voxel at physical point ``x`` moves to ``frame^-1 x``: the rigid frame change goes into the
    image's origin and direction, so the "symmetry-aligned" image keeps every intensity exactly.
    """
    import itk

    inverse = np.linalg.inv(frame)
    origin, _, direction, _ = _geometry(image)
    aligned = itk.image_duplicator(image)
    aligned.SetOrigin((inverse[:3, :3] @ origin + inverse[:3, 3]).tolist())
    aligned.SetDirection(itk.matrix_from_array(np.ascontiguousarray(inverse[:3, :3] @ direction)))
    return aligned


def _euler_matrix(transform) -> np.ndarray:
    """The 4x4 matrix of an ITK matrix-offset transform."""
    import itk

    matrix = np.eye(4)
    matrix[:3, :3] = itk.array_from_matrix(transform.GetMatrix())
    matrix[:3, 3] = np.array(transform.GetOffset(), dtype=np.float64)
    return matrix


def _mattes_value(fixed, moving, histogram_bins: int, transform=None) -> float:
    """Mattes MI (ITK's sign: lower is more similar) of ``moving`` through ``transform`` (default the identity)
    against ``fixed``, over every fixed voxel."""
    import itk

    metric = itk.MattesMutualInformationImageToImageMetricv4[type(fixed), type(moving)].New()
    metric.SetNumberOfHistogramBins(int(histogram_bins))
    metric.SetFixedImage(fixed)
    metric.SetMovingImage(moving)
    metric.SetMovingTransform(itk.IdentityTransform[itk.D, 3].New() if transform is None else transform)
    metric.Initialize()
    return float(metric.GetValue())


def _register(
    fixed,
    moving,
    center_mm: np.ndarray,
    radius_mm: float,
    growth_factor: float,
    epsilon: float,
    initial_radius: float,
    iterations: int,
    spatial_samples: int,
    histogram_bins: int,
    use_all_pixels: bool,
    pyramid_levels: int,
    seed: int,
) -> np.ndarray:
    """The Euler transform (4x4, fixed point to moving point) found by One-Plus-One on Mattes MI, from the identity."""
    import itk

    image_type = type(fixed)
    transform = itk.Euler3DTransform[itk.D].New()
    transform.SetCenter([float(c) for c in center_mm])

    metric = itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type].New()
    metric.SetNumberOfHistogramBins(int(histogram_bins))

    generator = itk.NormalVariateGenerator.New()
    generator.Initialize(int(seed))
    optimizer = itk.OnePlusOneEvolutionaryOptimizerv4[itk.D].New()
    optimizer.SetNormalVariateGenerator(generator)
    optimizer.Initialize(float(initial_radius), float(growth_factor))  # shrink factor: growth ** -0.25
    optimizer.SetEpsilon(float(epsilon))
    optimizer.SetMaximumIteration(int(iterations))
    # One-Plus-One draws the step of parameter i with standard deviation (search radius) / scale_i.
    # Angles are in radians and translations in mm: scales 1 and 1 / radius_mm make a step of either
    # kind change the metric about as much, so that the one search radius suits all six. A turn by
    # a radians moves the head's points by a * (RMS radius), but it moves the head's outline and
    # inner boundaries, which the MI sees, much less: on the synthetic heads 1 degree costs as much
    # MI as a 0.3-0.5 mm shift, a lever of about half the RMS radius, hence radius_mm. Longer levers
    # (the whole RMS radius, twice it, or MATLAB's image diagonal, about four times it) let the
    # translations take the search radius and leave some rotations unconverged after 100 iterations:
    # over 30 runs the 90th percentile of the rotation errors grew from 1.3 to 1.5, 2.3 and 2.8
    # degrees (medians 0.5 to 0.75; the MI optimum itself lies about half a degree from the truth).
    # At the paper's initial radius the first steps are 0.36 degrees and about 0.15 mm.
    optimizer.SetScales(itk.OptimizerParameters[itk.D]([1.0, 1.0, 1.0, *([1.0 / radius_mm] * 3)]))

    registration = itk.ImageRegistrationMethodv4[image_type, image_type].New(
        FixedImage=fixed, MovingImage=moving, Metric=metric, Optimizer=optimizer, InitialTransform=transform
    )
    registration.SetInPlace(True)
    # coarse to fine, smoothing by half the shrink factor (voxels) as ITK's multi-resolution pyramid does
    shrink = [2**level for level in reversed(range(pyramid_levels))]
    registration.SetNumberOfLevels(pyramid_levels)
    registration.SetShrinkFactorsPerLevel(shrink)
    registration.SetSmoothingSigmasPerLevel([s / 2.0 for s in shrink])
    registration.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(False)
    if use_all_pixels:
        registration.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_NONE)
    else:
        voxels = int(np.prod(fixed.GetLargestPossibleRegion().GetSize()))
        registration.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM)
        registration.SetMetricSamplingPercentage(min(1.0, spatial_samples / voxels))
        registration.MetricSamplingReinitializeSeed(int(seed))
    registration.Update()
    return _euler_matrix(transform)


def settle_moving_frame(fixed, fixed_frame: np.ndarray, moving, moving_frame: np.ndarray, histogram_bins: int = 50) -> np.ndarray:
    """The candidate frame of ``moving`` whose aligned image is most similar (Mattes MI) to ``fixed`` aligned by ``fixed_frame``.

    The candidates are ``moving_frame`` with its axes relabelled in each of the 24 right-handed
    ways, which settles the axes' signs and, where two principal variances are close, their order;
    and the fixed frame's axes moved to the moving cloud's mean, which assumes the two heads turned
    alike and keeps a nearly spherical head, whose axes are ill-defined, from starting the
    registration further off than the plain run does. The frames are :func:`symmetry_frame`'s
    matrices, the images float ITK images.
    """
    fixed_aligned = _in_frame(fixed, fixed_frame)
    relabelled = [moving_frame @ relabelling for relabelling in _AXIS_RELABELLINGS]
    unturned = fixed_frame.copy()
    unturned[:3, 3] = moving_frame[:3, 3]
    return min([*relabelled, unturned], key=lambda frame: _mattes_value(fixed_aligned, _in_frame(moving, frame), histogram_bins))


def generate_ground_truth(
    fixed_path,
    moving_path,
    symmetry: bool = True,
    growth_factor: float = 1.05,
    epsilon: float = 1.5e-6,
    initial_radius: float = 6.25e-3,
    iterations: int = 100,
    spatial_samples: int = 500,
    histogram_bins: int = 50,
    use_all_pixels: bool = True,
    pyramid_levels: int = 1,
    spacing_mm: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The rigid 4x4 matrix (LPS mm) mapping a fixed physical point to the moving one, as the paper generates it.

    With ``symmetry`` each image is taken to its :func:`symmetry_frame` (for the moving image, the
    candidate of :func:`settle_moving_frame` most similar to the aligned fixed image), the aligned
    images are registered from the identity about their common origin, the clouds' mean, and
    ``T_reg`` is composed as ``S_mov T_reg S_fix^-1`` (the pull form of the paper's push
    ``T_fix^-1 T_reg T_mov``, with ``S = T^-1`` the frame-to-image matrices).
    Without it the original images are registered directly from the identity about the fixed
    grid's centre, as plain intensity-based registration starts: the paper's comparison.

    The optimiser settings are the paper's (MATLAB's ``imregconfig("multimodal")``). The paper
    "considered all pixel values", so every fixed voxel feeds the metric by default;
    ``use_all_pixels=False`` draws ``spatial_samples`` random voxels instead (seeded by ``seed``,
    as is the optimiser's normal variate generator). ``pyramid_levels`` above 1 registers coarse to
    fine (MATLAB's default is 3), ``iterations`` at each level; after the symmetry alignment one
    level does better. The images are paths or float ITK images.
    """
    fixed, moving = _read(fixed_path), _read(moving_path)
    fixed_points = _head_points(_isotropic(fixed, spacing_mm))
    # half the head's RMS distance from its centre: see the parameter scales in _register
    radius_mm = 0.5 * float(np.sqrt(np.sum(np.var(fixed_points, axis=0))))
    settings = dict(
        radius_mm=radius_mm,
        growth_factor=growth_factor,
        epsilon=epsilon,
        initial_radius=initial_radius,
        iterations=iterations,
        spatial_samples=spatial_samples,
        histogram_bins=histogram_bins,
        use_all_pixels=use_all_pixels,
        pyramid_levels=pyramid_levels,
        seed=seed,
    )
    if not symmetry:
        return _register(fixed, moving, center_mm=_grid_center(fixed), **settings)
    fixed_frame = _principal_frame(fixed_points)
    moving_frame = settle_moving_frame(fixed, fixed_frame, moving, symmetry_frame(moving, spacing_mm), histogram_bins)
    registered = _register(_in_frame(fixed, fixed_frame), _in_frame(moving, moving_frame), center_mm=np.zeros(3), **settings)
    return moving_frame @ registered @ np.linalg.inv(fixed_frame)


def write_ground_truth(fixed: str | Path, moving: str | Path, out: str | Path, symmetry: bool = True, **settings) -> np.ndarray:
    """Check the pair, generate its ground truth, and write ``rigid.tfm``, ``rigid.json`` and ``warped.nii.gz`` into ``out``.

    A bad input raises :class:`regplugins.io.RegistrationInputError` naming the file before anything
    is written. ``warped.nii.gz`` is the moving image resampled (linearly) onto the fixed grid by the
    transform, to look at; ``settings`` are :func:`generate_ground_truth`'s. Returns the LPS matrix.
    """
    import itk

    from regplugins.io import check_registration_inputs

    check_registration_inputs([{"fixed": str(fixed), "moving": str(moving)}])
    fixed_image, moving_image = _read(fixed), _read(moving)
    matrix = generate_ground_truth(fixed_image, moving_image, symmetry=symmetry, **settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    center = _grid_center(fixed_image)
    write_rigid_files(out, matrix, center, method="groundtruth", symmetry_alignment=bool(symmetry))
    transform = itk.transformread(str(out / "rigid.tfm"))[0]
    warped = itk.resample_image_filter(
        moving_image,
        transform=transform,
        use_reference_image=True,
        reference_image=fixed_image,
        default_pixel_value=float(itk.array_view_from_image(moving_image).min()),
    )
    itk.imwrite(warped, str(out / "warped.nii.gz"))
    return matrix
