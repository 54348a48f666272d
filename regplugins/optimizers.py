"""Adam for the fits made on each pair at inference (the pre-alignment, the refinement).

``torch.optim.Optimizer.__init__`` is wrapped in ``torch._disable_dynamo``, so the first
optimiser a process makes imports ``torch._dynamo``: 1.1-1.7 s on the development machine's 2 CPU
cores, more than a whole pre-alignment and a third of a bundle's time on one pair. These fits
need plain Adam, and nothing of dynamo; training keeps ``torch.optim``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Adam"]


class Adam:
    """``torch.optim.Adam``'s update (no weight decay, no AMSGrad), step for step the same as its
    single-tensor implementation, for tensors or parameter groups ``{"params": [...], "lr": ...}``."""

    def __init__(
        self, params: Sequence[torch.Tensor] | Sequence[dict], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ):
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = [{"lr": lr, **group, "params": list(group["params"])} for group in groups]
        self.betas, self.eps, self.steps = betas, eps, 0
        self.moments = [[(torch.zeros_like(p), torch.zeros_like(p)) for p in group["params"]] for group in self.param_groups]

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        """One update, every group's learning rate times ``lr_scale`` (a schedule)."""
        self.steps += 1
        beta1, beta2 = self.betas
        first, second = 1 - beta1**self.steps, (1 - beta2**self.steps) ** 0.5  # bias corrections, as torch computes them
        for group, moments in zip(self.param_groups, self.moments):
            for p, (mean, square) in zip(group["params"], moments):
                if p.grad is None:
                    continue
                mean.lerp_(p.grad, 1 - beta1)
                square.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                p.addcdiv_(mean, (square.sqrt() / second).add_(self.eps), value=-(group["lr"] * lr_scale) / first)
