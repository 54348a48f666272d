"""How long do the refinement's MIND-SSC features of one 128^3 image take on this CPU?

Times `regplugins.losses.MINDDescriptor` (MIND-SSC, the refinement's variance floor) on a random
128^3 image, under `torch.no_grad` as the refinement computes them, best of three. Run it at two
commits to compare implementations (docs/experiments/refinement.md):

    python experiments/mind_feature_time.py
"""

from __future__ import annotations

import time

import torch

from regplugins.losses import MINDDescriptor


def main() -> None:
    image = torch.rand(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(0))
    descriptor = MINDDescriptor(3, descriptor="mind_ssc", variance_floor=0.01)
    seconds = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            descriptor(image)
            seconds.append(time.perf_counter() - start)
    print(f"MIND-SSC of a 128^3 image: {min(seconds):.3f} s (best of 3, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
