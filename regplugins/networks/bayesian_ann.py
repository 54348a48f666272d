"""The regression ANN of Islam et al., "A deep learning based framework for the registration of 3D multi-modal
medical images of the head" (Sci. Rep. 2021): CNN features of the two images in, six rigid parameters out,
trained with Bayesian regularisation as MATLAB's ``trainbr`` does."""

from __future__ import annotations

import torch
from torch import nn

HISTORY = ("sse", "ssw", "gamma", "alpha", "beta", "mu")


def augment(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, features) with a column of ones appended."""
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def min_max(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and half range per column, mapping it to [-1, 1] as MATLAB's ``mapminmax`` (a constant column to 0)."""
    low, high = values.aminmax(dim=0)
    half_range = (high - low) / 2
    return (high + low) / 2, torch.where(half_range > 0, half_range, torch.ones_like(half_range))


class BayesianRegularizedANN(nn.Module):
    """Feedforward regression net: ``in_features`` -> ``hidden_features`` tanh units -> ``out_features`` linear units.

    In the paper the input is the 128 CNN features of each image, concatenated (256), and the
    output the three Euler angles (degrees) and three translations (mm) of the rigid transform.
    The forward pass takes raw features and returns raw-unit outputs: the min-max maps of the
    inputs and targets to [-1, 1] (MATLAB's default ``mapminmax`` processing), set by :meth:`fit`,
    are buffers, so the state dict carries them.

    Args:
        in_features: number of input features.
        hidden_features: number of tanh hidden units.
        out_features: number of outputs.
    """

    def __init__(self, in_features: int = 256, hidden_features: int = 10, out_features: int = 6):
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden_features)
        self.output = nn.Linear(hidden_features, out_features)
        self.register_buffer("input_center", torch.zeros(in_features))
        self.register_buffer("input_scale", torch.ones(in_features))
        self.register_buffer("target_center", torch.zeros(out_features))
        self.register_buffer("target_scale", torch.ones(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_center) / self.input_scale
        y = self.output(torch.tanh(self.hidden(x)))
        return y * self.target_scale + self.target_center

    @torch.no_grad()
    def nguyen_widrow_(self) -> None:
        """MATLAB's ``initnw`` for inputs in [-1, 1]: hidden rows of norm 1.4 * hidden^(1/in) in random directions,
        biases spread evenly over the same magnitude so the tanh active regions tile the input space;
        the linear output layer uniform in [-1, 1]."""
        hidden, inputs = self.hidden.weight.shape
        magnitude = 2 * 0.7 * hidden ** (1 / inputs)  # 2: the half width of tanh's active input range [-2, 2]
        direction = nn.functional.normalize(torch.randn(hidden, inputs), dim=1)
        self.hidden.weight.copy_(magnitude * direction)
        self.hidden.bias.copy_(magnitude * torch.linspace(-1, 1, hidden) * direction[:, 0].sign())
        self.output.weight.uniform_(-1, 1)
        self.output.bias.uniform_(-1, 1)

    @torch.no_grad()
    def fit(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        epochs: int = 1000,
        mu: float = 0.005,
        mu_dec: float = 0.1,
        mu_inc: float = 10.0,
        mu_max: float = 1e10,
        min_grad: float = 1e-7,
    ) -> dict:
        """Trains on ``features`` (N, in) and ``targets`` (N, out) as MATLAB's ``trainbr`` with its default settings.

        Bayesian regularisation (MacKay's evidence framework; Foresee & Hagan 1997) minimises
        ``F = beta * E_D + alpha * E_W``, ``E_D`` the sum of squared errors (in the normalised
        units), ``E_W`` the sum of squared weights and biases. Read as a negative log posterior
        (Gaussian noise of precision ``2 beta``, Gaussian weight prior of precision ``2 alpha``),
        ``F`` has hyperparameters that maximise the evidence of the data at
        ``alpha = gamma / (2 E_W)`` and ``beta = (n - gamma) / (2 E_D)``, where
        ``gamma = P - 2 alpha tr(H^-1)`` is the number of parameters the data determine,
        ``H = 2 beta J^T J + 2 alpha I`` the Gauss-Newton Hessian of ``F``, ``P`` the number of
        parameters and ``n`` of errors (N * out). Re-estimating them after every epoch sets the
        weight decay from the training data alone, without a validation set, and the net uses
        ``gamma`` of its ``P`` parameters: this is what lets a 256-input net learn from a few
        thousand registrations.

        Each epoch takes one Levenberg-Marquardt step on ``F`` in float64: ``mu`` is multiplied by
        ``mu_inc`` until a step lowers ``F``, then by ``mu_dec``; ``gamma``, ``alpha`` and ``beta``
        are updated with the Jacobian at the new weights. Training stops after ``epochs``, when
        ``mu`` reaches ``mu_max`` or the gradient of ``E_D`` (``2 |J^T e|``, as ``trainbr``
        checks it) falls to ``min_grad``. The weights start from :meth:`nguyen_widrow_`, drawn
        from torch's global random generator, and are left in float32 (on the module's device; the
        fit runs on that of ``features``).

        Returns:
            per epoch: ``sse`` (``E_D``), ``ssw`` (``E_W``), ``gamma``, ``alpha``, ``beta`` and ``mu``
            (lists); and ``stop``, why training ended (``"epochs"``, ``"mu_max"`` or ``"min_grad"``).
        """
        x, t = features.double(), targets.double()
        normalization = min_max(x) + min_max(t)
        for buffer, value in zip((self.input_center, self.input_scale, self.target_center, self.target_scale), normalization):
            buffer.copy_(value)
        x_center, x_scale, t_center, t_scale = normalization
        x, t = augment((x - x_center) / x_scale), (t - t_center) / t_scale
        self.nguyen_widrow_()
        # the optimised vector, on the device of the data: each layer's weights, with its bias as the weight of a
        # constant input, flattened
        augmented = [torch.cat([layer.weight, layer.bias[:, None]], 1) for layer in (self.hidden, self.output)]
        w = torch.cat([weights.flatten() for weights in augmented]).to(x)
        split = self.hidden.weight.numel() + self.hidden.out_features
        n_params, n_errors = w.numel(), t.numel()

        def unflatten(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return w[:split].view(self.hidden.out_features, -1), w[split:].view(self.output.out_features, -1)

        def layers(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """The hidden activations, augmented (N, hidden + 1), and the output layer (out, hidden + 1)."""
            w1, w2 = unflatten(w)
            return augment(torch.tanh(x @ w1.T)), w2

        def errors(w: torch.Tensor) -> tuple[torch.Tensor, float, float]:
            """The errors (N, out), their sum of squares and that of the weights."""
            a, w2 = layers(w)
            e = a @ w2.T - t
            return e, float(e.square().sum()), float(w @ w)

        def normal_equations(w: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """``J^T J`` and ``J^T e``, ``J`` (N * out, P) the Jacobian of the errors, from its Kronecker structure:
            the row of sample b, output k is ``(d_bk (x) x_b, onehot_k (x) a_b)``, ``d_bk`` the derivatives of
            output k by the hidden pre-activations, so no (N * out, P) matrix is formed."""
            a, w2 = layers(w)
            d = w2[:, :-1] * (1 - a[:, None, :-1] ** 2)  # (N, out, hidden)
            first = torch.einsum("bjm,bi,bl->jiml", d.transpose(1, 2) @ d, x, x).reshape(split, split)
            cross = torch.einsum("bkj,bm,bi->jikm", d, a, x).reshape(split, -1)
            second = torch.kron(torch.eye(len(w2)).to(w), a.T @ a)  # one block per output
            jj = torch.cat([torch.cat([first, cross], 1), torch.cat([cross.T, second], 1)])
            je = torch.cat([torch.einsum("bkj,bk,bi->ji", d, e, x).flatten(), (e.T @ a).flatten()])
            return jj, je

        def cholesky(diagonal: float) -> torch.Tensor:
            """The Cholesky factor of ``beta J^T J + diagonal I``."""
            matrix = beta * jj
            matrix.diagonal().add_(diagonal)
            return torch.linalg.cholesky(matrix)

        e, sse, ssw = errors(w)
        jj, je = normal_equations(w, e)
        gamma = float(n_params)
        alpha = gamma / (2 * ssw)
        beta = (n_errors - gamma) / (2 * sse) if n_errors > gamma else 1.0  # as trainbr when parameters outnumber errors
        history: dict = {key: [] for key in HISTORY}
        stop = "epochs"
        for _ in range(epochs):
            if 2 * je.norm() <= min_grad:
                stop = "min_grad"
                break
            if mu >= mu_max:
                stop = "mu_max"
                break
            perf = beta * sse + alpha * ssw
            while mu <= mu_max:
                trial = w - torch.cholesky_solve((beta * je + alpha * w)[:, None], cholesky(mu + alpha))[:, 0]
                e_trial, sse_trial, ssw_trial = errors(trial)
                if beta * sse_trial + alpha * ssw_trial < perf:
                    w, e, sse, ssw, mu = trial, e_trial, sse_trial, ssw_trial, max(mu * mu_dec, 1e-20)
                    break
                mu *= mu_inc
            jj, je = normal_equations(w, e)
            if mu <= mu_max:
                # 2 alpha tr(H^-1) = alpha tr((beta J^T J + alpha I)^-1) = alpha |L^-1|_F^2, L its Cholesky factor
                inverse_factor = torch.linalg.solve_triangular(cholesky(alpha), torch.eye(n_params).to(w), upper=False)
                gamma = n_params - alpha * float(inverse_factor.square().sum())
                alpha, beta = gamma / (2 * ssw), (n_errors - gamma) / (2 * sse)
            for key, value in zip(HISTORY, (sse, ssw, gamma, alpha, beta, mu)):
                history[key].append(value)
        for layer, weights in zip((self.hidden, self.output), unflatten(w)):
            layer.weight.copy_(weights[:, :-1])
            layer.bias.copy_(weights[:, -1])
        return {**history, "stop": stop}
