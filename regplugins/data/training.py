"""The training pairs of the bundles' train configs, built from a few named settings.

Every bundle trains on pairs synthesised from seeds (:class:`~regplugins.data.SynthesizePaird`),
one pair of modalities per seed, dealt in turn (``["ct", "t1"], ["ct", "t2"], ...``), then taken
to the network's grid by the bundle's own transforms; the rigid bundle moves each synthesised
head many times over (:func:`augmented_pairs`); the dual-similarity bundle also takes a user's
paired datalist (:func:`user_pairs`). Validation uses the same functions from seed 1,000,000 on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.data import CacheDataset, PersistentDataset
from monai.transforms import Compose, ConcatItemsd, LoadImaged, Orientationd, ResampleToMatchd, Spacingd
from torch.utils.data import ConcatDataset, Dataset

from regplugins.io import paired_training_data
from regplugins.transforms import AntiAliasd, NormalizeModalityd

from .synth import SynthesizePaird

__all__ = ["ANATOMIES", "augmented_pairs", "cached_pairs", "ct_mr_pairs", "synthetic_pairs", "user_pairs"]


def cached_pairs(
    data: Sequence[dict], transform: Callable, cache_dir: str | None = None, cache_rate: float = 1.0, num_workers: int = 0
) -> CacheDataset | PersistentDataset:
    """The pairs ``transform`` makes from ``data`` (e.g. ``{"seed": s}``), cached in memory or, with ``cache_dir``, on disk.

    On disk each image keeps its grid (``track_meta``): validation warps labels through the
    affines, which a plain-tensor cache drops. MONAI reads such MetaTensors back only without
    ``weights_only``, so a ``cache_dir`` must be a directory that a train config wrote.
    """
    if cache_dir:
        return PersistentDataset(data=data, transform=transform, cache_dir=cache_dir, track_meta=True, weights_only=False)
    return CacheDataset(data=data, transform=transform, cache_rate=cache_rate, num_workers=num_workers)


def _seeds_by_modalities(num_pairs: int, modality_pairs: Sequence[Sequence[str]], first_seed: int) -> list[tuple[list[str], range]]:
    """Seeds ``first_seed`` to ``first_seed + num_pairs - 1`` dealt over ``modality_pairs`` in turn."""
    if not modality_pairs:
        raise ValueError("modality_pairs must name at least one pair of modalities, e.g. [['ct', 't1']].")
    count = len(modality_pairs)
    return [(list(pair), range(first_seed + k, first_seed + num_pairs, count)) for k, pair in enumerate(modality_pairs)]


# the heads that synthetic_pairs can draw, as SyntheticPairGenerator arguments: the MNI152 head as one subject
# per seed, deformed as the bench's MNI152 kinds deform it (regplugins.bench.SYNTHETIC_SETS)
ANATOMIES = {"generated": {}, "mni152": {"anatomy": "mni152", "subject_deformation_mm": 4.0}}


def _joined(datasets: list[Dataset]) -> Dataset:
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


def synthetic_pairs(
    num_pairs: int,
    modality_pairs: Sequence[Sequence[str]],
    synthesis_args: dict,
    transforms: Sequence[Callable] = (),
    first_seed: int = 0,
    cache_dir: str | None = None,
    cache_rate: float = 1.0,
    num_workers: int = 0,
    anatomies: Sequence[str] = ("generated",),
) -> Dataset:
    """``num_pairs`` synthetic pairs, ``SynthesizePaird(modalities, **synthesis_args)`` then ``transforms``, cached.

    Seed ``first_seed + i`` gets ``modality_pairs[i % len(modality_pairs)]``; the pairs of one
    modality pair are cached together (:func:`cached_pairs`) and come one modality pair after another.
    Transforms after the first random one run at every access, as in any MONAI cache. With several
    ``anatomies`` (:data:`ANATOMIES`) every modality pair is made on each head in turn: seed
    ``first_seed + i`` gets combination ``i % (len(modality_pairs) * len(anatomies))``, the
    anatomies' outer, so that one anatomy deals its seeds exactly as before.
    """
    unknown = [a for a in anatomies if a not in ANATOMIES]
    if not anatomies or unknown:
        raise ValueError(f"anatomies must name one or more of {sorted(ANATOMIES)}, got {list(anatomies)}.")
    dealt = _seeds_by_modalities(num_pairs, list(modality_pairs) * len(anatomies), first_seed)
    heads = [ANATOMIES[anatomy] for anatomy in anatomies for _ in modality_pairs]
    return _joined(
        [
            cached_pairs(
                [{"seed": s} for s in seeds],
                Compose([SynthesizePaird(modalities=pair, **{**synthesis_args, **head}), *transforms]),
                cache_dir,
                cache_rate,
                num_workers,
            )
            for (pair, seeds), head in zip(dealt, heads)
        ]
    )


def augmented_pairs(
    num_pairs: int,
    modality_pairs: Sequence[Sequence[str]],
    synthesis_args: dict,
    preprocessing: Sequence[Callable],
    augmentation: Sequence[Callable],
    copies: int = 1,
    first_seed: int = 0,
    num_workers: int = 0,
) -> Dataset:
    """``num_pairs`` synthesised pairs, each in ``copies`` augmented copies: the rigid bundle's training set.

    The pairs (``SynthesizePaird`` then ``preprocessing``) are made once and kept; ``augmentation``
    runs on each copy at every access, so that each epoch sees new motions. Copy ``r`` of the pair
    of seed ``s`` carries ``motion_seed = 1000 s + r``, for an augmentation that fixes its draw by
    it (validation: the same motions in every run).
    """
    datasets = []
    for pair, seeds in _seeds_by_modalities(num_pairs, modality_pairs, first_seed):
        made = CacheDataset(
            data=[{"seed": s} for s in seeds],
            transform=Compose([SynthesizePaird(modalities=pair, **synthesis_args), *preprocessing]),
            num_workers=num_workers,
        )
        items = [dict(made[i], motion_seed=1000 * seed + r) for i, seed in enumerate(seeds) for r in range(copies)]
        datasets.append(CacheDataset(data=items, transform=Compose(list(augmentation)), num_workers=num_workers))
    return _joined(datasets)


# a user's paired CT/MR entries, in the order the network reads them: the MR moving, the CT fixed, the CT aligned
# with the MR and the MR aligned with the CT (the pairs the intra-modality losses compare)
USER_KEYS = ("mr", "ct", "paired_ct", "paired_mr")


def user_pairs(datalist: str, working_spacing: float, transforms: Sequence[Callable] = (), num_workers: int = 0) -> CacheDataset:
    """A user's paired CT/MR data (:func:`regplugins.io.paired_training_data`) made like the synthetic pairs, cached.

    The CT goes to a RAS grid at ``working_spacing`` (anti-aliased first), the other three onto
    that grid; each is normalised by its modality and the four are stacked as ``image`` in
    :data:`USER_KEYS` order; ``transforms`` follow.
    """
    keys = list(USER_KEYS)
    loading = [
        LoadImaged(keys, reader="NibabelReader", ensure_channel_first=True, image_only=True),
        AntiAliasd(keys, pixdim=working_spacing),
        Orientationd("ct", axcodes="RAS"),
        Spacingd("ct", pixdim=working_spacing, mode="bilinear"),
        ResampleToMatchd(keys[:1] + keys[2:], key_dst="ct", mode="bilinear", padding_mode="zeros"),
        NormalizeModalityd(keys, modality=["mr", "ct", "ct", "mr"]),
        ConcatItemsd(keys, name="image"),
    ]
    return CacheDataset(data=paired_training_data(datalist), transform=Compose([*loading, *transforms]), num_workers=num_workers)


def ct_mr_pairs(datalist: str, working_spacing: float, user_transforms: Sequence[Callable], num_workers: int = 0, **synthetic) -> Dataset:
    """The dual-similarity bundle's training or validation set: a user's paired CT/MR data where ``datalist`` names
    one (:func:`user_pairs`, then ``user_transforms``), else the synthetic pairs of :func:`synthetic_pairs` (``synthetic``)."""
    if datalist:
        return user_pairs(datalist, working_spacing, user_transforms, num_workers)
    return synthetic_pairs(**synthetic, num_workers=num_workers)
