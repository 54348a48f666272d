"""Warping by a predicted voxel DDF inside a bundle's post-processing (MONAI has no dictionary form)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from regplugins.layers import cached_warp


class Warpd(MapTransform):
    """Warp each key ``(C, *spatial)`` by the voxel DDF at ``ddf_key`` on the same grid.

    Writes ``<key><suffix>``; ``mode`` is per key, ``"nearest"`` for label maps. Used by the
    validation post-processing to move moving labels onto the fixed image.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ddf_key: str = "pred",
        mode: str | tuple[str, ...] = "bilinear",
        suffix: str = "_warped",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.ddf_key, self.suffix = ddf_key, suffix
        self.mode = ensure_tuple_rep(mode, len(self.keys))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        ddf = torch.as_tensor(d[self.ddf_key])[None].float()
        for key, mode in self.key_iterator(d, self.mode):
            image = torch.as_tensor(d[key])[None].float().to(ddf.device)
            d[f"{key}{self.suffix}"] = cached_warp(mode, "border")(image, ddf)[0]
        return d
