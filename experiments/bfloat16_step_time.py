"""How long does one training step of the FCN take in float32 and in bfloat16 on this CPU?

One forward and backward pass of `regplugins.networks.MultiResolutionFCN` on a 64^3 pair (the
fcn bundle's working grid), averaged over three steps, with and without bfloat16 autocast. Run it
as it is, then with oneDNN held to AVX2 to see a CPU without bfloat16 units: there oneDNN falls
back to reference kernels, which is why the bundles' `mixed_precision` defaults to
`regplugins.inferers.bfloat16_is_fast(device)` instead of on.

    python experiments/bfloat16_step_time.py
    ONEDNN_MAX_CPU_ISA=AVX2 python experiments/bfloat16_step_time.py
"""

import time

import torch

from regplugins.networks import MultiResolutionFCN

network = MultiResolutionFCN(spatial_dims=3, in_channels=2).train().to(memory_format=torch.channels_last_3d)
pair = torch.rand(1, 2, 64, 64, 64).contiguous(memory_format=torch.channels_last_3d)
for bfloat16 in (False, True):
    start = time.perf_counter()
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            fields = network(pair)
        sum(field.float().mean() for field in fields).backward()
    print(f"{'bfloat16' if bfloat16 else 'float32'}: {(time.perf_counter() - start) / 3:.2f} s per step")
