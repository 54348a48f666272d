"""Coordinates in float32 under mixed precision.

Autocast runs matrix products (``einsum``, ``@``, ``nn.Linear``) and the interpolation of
bfloat16 inputs in bfloat16, whose 8-bit significand rounds an affine's diagonal near 1 to steps
of 2^-7: a scaling off by up to 0.4 %, a fifth of a voxel at the edge of a 96-voxel grid, the
size of the residual that FIRE's networks learn on pre-aligned pairs. Points, affines and fields
therefore stay in float32 while the convolutions around them run in bfloat16.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["in_float32"]

Function = TypeVar("Function", bound=Callable)


def _float32(value):
    return value.float() if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16) else value


def in_float32(function: Function) -> Function:
    """``function`` with autocast off and its half-precision tensor arguments in float32; float64 ones stay.

    Where autocast is not on (inference, a TorchScript trace) it calls ``function`` as it is.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        if not torch.is_autocast_enabled(device_type):
            return function(*args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            return function(*(_float32(value) for value in args), **{key: _float32(value) for key, value in kwargs.items()})

    return wrapper
