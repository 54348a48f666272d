"""Dictionary transforms of the rigid head bundle: the paper's rigid augmentation, the modality
classifier's choice of path and roles, the mutual-information finish and check, and the saver of
``rigid.tfm``/``rigid.json`` with the contract's files."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Zoom
from monai.utils import convert_to_tensor

from regplugins.alignment import NativeImage, finish_affine, fit_affine, mutual_information, searched_turn, warp_affine
from regplugins.io import pair_output_name
from regplugins.layers import ImageDomain
from regplugins.outputs import warp_native_images, write_registration_outputs
from regplugins.rigid.parameters import grid_center_lps, random_rigid_parameters, ras_to_lps, rigid_field, rigid_matrix
from regplugins.transforms.spatial import keep_best_stage, native_image, voxel_to_lps
from regplugins.utils import as_flag

__all__ = ["RIGID_PREALIGNMENTS", "RandHeadScaled", "RandRigidMotiond", "OrderByModalityd", "RefineRigidd", "SaveRigidRegistrationd", "modality_path"]


# the rigid bundle's ``prealign`` setting: the deformable bundles' choices but an affine
RIGID_PREALIGNMENTS = ("rigid", "none")


class RandHeadScaled(Randomizable, MapTransform):
    """Scale the heads in ``keys`` by one random factor about the grid centre, keeping their grid.

    Augments head size. MONAI's ``RandZoomd`` rescales the affine with the array (the same head on
    a finer or coarser grid), so a motion drawn in mm after it moves the array by up to the zoom's
    share more or fewer voxels than on the working grid, while the label stays in mm. Keeping the
    affine makes the zoom a physically larger or smaller head, and the label exact.
    """

    def __init__(self, keys: KeysCollection, scale_range: tuple[float, float] = (0.9, 1.1), allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.scale_range = tuple(scale_range)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        zoom = Zoom(zoom=self.R.uniform(*self.scale_range), mode="bilinear", padding_mode="constant", keep_size=True)
        for key in self.key_iterator(d):
            scaled = zoom(d[key])
            d[key] = MetaTensor(scaled.as_tensor(), affine=d[key].affine) if isinstance(d[key], MetaTensor) else scaled
        return d


class RandRigidMotiond(Randomizable, MapTransform):
    """Move ``keys`` (images on the fixed image's grid, aligned with it) by a random rigid transform,
    and store its six parameters (degrees, mm) under ``parameters_key`` as the regression target.

    The paper's augmentation: a rotation of up to ``max_rotation_deg`` about a random axis and a
    translation of up to ``max_translation_mm`` per axis. The parameters are those of the
    transform ``T`` from fixed to moving points about the fixed grid's centre, so the moved
    image is sampled at ``T^-1``: it then matches the fixed image through ``T``, as the
    network's output must. With ``seed_key``, an item carrying that key always gets the same
    motion (validation and written sets stay the same from run to run).
    """

    def __init__(
        self,
        keys: KeysCollection,
        fixed_key: str = "fixed",
        parameters_key: str = "rigid_parameters",
        max_rotation_deg: float = 15.0,
        max_translation_mm: float = 5.0,
        seed_key: str | None = None,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.fixed_key, self.parameters_key, self.seed_key = fixed_key, parameters_key, seed_key
        self.max_rotation_deg, self.max_translation_mm = max_rotation_deg, max_translation_mm

    def randomize(self, data=None) -> np.random.Generator:
        return np.random.default_rng(self.R.randint(2**31))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        rng = np.random.default_rng(int(d[self.seed_key])) if self.seed_key and self.seed_key in d else self.randomize()
        angles, translation = random_rigid_parameters(rng, self.max_rotation_deg, self.max_translation_mm)
        fixed = d[self.fixed_key]
        affine = np.asarray(fixed.affine, dtype=np.float64)
        motion = ras_to_lps(rigid_matrix(angles, translation, grid_center_lps(affine, fixed.shape[1:])))
        voxel_matrix = torch.from_numpy(np.linalg.inv(affine) @ np.linalg.inv(motion) @ affine)
        for key in self.key_iterator(d):
            moved = warp_affine(convert_to_tensor(d[key], dtype=torch.float32, track_meta=False)[None], voxel_matrix)[0]
            d[key] = MetaTensor(moved, meta=d[key].meta) if isinstance(d[key], MetaTensor) else moved
        d[self.parameters_key] = torch.tensor([*angles, *translation], dtype=torch.float32)
        return d


class OrderByModalityd(MapTransform):
    """Let the modality classifier decide which of the two images is the moving CT and which the fixed MR.

    The paper registers CT (moving) to MR (fixed) and classifies the inputs so that nobody has to
    say which is which. The images swap when the classifier finds the fixed image more CT-like
    than the moving one; ``order_key`` records whether they did and both CT probabilities, and
    :class:`SaveRigidRegistrationd` inverts the transform back into the order the user asked for.
    Each image is classified on its own working grid. Without a classifier nothing changes.
    """

    def __init__(self, classifier: torch.nn.Module | None, keys: KeysCollection = ("moving", "fixed"), order_key: str = "modality_order"):
        super().__init__(keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys must name the moving and the fixed image, got {self.keys}.")
        self.classifier, self.order_key = classifier, order_key

    @torch.no_grad()
    def ct_probability(self, image: torch.Tensor) -> float:
        self.classifier.eval()
        device = next(self.classifier.parameters()).device
        logits = self.classifier(convert_to_tensor(image, dtype=torch.float32, track_meta=False)[None].to(device))
        return float(torch.softmax(logits, dim=1)[0, 0])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.classifier is None:
            return d
        moving_key, fixed_key = self.keys
        p_moving, p_fixed = self.ct_probability(d[moving_key]), self.ct_probability(d[fixed_key])
        path = modality_path(p_moving, p_fixed)
        swapped = path == "ct_mr" and p_fixed > p_moving
        if swapped:
            d[moving_key], d[fixed_key] = d[fixed_key], d[moving_key]
        d[self.order_key] = {"path": path, "swapped": swapped, "ct_probability_moving": p_moving, "ct_probability_fixed": p_fixed}
        return d


def modality_path(ct_probability_moving: float, ct_probability_fixed: float) -> str:
    """``"ct_mr"`` when the classifier finds one CT and one MR, else ``"mr_mr"`` or ``"ct_ct"``.

    The network was trained on CT/MR pairs (CT moving) and MR/MR pairs, not on CT/CT; off the
    ``ct_mr`` path nothing is swapped, and on every path its estimate is one of the starts that
    :class:`RefineRigidd` weighs by mutual information.
    """
    is_ct = (ct_probability_moving > 0.5, ct_probability_fixed > 0.5)
    return "ct_mr" if is_ct[0] != is_ct[1] else ("ct_ct" if is_ct[0] else "mr_mr")


def network_matrix(parameters: torch.Tensor, working: MetaTensor) -> np.ndarray:
    """The LPS 4x4 matrix of the network's six parameters, which turn about the centre of the working grid ``working``."""
    parameters = np.asarray(torch.as_tensor(parameters).detach().cpu(), dtype=np.float64).reshape(6)
    return rigid_matrix(parameters[:3], parameters[3:], grid_center_lps(working.affine, working.shape[1:]))


class RefineRigidd(MapTransform):
    """Finish the network's estimate by mutual information on the native images, and keep the best transform.

    The network sees both heads on a 5 mm grid; :func:`regplugins.alignment.finish_affine`
    (mutual information, fresh random samples at every step, the images' own grids) takes it to a
    few hundredths of a degree. It starts from whichever of the identity, the pre-alignment and the
    network's estimate the images agree with more, and mutual information, measured on one sample for
    every candidate, decides which transform is written: a pair is never left less aligned than
    it came, and the log says when a candidate did worse than the best before it. With
    ``refine`` false the network's estimate is still checked against the others. The
    candidates' values and the one kept go to ``quality_key`` (and from there into
    ``rigid.json``); the transform to ``matrix_key``, in the order of the (possibly swapped) pair.

    ``prealign`` ``"rigid"`` adds a start: :func:`~regplugins.alignment.fit_affine` on the
    working grid, the deformable bundles' pre-alignment, from the best of eleven starts
    (:meth:`prealignment`). The network learnt turns of up to 15 degrees; a head turned further
    (a CT tilted on its table, a scan in another position) lies beyond it, and the finish, a
    local search, stays where it starts. On twelve heads turned up to 60 degrees per axis
    (`rigid_mni152_turned`), 6 ended more than a degree off without it, none with it (docs/benchmarks.md).

    ``tolerance`` (nats): an earlier stage is kept over the refinement only when it is more similar
    by more than this. The check's mutual information does not rank transforms a few tenths of
    a degree apart: on a generated pair it scored the true transform 0.0007 nats below the
    refinement (0.28 degrees off) and a pre-alignment 0.78 degrees off 0.0009 above it, on every
    one of 20 samples; a failed stage loses by hundredths (docs/experiments/head_ct_mr_rigid_reg.md).
    """

    def __init__(
        self,
        refine: bool = True,
        prealign: str = "rigid",
        parameters_key: str = "pred",
        fixed_key: str = "fixed",
        moving_key: str = "moving",
        matrix_key: str = "rigid_matrix",
        quality_key: str = "rigid_quality",
        tolerance: float = 0.002,
    ):
        super().__init__(keys=[parameters_key])
        if prealign not in RIGID_PREALIGNMENTS:
            raise ValueError(f"prealign must be one of {RIGID_PREALIGNMENTS}, got {prealign!r}.")
        self.refine, self.prealign, self.tolerance = refine, prealign, tolerance
        self.parameters_key, self.fixed_key, self.moving_key = parameters_key, fixed_key, moving_key
        self.matrix_key, self.quality_key = matrix_key, quality_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        fixed_path, moving_path = (d[key].meta["filename_or_obj"] for key in (self.fixed_key, self.moving_key))
        fixed, moving = native_image(fixed_path), native_image(moving_path)
        # the fit comes after the network, as a second opinion: it is the closer start on most pairs, and the log
        # warns about a stage that did worse than the best before it, so placed first it would warn on every pair
        candidates = {"none": np.eye(4), "network": network_matrix(d[self.parameters_key], d[self.fixed_key])}
        if self.prealign == "rigid":
            candidates["prealignment"] = self.prealignment(d[self.fixed_key], d[self.moving_key], fixed, moving)
        values = {name: mutual_information(fixed, moving, matrix) for name, matrix in candidates.items()}
        if self.refine:
            start = min(values, key=values.get)
            candidates["refinement"] = finish_affine(fixed, moving, candidates[start], fixed.center_mm)
            values["refinement"] = mutual_information(fixed, moving, candidates["refinement"])
        kept = keep_best_stage(pair_output_name(moving_path, fixed_path), values, "negative mutual information", self.tolerance)
        d[self.matrix_key] = candidates[kept]
        d[self.quality_key] = {"negative_mutual_information": {k: round(v, 6) for k, v in values.items()}, "kept": kept}
        return d

    @staticmethod
    def prealignment(fixed: MetaTensor, moving: MetaTensor, native_fixed: NativeImage, native_moving: NativeImage) -> np.ndarray:
        """The LPS matrix of the rigid mutual-information fit of the working-grid images ``fixed`` and ``moving``.

        The fit, at levels of 10 and 5 mm, starts from whichever start the native images agree with
        most after a fit at 10 mm alone (about 0.15 s a start): the
        :data:`~regplugins.alignment.QUARTER_TURNS` (a head turned up to 60 degrees per axis: from
        the identity alone it ended 14 to 82 degrees off on 3 of 12 such heads, from the best start
        within 0.6 degrees on all 12) and the :func:`~regplugins.alignment.principal_axes_turns`
        (a head upside down or turned about several axes: 10 of 10 such heads within 0.3 degrees,
        against 1 of 10 without them). With them, every pre-alignment of the 36 pairs of the three
        rigid bench kinds is still within 0.66 degrees (docs/experiments/head_ct_mr_rigid_reg.md).
        Where a pose less turned from the headers scores within :data:`~regplugins.alignment.POSE_MARGIN` of
        the best, the fit starts from that pose's best, and the log says so: images that cannot tell a pose
        from one turned half round are not turned on the measure's noise (:func:`~regplugins.alignment.searched_turn`).
        The voxels whose moving point falls outside ``native_moving``'s grid are left out, as in
        :class:`~regplugins.transforms.AffineAlignd`.
        """
        grid = voxel_to_lps(fixed.affine)
        domain = ImageDomain.between(grid, native_moving.affine, native_moving.image.shape)

        def fit(rotation: torch.Tensor, levels: tuple[int, ...], iterations: tuple[int, ...]) -> np.ndarray:
            voxel = fit_affine(fixed[0], moving[0], "rigid", levels, iterations, moving_domain=domain, rotation=rotation)
            return grid @ voxel.numpy() @ np.linalg.inv(grid)

        start, _ = searched_turn(
            fixed[0].as_tensor(),
            moving[0].as_tensor(),
            lambda rotations: fit(rotations, (2,), (60,)),
            lambda matrices: mutual_information(native_fixed, native_moving, matrices),
        )
        return fit(start, (2, 1), (60, 30))


class SaveRigidRegistrationd(MapTransform):
    """Write ``rigid.tfm``, ``rigid.json``, ``warped.nii.gz``, ``warped_label.nii.gz`` and ``ddf.nii.gz``.

    The transform is :class:`RefineRigidd`'s at ``matrix_key`` (its record at ``quality_key``
    goes into ``rigid.json``) or, without it, the network's six parameters at ``parameters_key``
    for the (possibly swapped) pair whose fixed image, on its working grid, is at ``fixed_key``;
    the centre of that grid is the centre they turn about. The transform is inverted when :class:`OrderByModalityd` swapped the images,
    so every output answers the user's order: it maps the user's fixed image's points to the
    user's moving image's, and the dense field is that transform on the native fixed grid.
    ``qc`` adds the picture ``qc.png``.
    """

    def __init__(
        self,
        output_dir: str,
        parameters_key: str = "pred",
        fixed_key: str = "fixed",
        moving_key: str = "moving",
        label_key: str = "moving_label",
        order_key: str = "modality_order",
        matrix_key: str = "rigid_matrix",
        quality_key: str = "rigid_quality",
        qc: bool = False,
    ):
        super().__init__(keys=[parameters_key])
        self.qc = as_flag(qc, "qc")
        self.output_dir = Path(output_dir)
        self.parameters_key, self.fixed_key, self.moving_key = parameters_key, fixed_key, moving_key
        self.label_key, self.order_key, self.matrix_key, self.quality_key = label_key, order_key, matrix_key, quality_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        matrix = d[self.matrix_key] if self.matrix_key in d else network_matrix(d[self.parameters_key], d[self.fixed_key])
        fixed_path, moving_path = (d[key].meta["filename_or_obj"] for key in (self.fixed_key, self.moving_key))
        details = {"quality": d[self.quality_key]} if self.quality_key in d else {}
        order = d.get(self.order_key)
        if order is not None:
            swapped = bool(order["swapped"])
            if swapped:
                matrix, fixed_path, moving_path = np.linalg.inv(matrix), moving_path, fixed_path
            details["auto_order"] = {
                "path": order["path"],
                "swapped": swapped,
                "ct_image": fixed_path if swapped else moving_path,
                "mr_image": moving_path if swapped else fixed_path,
                "ct_probability": {"moving": float(order["ct_probability_moving"]), "fixed": float(order["ct_probability_fixed"])},
            }
        fixed = nib.load(fixed_path)
        field = rigid_field(matrix, fixed.affine, fixed.shape[:3])
        outputs = warp_native_images(field, fixed_path, moving_path, d.get(self.label_key) or None)
        center = grid_center_lps(fixed.affine, fixed.shape[:3])
        folder = self.output_dir / pair_output_name(moving_path, fixed_path)
        rigid = {"matrix_lps": matrix, "center_mm": center, **details}
        d["output_folder"] = str(write_registration_outputs(folder, outputs, rigid=rigid, qc=(fixed_path, moving_path) if self.qc else None))
        return d
