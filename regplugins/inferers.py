"""Inferers for registration networks."""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_eval


class PairOptimizationInferer(Inferer):
    """Feed-forward prediction, or the FCN paper's direct mode: optimise the network on this pair alone.

    With ``iterations == 0`` it returns ``network(inputs)``. Otherwise a copy of the network
    (trained weights or a fresh initialisation: no training data is needed) is trained for
    ``iterations`` Adam steps on the pair with ``loss(network(inputs), inputs)``, and the copy's
    finest field is returned; the network itself is left untouched for the next pair. The final
    forward pass stays in training mode, so batch normalisation uses this pair's statistics,
    the ones the optimisation saw.

    ``channels_last`` runs 3D convolutions in the channels-last layout, about 1.5x faster on CPU;
    ``mixed_precision`` runs every forward pass in bfloat16 (:class:`AutocastInferer`), as the
    bundles' training does.
    """

    def __init__(
        self,
        loss: nn.Module | None = None,
        iterations: int = 0,
        learning_rate: float = 1e-3,
        channels_last: bool = True,
        mixed_precision: bool = False,
    ):
        super().__init__()
        if iterations and loss is None:
            raise ValueError("pair optimisation (iterations > 0) needs a loss.")
        self.loss, self.iterations, self.learning_rate = loss, int(iterations), learning_rate
        self.channels_last = channels_last
        self.run_network = AutocastInferer(enabled=mixed_precision)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        if self.channels_last and inputs.dim() == 5:
            network = network.to(memory_format=torch.channels_last_3d)
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        if self.iterations == 0:
            return self.run_network(inputs, network, *args, **kwargs).contiguous()
        if isinstance(network, torch.jit.ScriptModule):
            raise ValueError(
                "pair optimisation trains the network's training-mode outputs, which a TorchScript export does not "
                "keep: load models/model.pt (ckpt_path), not models/model.ts."
            )
        model = copy.deepcopy(network).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.learning_rate)
        with torch.enable_grad():
            for _ in range(self.iterations):
                optimizer.zero_grad(set_to_none=True)
                self.loss(self.run_network(inputs, model, *args, **kwargs), inputs).backward()
                optimizer.step()
        with torch.no_grad():
            fields = self.run_network(inputs, model, *args, **kwargs)
        finest = fields[0] if isinstance(fields, (list, tuple)) else fields
        return finest.contiguous()


def bfloat16_is_fast(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or AMX.

    This is the default of the bundles' ``mixed_precision``. Elsewhere oneDNN runs bfloat16
    convolutions on reference kernels, far slower than float32 (``experiments/bfloat16_step_time.py``
    and ``docs/experiments/benchmark-history.md``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def fold_batch_norm(network: nn.Module) -> nn.Module:
    """An evaluation-mode ``network`` with each batch norm that follows a convolution in a ``nn.Sequential`` folded
    into the convolution (a copy; the network itself unchanged).

    The same function up to rounding, with one pass over every layer's features fewer: 0.06 to
    0.08 s of the 0.5 to 1.1 s that dual similarity's network takes per head on 2 CPU cores. A network
    in training mode, a TorchScript export and one with no such pair (MONAI's ``Convolution``
    blocks keep their norm apart) are returned as they are.
    """

    def foldable(model: nn.Module) -> list[tuple[nn.Sequential, int]]:
        return [
            (module, index)
            for module in model.modules()
            if isinstance(module, nn.Sequential)
            for index in range(len(module) - 1)
            if isinstance(module[index], _ConvNd)
            and not module[index].transposed
            and isinstance(module[index + 1], _BatchNorm)
            and module[index + 1].track_running_stats
        ]

    if network.training or isinstance(network, torch.jit.ScriptModule) or not foldable(network):
        return network
    folded = copy.deepcopy(network)
    for module, index in foldable(folded):
        module[index], module[index + 1] = fuse_conv_bn_eval(module[index], module[index + 1]), nn.Identity()
    return folded


class AutocastInferer(Inferer):
    """``network(inputs)`` under ``torch.autocast`` on the inputs' device, outputs back in float32.

    MONAI's trainers autocast on CUDA only (``amp=True``). On CPUs with AMX or AVX-512 BF16
    units, bfloat16 convolutions make a training step of the FCN about 2.3x faster (2.3 s to 1.0 s
    for two 64^3 pairs on 2 cores), one of FIRE 3.7x (14.5 s to 3.9 s for a 96^3 pair); the
    weights, the loss and the optimiser stay in float32, and so do FIRE's affines and fields
    (:func:`regplugins.layers.in_float32`).
    As a trainer's inferer it leaves the network and its checkpoints unchanged. Enable it where
    :func:`bfloat16_is_fast` says so: other CPUs are far slower in bfloat16 than in float32.
    """

    def __init__(self, dtype: torch.dtype = torch.bfloat16, enabled: bool = True):
        super().__init__()
        self.dtype, self.enabled = dtype, enabled

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs):
        network = fold_batch_norm(network)
        with torch.autocast(inputs.device.type, dtype=self.dtype, enabled=self.enabled):
            outputs = network(inputs, *args, **kwargs)
        if isinstance(outputs, dict):  # a training-mode FIRE's images, features and fields
            return {key: output.float() for key, output in outputs.items()}
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(output.float() for output in outputs)
        return outputs.float()


class ForwardInverseInferer(Inferer):
    """Both fields of an inverse-consistent network, stacked on channels: ``network(inputs, with_inverse=True)``.

    The network's ``forward`` returns the forward field alone (the bundle contract); inference
    also writes the inverse, so it asks for both (:class:`regplugins.networks.FIRENet`).
    ``mixed_precision`` runs its convolutions in bfloat16 (:class:`AutocastInferer`), where
    :func:`bfloat16_is_fast` says it pays; FIRE keeps its affines and fields in float32.
    """

    def __init__(self, mixed_precision: bool = False):
        super().__init__()
        self.run_network = AutocastInferer(enabled=mixed_precision)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        if isinstance(network, torch.jit.ScriptModule):
            raise ValueError(
                "the inverse field comes from the network's second transformation network, which a TorchScript export "
                "(the forward field alone, as network_def's contract) does not keep: load models/model.pt (ckpt_path), "
                "not models/model.ts."
            )
        return self.run_network(inputs, network, *args, with_inverse=True, **kwargs)


class ValidPatchInferer(Inferer):
    """Whole-image fields from a network that maps an input patch to the smaller field patch of its centre.

    Each axis is covered by the fewest output tiles of at most ``patch_size - 2 * margin``
    voxels, all of one length on the network's ``size_multiple`` (its pooling grid); the image is
    padded by ``margin`` (and up to the tiles' end), and each tile is predicted from the input
    patch around it, so every voxel's field comes from the context the network was trained with
    (``margin`` 20 and ``size_multiple`` 4 for :class:`regplugins.networks.PatchRegistrationUNet`,
    trained on 68^3 patches). On that grid the tiled field is the field of the network run on the
    whole padded image, whatever the tiles' size, so larger patches give the same field with less
    of the margin computed twice. Patches are predicted ``batch_size`` at a time, in the
    channels-last layout on CPU; ``mixed_precision`` runs the network in bfloat16
    (:class:`AutocastInferer`), where :func:`bfloat16_is_fast` says it pays.
    """

    def __init__(
        self,
        patch_size: int = 68,
        margin: int = 20,
        size_multiple: int = 4,
        batch_size: int = 8,
        padding_value: float = 0.0,
        mixed_precision: bool = False,
    ):
        super().__init__()
        self.run_network = AutocastInferer(enabled=mixed_precision)
        self.longest_tile = (patch_size - 2 * margin) // size_multiple * size_multiple
        if self.longest_tile < size_multiple:
            raise ValueError(f"patch_size {patch_size} leaves no output of {size_multiple} voxels inside a margin of {margin}.")
        self.margin, self.size_multiple, self.batch_size, self.padding_value = margin, size_multiple, batch_size, padding_value

    def _tiles(self, size: int) -> range:
        """The starts of the fewest equal output tiles, on the network's grid, that cover ``size`` voxels."""
        count = -(-size // self.longest_tile)
        length = -(-size // (count * self.size_multiple)) * self.size_multiple
        return range(0, count * length, length)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        spatial = inputs.shape[2:]
        tiles = [self._tiles(size) for size in spatial]
        padded = [t.stop for t in tiles]
        pad = []
        for size, total in reversed(list(zip(spatial, padded))):
            pad += [self.margin, self.margin + total - size]
        image = F.pad(inputs, pad, value=self.padding_value)
        if image.dim() == 5 and image.device.type == "cpu":
            image = image.contiguous(memory_format=torch.channels_last_3d)
        field = None
        starts = list(itertools.product(*tiles))
        for first in range(0, len(starts), self.batch_size):
            chunk = starts[first : first + self.batch_size]
            patches = torch.cat([image[(..., *(slice(s, s + t.step + 2 * self.margin) for s, t in zip(start, tiles)))] for start in chunk])
            predicted = self.run_network(patches, network, *args, **kwargs)
            if field is None:
                field = predicted.new_zeros(inputs.shape[0], predicted.shape[1], *padded)
            for index, start in enumerate(chunk):
                batch = predicted[index * inputs.shape[0] : (index + 1) * inputs.shape[0]]
                field[(..., *(slice(s, s + t.step) for s, t in zip(start, tiles)))] = batch
        return field[(..., *(slice(0, size) for size in spatial))].contiguous()
