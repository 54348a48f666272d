import numpy as np
import pytest
import torch

from regplugins.data import INTENSITY_RANGES, SyntheticPairGenerator
from regplugins.layers import gaussian_smooth, warp_physical
from regplugins.metrics import fit_rigid, folding_percent, jacobian_determinant, label_overlap, rigid_errors


def warp_labels_with_true_field(pair):
    fixed_affine = pair["fixed_label"].affine
    warped = warp_physical(
        pair["moving_label"][None].as_tensor(), pair["moving_label"].affine, pair["true_ddf"][None].as_tensor(), fixed_affine, "nearest"
    )
    return warped[0, 0].numpy()


def test_true_field_has_no_folding_and_maps_moving_labels_onto_fixed():
    generator = SyntheticPairGenerator(shape=(48, 48, 48), spacing=3.0, moving_grid="random", rotation_deg=10, deformation_mm=4)
    for seed in (0, 1):
        pair = generator(seed)
        field, affine = pair["true_ddf"].numpy(), pair["true_ddf"].affine.numpy()
        assert np.abs(field).max() > 3.0  # it does move things
        assert folding_percent(jacobian_determinant(field, affine)) == 0.0
        truth = pair["fixed_label"][0].numpy()
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        with_truth = np.mean([v["dice"] for v in label_overlap(warp_labels_with_true_field(pair), truth, spacing).values()])
        zero = torch.zeros_like(pair["true_ddf"])[None]
        unregistered = warp_physical(pair["moving_label"][None].as_tensor(), pair["moving_label"].affine, zero, pair["fixed_label"].affine, "nearest")
        without = np.mean([v["dice"] for v in label_overlap(unregistered[0, 0].numpy(), truth, spacing).values()])
        assert with_truth > 0.85
        assert with_truth > without + 0.1


def test_modalities_intensities_and_paired_images():
    pair = SyntheticPairGenerator(shape=(40, 40, 40), spacing=4.0, modalities=("ct", "t2"), skull_probability=1.0)(5)
    assert (pair["moving_modality"], pair["fixed_modality"]) == ("ct", "t2")
    ct, labels = pair["moving"][0], pair["moving_label"][0]
    assert ct[labels == 0].mean() < -900  # air
    assert ct.max() > 300  # skull
    assert pair["fixed"].min() >= 0  # MR magnitude
    # paired images: the same anatomy in the other modality on each grid
    assert pair["fixed_paired"].shape == pair["fixed"].shape and pair["fixed_paired"].min() < -900
    assert pair["moving_paired"].shape == pair["moving"].shape and pair["moving_paired"].min() >= 0
    # fluid is bright in T2: CSF labels outshine white matter on average
    assert set(INTENSITY_RANGES) == {"ct", "t1", "t2", "pd"}


def test_registered_paired_images_are_the_other_scan_through_the_true_transform():
    """As paired training data are made (a subject's MR registered to its CT): the same scan, resampled."""
    kwargs = dict(shape=(40, 40, 40), spacing=4.0, modalities=("ct", "t1"), moving_grid="random", rotation_deg=8, deformation_mm=4)
    rendered, registered = (SyntheticPairGenerator(paired_images=mode, **kwargs)(2) for mode in ("rendered", "registered"))
    for key in ("fixed", "moving", "fixed_label", "moving_label", "true_ddf"):  # only the paired images change
        assert torch.equal(rendered[key], registered[key]), key
    moving_on_fixed = warp_physical(
        registered["moving"][None].as_tensor(),
        registered["moving"].affine,
        registered["true_ddf"][None].as_tensor(),
        registered["fixed"].affine,
        "bilinear",
    )[0]
    head = registered["fixed_label"] > 0
    assert torch.allclose(registered["fixed_paired"][head], moving_on_fixed[head], rtol=1e-3, atol=1.0)
    for key in ("fixed_paired", "moving_paired"):  # the other modality on each grid, aligned with it
        assert registered[key].shape == rendered[key].shape and torch.equal(registered[key].affine, rendered[key].affine)
        correlation = torch.corrcoef(torch.stack([registered[key].flatten(), rendered[key].flatten()]))[0, 1]
        assert correlation > 0.95, key


def test_seeds_reproduce_and_differ_and_rigid_only_pairs():
    generator = SyntheticPairGenerator(shape=(32, 32, 32), spacing=4.0)
    assert torch.equal(generator(7)["moving"], generator(7)["moving"])
    assert not torch.equal(generator(7)["moving"], generator(8)["moving"])
    rigid = SyntheticPairGenerator(shape=(32, 32, 32), spacing=4.0, deformation_mm=0.0, rotation_deg=10.0)(3)
    field, affine = rigid["true_ddf"].numpy(), rigid["true_ddf"].affine.numpy()
    assert np.allclose(jacobian_determinant(field, affine), 1.0, atol=1e-3)
    # the true field of a rigid-only pair is its true rigid motion
    errors = rigid_errors(fit_rigid(field, affine), rigid["true_affine"].numpy())
    assert errors["rotation_error_deg"] < 0.05 and errors["translation_error_mm"] < 0.05


def test_random_direction_typed_false_on_the_command_line_is_off():
    """``monai.bundle run`` hands ``--synthesis_args#random_direction false`` over as the string "false", which Python reads as true."""
    settings = {"shape": (16, 16, 16), "spacing": 8.0, "modalities": ("t1", "t2")}
    off, on = (SyntheticPairGenerator(**settings, random_direction=value)(5)["moving"] for value in (False, True))
    assert not torch.equal(on, off)  # the direction's coin is drawn from the seed's generator only when asked for
    assert torch.equal(SyntheticPairGenerator(**settings, random_direction="false")(5)["moving"], off)
    with pytest.raises(ValueError, match="random_direction must be true or false"):
        SyntheticPairGenerator(**settings, random_direction="off")


def test_scaling_makes_the_global_motion_affine_and_keeps_rigid_seeds():
    args = dict(shape=(32, 32, 32), spacing=4.0, deformation_mm=0.0, rotation_deg=10.0)
    rigid = SyntheticPairGenerator(**args)(3)
    affine_pair = SyntheticPairGenerator(**args, scaling=0.1)(3)
    singular_values = np.linalg.svd(affine_pair["true_affine"][:3, :3].numpy(), compute_uv=False)
    assert singular_values.max() - singular_values.min() > 0.01  # scaled, not a rotation
    assert np.all(np.abs(singular_values - 1) <= 1 / 0.9 - 1 + 1e-9)
    # the true field is the affine itself
    field, grid = affine_pair["true_ddf"].numpy(), affine_pair["true_ddf"].affine.numpy()
    world = np.einsum("ij,j...->i...", grid[:3, :3], np.indices(field.shape[1:]).astype(float)) + grid[:3, 3, None, None, None]
    moved = (
        np.einsum("ij,j...->i...", affine_pair["true_affine"][:3, :3].numpy(), world) + affine_pair["true_affine"][:3, 3, None, None, None].numpy()
    )
    assert np.allclose(world + field, moved, atol=1e-3)
    # the scales are drawn after the anatomy: the same seed gives the same head
    assert torch.equal(rigid["fixed_label"], affine_pair["fixed_label"])


def test_two_dimensional_pairs_and_user_label_maps():
    pair = SyntheticPairGenerator(shape=(64, 48), spacing=2.0, modalities=("t1", "t2"))(0)
    assert pair["moving"].shape == (1, 64, 48) and pair["true_ddf"].shape == (2, 64, 48)
    labels = torch.zeros(1, 24, 24, 24, dtype=torch.long)
    labels[:, 6:18, 6:18, 6:18] = 1
    labels[:, 9:15, 9:15, 9:15] = 2
    user = SyntheticPairGenerator(
        labels=labels,
        labels_affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])),
        tissue_of_label={0: "background", 1: "grey_matter", 2: "white_matter"},
        modalities=("ct", "t1"),
    )(0)
    assert torch.equal(user["fixed_label"].long(), labels)
    assert set(user["moving_label"].unique().tolist()) <= {0, 1, 2}


def test_a_cache_dataset_synthesises_each_pair_once():
    from monai.data import CacheDataset

    from regplugins.data import SynthesizePaird

    dataset = CacheDataset([{"seed": 3}], transform=SynthesizePaird(shape=(16, 16, 16), spacing=6.0), progress=False)
    cached = dataset._cache[0]
    assert "fixed" in cached and "seed" not in cached  # the pair itself is held, not its seed
    assert torch.equal(dataset[0]["fixed"], SyntheticPairGenerator(shape=(16, 16, 16), spacing=6.0)(3)["fixed"])


def test_intensity_spread_zero_gives_every_pair_one_protocols_contrast():
    """Bone's brightest CT values differ from pair to pair by default and sit at its range's middle (950 HU) with spread 0."""
    from regplugins.data.synth import SKULL

    def skull_90th_percentile(spread):
        generator = SyntheticPairGenerator(
            shape=(64, 64, 64), spacing=2.0, skull_probability=1.0, deformation_mm=0, rotation_deg=0, translation_mm=0, intensity_spread=spread
        )
        values = []
        for seed in range(4):
            pair = generator(seed)
            values.append(pair["moving"][0][pair["moving_label"][0] == SKULL].quantile(0.9).item())
        return np.array(values)

    assert np.ptp(skull_90th_percentile(1.0)) > 300
    assert np.abs(skull_90th_percentile(0.0) - 950).max() < 60
    with pytest.raises(ValueError, match="intensity_spread"):
        SyntheticPairGenerator(intensity_spread=1.5)


def test_mni152_anatomy_is_one_head_and_a_subject_deformation_makes_one_subject_per_seed():
    from regplugins.data.anatomy import HEAD_TISSUES

    args = dict(shape=(48, 48, 48), spacing=5.0, anatomy="mni152", rotation_deg=0.0, translation_mm=0.0, deformation_mm=0.0)
    template = SyntheticPairGenerator(**args)
    head = template(0)["fixed_label"][0]
    assert torch.equal(head, template(1)["fixed_label"][0])  # every seed: the same head
    assert set(head.unique().long().tolist()) == set(HEAD_TISSUES)
    # centred on the grid, in the template's orientation: longer front to back (y) than left to right (x)
    inside = torch.nonzero(head > 0).float()
    low, high = inside.min(0).values, inside.max(0).values
    assert torch.allclose((low + high) / 2, torch.full((3,), 23.5), atol=1.0)
    assert (high - low)[1] > (high - low)[0]
    pair = template(0)
    skull = pair["moving_label"][0] == {tissue: label for label, tissue in HEAD_TISSUES.items()}["bone"]
    assert pair["moving"][0][skull].median() > 300  # the added skull is bone in the CT

    subjects = SyntheticPairGenerator(**args, subject_deformation_mm=4.0, deformation_scale_mm=48.0)
    first, second = subjects(0), subjects(1)
    assert torch.equal(first["moving_label"], first["fixed_label"])  # a pair without motion stays aligned
    assert not torch.equal(first["fixed_label"], second["fixed_label"])
    spacing = np.full(3, 5.0)
    overlap = label_overlap(first["fixed_label"][0].numpy(), head.numpy(), spacing)
    assert 0.6 < np.mean([v["dice"] for v in overlap.values()]) < 0.99  # the same anatomy, another subject
    with pytest.raises(ValueError, match="3D head"):
        SyntheticPairGenerator(shape=(64, 64), anatomy="mni152")


def test_shared_texture_is_the_same_fine_structure_in_both_modalities():
    """In a block of one tissue, seen at another angle, the two images' fine structure correlates when the texture is
    shared, not when each image draws its own; with no texture and no noise there is none."""
    labels = torch.zeros(1, 48, 48, 48, dtype=torch.long)
    labels[:, 2:46, 2:46, 2:46] = 1

    def fine_structure(pair, key):  # band-pass away noise and bias field, far from the block's edges
        image = pair[key].as_tensor()[None]
        return (gaussian_smooth(image, [1.0] * 3) - gaussian_smooth(image, [2.5] * 3))[0, 0, 16:32, 16:32, 16:32].flatten()

    def correlation_and_moving_std(texture, noise_scale=1.0):
        pair = SyntheticPairGenerator(
            labels=labels,
            labels_affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])),
            tissue_of_label={0: "background", 1: "white_matter"},
            modalities=("ct", "t1"),
            rotation_deg=10,
            translation_mm=0,
            deformation_mm=0,
            texture=texture,
            noise_scale=noise_scale,
        )(1)
        fixed, moving = fine_structure(pair, "fixed"), fine_structure(pair, "moving")
        return np.corrcoef(fixed.numpy(), moving.numpy())[0, 1], moving.std().item()

    shared, independent, none = (correlation_and_moving_std(t) for t in ("shared", "independent", "none"))
    assert shared[0] > 0.5 and abs(independent[0]) < 0.2
    assert none[1] < 0.8 * min(shared[1], independent[1])
    assert correlation_and_moving_std("none", noise_scale=0.0)[1] < 0.1 * none[1]
    with pytest.raises(ValueError, match="texture"):
        SyntheticPairGenerator(texture="per_image")


def test_a_clinical_pair_has_the_ct_on_a_finer_grid_over_the_same_field_of_view(tmp_path):
    import json

    import nibabel as nib

    from regplugins.data import write_clinical_pair

    datalist = write_clinical_pair(tmp_path, mr_shape=(24, 24, 20), ct_shape=(48, 48, 34))
    entry = json.loads(datalist.read_text())[0]
    ct, mr, ct_label = (nib.load(str(tmp_path / entry[key])) for key in ("fixed", "moving", "fixed_label"))
    assert (entry["fixed_modality"], ct.shape, mr.shape, ct.get_data_dtype()) == ("ct", (48, 48, 34), (24, 24, 20), np.int16)
    # the outer voxel edges of both grids are the same world points
    for image in (ct, mr):
        edges = image.affine @ np.array([[-0.5, -0.5, -0.5, 1.0], [s - 0.5 for s in image.shape] + [1.0]]).T
        assert np.allclose(edges, mr.affine @ np.array([[-0.5, -0.5, -0.5, 1.0], [23.5, 23.5, 19.5, 1.0]]).T, atol=1e-4)
    labels = np.asanyarray(ct_label.dataobj)
    assert ct_label.shape == ct.shape and labels.max() > 1 and float(np.asanyarray(ct.dataobj).min()) < -500
