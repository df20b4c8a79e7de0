"""Output and optimization measures: a linear model whose logits are known by hand, step counts and the sum of
training losses on a hand-made history, and the gradient noise against an enumeration of every minibatch.

The linear model f(x) = W x + b, W = [[1, 0], [0, 1], [0, 0]], b = (0, 0, 0.5), has the logits (x_1, x_2, 0.5)."""
from __future__ import annotations

import copy
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.zoo.models import MLP, init_parameters
from measures.testing import ValueCase

SAMPLES = [  # (x, label, logits by hand, margin by hand)
    ((3.0, 0.0), 0, (3.0, 0.0, 0.5), 2.5),
    ((0.0, 2.0), 1, (0.0, 2.0, 0.5), 1.5),
    ((1.25, 0.0), 0, (1.25, 0.0, 0.5), 0.75),
    ((0.0, 4.0), 1, (0.0, 4.0, 0.5), 3.5),
    ((2.0, 1.0), 0, (2.0, 1.0, 0.5), 1.0),
    ((1.0, 3.0), 1, (1.0, 3.0, 0.5), 2.0),
    ((0.0, 0.0), 2, (0.0, 0.0, 0.5), 0.5),
    ((-1.0, -1.0), 2, (-1.0, -1.0, 0.5), 1.5),
    ((5.0, 0.0), 0, (5.0, 0.0, 0.5), 4.5),
    ((1.0, 2.0), 1, (1.0, 2.0, 0.5), 1.0),
]


def linear_model() -> nn.Linear:
    """f(x) = (x_1, x_2, 0.5)."""
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    return model


def linear_data(samples=SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


def _cross_entropy_and_entropy() -> tuple[float, float]:
    """The mean cross-entropy and the mean entropy of the softmax, sample by sample from the logits by hand."""
    ce, ent = 0.0, 0.0
    for _, label, logits, _ in SAMPLES:
        log_z = math.log(sum(math.exp(z) for z in logits))
        ce += log_z - logits[label]
        ent -= sum(math.exp(z - log_z) * (z - log_z) for z in logits)
    return ce / len(SAMPLES), ent / len(SAMPLES)


CROSS_ENTROPY, ENTROPY = _cross_entropy_and_entropy()
GAMMA = 0.5 + 0.9 * (0.75 - 0.5)  # sorted margins 0.5, 0.75, …: the 10th percentile sits at 0.1·(10 − 1) = 0.9


def _linear_case(name: str, reference: float, why: str) -> ValueCase:
    return ValueCase(name, linear_model(), reference, train=linear_data(), why=why)


# ----------------------------------------------------------------------------------------- history
HISTORY = [
    {"epoch": 1, "step": 10, "train_loss": 0.9},
    {"epoch": 2, "step": 20, "train_loss": 0.1},  # reaches 0.1 here (≤ is enough)
    {"epoch": 3, "step": 30, "train_loss": 0.04},
    {"epoch": 4, "step": 40, "train_loss": 0.0101},
    {"epoch": 5, "step": 50, "train_loss": 0.007},  # and 0.01 here
]


def _history_case(name: str, reference: float, history=HISTORY, **kw) -> ValueCase:
    return ValueCase(name, nn.Linear(2, 2), reference, history=history, **kw)


# ----------------------------------------------------------------------------------------- gradient noise
def brute_force_noise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """E_B ‖g_B − g‖² over every subset B of ``batch_size`` samples (minibatches without replacement)."""
    def gradient(idx):
        model.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        return torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])

    model = copy.deepcopy(model).eval()
    full = gradient(list(range(len(y))))
    subsets = list(itertools.combinations(range(len(y)), batch_size))
    return sum((gradient(list(s)) - full).square().sum().item() for s in subsets) / len(subsets)


def _noise_case() -> ValueCase:
    """A 3 → 4 → 4 → 2 MLP on 8 samples with the training batch size 3: all 56 minibatches enumerated."""
    g = torch.Generator().manual_seed(0)
    model = MLP((3,), 2, depth=2, width=4)
    init_parameters(model, g)
    x, y = torch.randn(8, 3, generator=g), torch.tensor([0, 1] * 4)
    return ValueCase("grad_noise_final", model, brute_force_noise(model, x, y, 3), train=(x, y),
                     hparams={"train.batch_size": 3}, rel=1e-5,
                     why="E_B ‖g_B − g‖² over every minibatch of 3 of the 8 samples")


CASES = [
    _linear_case("cross_entropy", CROSS_ENTROPY, "mean of log Σ exp z − z_y over the logits by hand"),
    _linear_case("output_entropy", ENTROPY, "mean of −Σ p log p over the logits by hand"),
    _linear_case("inverse_margin", 1 / GAMMA ** 2, "1/γ², γ the interpolated 10th percentile of the margins by hand"),
    _history_case("steps_to_0.1", 20, rel=0.0, why="the step of the first epoch with train_loss ≤ 0.1"),
    _history_case("steps_0.1_to_0.01", 30, rel=0.0, why="from step 20 (loss ≤ 0.1) to step 50 (loss ≤ 0.01)"),
    _history_case("sotl", 0.9 + 0.1 + 0.04 + 0.0101 + 0.007, rel=0.0, abs=1e-12,
                  why="the sum of the five epochs' training losses"),
    _history_case("sotl", 1.0, history=HISTORY[:2], rel=0.0, abs=1e-12, why="0.9 + 0.1 over a two-epoch history"),
    _noise_case(),
]
