"""The optimizer update rules genbench trains with and continues trained models with: plain SGD, heavy-ball
momentum and Adam, with L2 weight decay, as ``torch.optim.SGD`` and ``torch.optim.Adam`` define them:

* SGD: d = g + λθ; b ← μb + d (b = d at the first step; no b for plain SGD); θ ← θ − η·b;
* Adam: d = g + λθ; m ← m + (1 − β₁)(d − m); v ← β₂v + (1 − β₂)d²;
  θ ← θ − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε).

They are written out here instead of calling ``torch.optim``, whose first step imports a compiler stack, and so
that one call updates many models at once: ``theta`` may be a ``(M, P)`` buffer holding M models' parameters as
rows, with every hyperparameter an ``(M, 1)`` column (a Python float works for a single model).

Two arithmetic forms exist, because stored results depend on each:

* ``fused=True``, torch.optim's own order (stacked training, ``benchmark.training.stacked``, and the
  single-model continuation of ``measures.flatness``): weight decay and the step are one fused
  multiply-add each (``addcmul``), Adam's step size η/(1 − β₁ᵗ) is formed in double precision and rounded once.
  On the CPU this equals torch.optim bit for bit (tests/unit/measures/test_updates.py).
* ``fused=False``, every product rounded before it is added (the stacked continuation of ``measures.flatness``
  and the tests' full-batch fit): d = g + (λθ), θ ← θ − (η·b), Adam's bias corrections computed in the
  hyperparameters' own precision. It differs from torch.optim by float rounding only.

A leaf module: it imports only torch and the standard library, so that ``benchmark.training`` may use it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

OPTIMIZERS = ("sgd", "momentum", "adam")  # the rules written here
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults

Hyper = float | torch.Tensor  # a hyperparameter: one value, or a column with one row per model


def _tensor(value: Hyper, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


@torch.no_grad()
def sgd_(theta: torch.Tensor, grad: torch.Tensor, lr: Hyper, *, weight_decay: Hyper | None = None,
         momentum: Hyper | None = None, buf: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor | None:
    """One SGD step on ``theta`` in place: d = g + λθ (``weight_decay`` None: no decay), then with
    ``momentum`` μ the buffer b ← μb + d (``buf`` None: the first step, b = d) and θ ← θ − η·b, else
    θ ← θ − η·d. Returns the momentum buffer (updated in place when given), or None without momentum.
    ``fused``: see the module docstring."""
    d = grad
    if weight_decay is not None:
        d = torch.addcmul(d, _tensor(weight_decay, theta), theta) if fused else d + weight_decay * theta
    if momentum is not None:
        buf = d.clone() if buf is None else buf.mul_(momentum).add_(d)
        d = buf
    if fused:
        theta.addcmul_(_tensor(-lr, theta), d)
    else:
        theta.sub_(lr * d)
    return buf


@torch.no_grad()
def adam_(theta: torch.Tensor, grad: torch.Tensor, lr: Hyper, m: torch.Tensor, v: torch.Tensor, t: int, *,
          weight_decay: Hyper | None = None, betas: tuple[Hyper, Hyper] = ADAM_BETAS, eps: float = ADAM_EPS,
          fused: bool = True, root: str = "pow") -> None:
    """Adam's step ``t`` (1, 2, …) on ``theta`` in place, with the first and second moments ``m`` and ``v``
    (zeros before the first step) updated in place; L2 weight decay as in ``sgd_``, not decoupled.

    ``fused``: ``lr`` a float or a float64 column (the step size η/(1 − β₁ᵗ) is rounded once to the parameters'
    precision, as torch.optim rounds a Python scalar), ``betas`` floats. Unfused: ``betas`` may be columns too,
    and the bias corrections 1 − βᵗ are computed in their precision.

    ``root`` (fused): √(1 − β₂ᵗ) as torch.optim takes it, ``"pow"`` (``** 0.5``), or ``"sqrt"`` (``math.sqrt``,
    the flatness continuation's). The two differ in the last bit for some t, the first at t = 1,270 for
    β₂ = 0.999."""
    b1, b2 = betas
    d = grad
    if weight_decay is not None:
        d = torch.addcmul(d, _tensor(weight_decay, theta), theta) if fused else d + weight_decay * theta
    if fused:
        m.lerp_(d, 1 - b1)
        v.mul_(b2).addcmul_(d, d, value=1 - b2)
        c2 = 1 - b2 ** t
        denom = (v.sqrt() / (math.sqrt(c2) if root == "sqrt" else c2 ** 0.5)).add_(eps)
        step = torch.as_tensor(lr / (1 - b1 ** t), device=theta.device).to(theta.dtype)
        theta.sub_(m * step / denom)  # = addcdiv_(m, denom, value=-step): (value·m)/denom
    else:
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        m.lerp_(d, 1 - b1)
        v.mul_(b2).add_((1 - b2) * d * d)
        theta.sub_(lr / c1 * (m / v.sqrt().div_(torch.sqrt(torch.as_tensor(c2))).add_(eps)))


class Update:
    """One optimizer with its state, applied to a fixed list of tensors step after step (``sgd_`` or ``adam_``
    on each): ``name`` one of ``OPTIMIZERS``; ``momentum`` for "momentum", ``betas`` for "adam"; hyperparameters
    floats, or columns for tensors holding models as rows; ``fused`` and ``root`` as in ``adam_``. A weight
    decay that is zero everywhere is skipped."""

    def __init__(self, name: str, lr: Hyper, *, weight_decay: Hyper = 0.0, momentum: Hyper = 0.0,
                 betas: tuple[Hyper, Hyper] = ADAM_BETAS, fused: bool = True, root: str = "pow"):
        if name not in OPTIMIZERS:
            raise ValueError(f"no update rule for optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
        self.name, self.lr, self.momentum, self.betas, self.fused, self.root = name, lr, momentum, betas, fused, root
        self.weight_decay = weight_decay if bool(torch.as_tensor(weight_decay).any()) else None
        self.state: list[list[torch.Tensor | None]] = []
        self.t = 0

    def __call__(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        """One step of every tensor of ``params`` (updated in place) with its gradient in ``grads``."""
        self.t += 1
        if not self.state:
            self.state = [[torch.zeros_like(p), torch.zeros_like(p)] if self.name == "adam" else [None]
                          for p in params]
        for p, g, s in zip(params, grads, self.state):
            if self.name == "adam":
                adam_(p, g, self.lr, s[0], s[1], self.t, weight_decay=self.weight_decay, betas=self.betas,
                      fused=self.fused, root=self.root)
            else:
                s[0] = sgd_(p, g, self.lr, weight_decay=self.weight_decay,
                            momentum=self.momentum if self.name == "momentum" else None, buf=s[0], fused=self.fused)
