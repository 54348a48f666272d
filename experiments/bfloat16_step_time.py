"""How long does one training step take in float32 and in bfloat16 on this CPU?

One forward and backward pass, averaged over three steps after one to warm up, with and without
bfloat16 autocast (`regplugins.inferers.AutocastInferer`, the trainers' inferer):

- `fcn` (the default): `regplugins.networks.MultiResolutionFCN` on a 64^3 pair, the fcn bundle's
  working grid.
- `fire SIZE`: the whole `regplugins.networks.FIRENet` at the train config's channels on a SIZE^3
  pair (48 is the shipped grid, 96 the 2 mm one), with `FIRELoss` as the closing note's GPU
  command weighs it (MIND-SSC and the labels at 100).

Run it as it is, then with oneDNN held to AVX2 to see a CPU without bfloat16 units: there oneDNN
falls back to reference kernels, which is why the bundles' `mixed_precision` defaults to
`regplugins.inferers.bfloat16_is_fast(device)` instead of on.

    python experiments/bfloat16_step_time.py
    python experiments/bfloat16_step_time.py fire 96
    ONEDNN_MAX_CPU_ISA=AVX2 python experiments/bfloat16_step_time.py
"""

import sys
import time

import torch

from regplugins.inferers import AutocastInferer
from regplugins.losses import FIRELoss, MINDLoss
from regplugins.networks import FIRENet, MultiResolutionFCN


def fcn_step():
    network = MultiResolutionFCN(spatial_dims=3, in_channels=2).train().to(memory_format=torch.channels_last_3d)
    pair = torch.rand(1, 2, 64, 64, 64).contiguous(memory_format=torch.channels_last_3d)
    return network, pair, lambda fields: sum(field.mean() for field in fields)


def fire_step(size: int):
    network = FIRENet(spatial_dims=3, in_channels=2, channels=(8, 16, 32), transform_channels=16).train()
    pair = torch.rand(1, 2, size, size, size) * 2 - 1
    labels = {key: torch.randint(0, 12, (1, 1, size, size, size)).float() for key in ("moving_label", "fixed_label")}
    loss = FIRELoss(similarity=MINDLoss(3, reduction="none"), similarity_weight=100.0, label_weight=100.0, num_labels=12)
    return network, pair, lambda outputs: loss(outputs, labels).mean()


network, pair, loss = fire_step(int(sys.argv[2])) if sys.argv[1:2] == ["fire"] else fcn_step()
for bfloat16 in (False, True):
    inferer = AutocastInferer(enabled=bfloat16)
    for step in range(4):
        if step == 1:
            start = time.perf_counter()
        loss(inferer(pair, network)).backward()
        network.zero_grad(set_to_none=True)
    print(f"{'bfloat16' if bfloat16 else 'float32'}: {(time.perf_counter() - start) / 3:.2f} s per step")
