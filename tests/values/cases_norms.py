"""Size, Frobenius, distance and path-norm measures on a diagonal network, in closed form.

x = t·e_j with label j: the 3 → 3 → 3 → 3 bias-free ReLU network of diagonal weights diag(a), diag(b), diag(c)
maps it to t·a_j b_j c_j e_j, so its margin is t·a_j b_j c_j and every norm is a sum over the diagonals."""
from __future__ import annotations

import math

import numpy as np
import torch

from measures.testing import ValueCase
from tests.helpers import diagonal_mlp

A, B, C = (2.0, 1.0, 0.5), (1.0, 3.0, 1.0), (0.5, 1.0, 2.0)  # diagonals of W_1, W_2, W_3
A0, B0, C0 = (1.0, 1.0, 1.0), (0.0, 1.0, -1.0), (0.5, 0.0, 0.0)  # initial diagonals
LABELS = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
SCALES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]

X = torch.stack([t * torch.eye(3)[j] for j, t in zip(LABELS, SCALES)])
GAMMA = float(np.percentile([t * A[j] * B[j] * C[j] for j, t in zip(LABELS, SCALES)], 10))  # 10th-percentile margin
FRO = [sum(v * v for v in d) for d in (A, B, C)]  # ‖diag(d)‖_F² = Σ d²
LOG_PROD = sum(math.log(f) for f in FRO)
LOG_GAMMA_SQ = 2 * math.log(GAMMA)
PATHS = sum((a * b * c) ** 2 for a, b, c in zip(A, B, C))  # only the paths j → j → j → j exist
DIST = sum((v - v0) ** 2 for d, d0 in zip((A, B, C), (A0, B0, C0)) for v, v0 in zip(d, d0))


def _case(name: str, reference: float, why: str) -> ValueCase:
    return ValueCase(name, diagonal_mlp((A, B, C)), reference, init_model=diagonal_mlp((A0, B0, C0)),
                     train=(X, torch.tensor(LABELS)), why=why)


CASES = [
    _case("params", math.log(27), "log of the 27 weights"),
    _case("log_prod_of_fro", LOG_PROD, "Σ log ‖W_i‖_F²"),
    _case("log_prod_of_fro_over_margin", LOG_PROD - LOG_GAMMA_SQ, "Σ log ‖W_i‖_F² − log γ²"),
    _case("log_sum_of_fro", math.log(3) + LOG_PROD / 3, "log d + (1/d) Σ log ‖W_i‖_F²"),
    _case("log_sum_of_fro_over_margin", math.log(3) + (LOG_PROD - LOG_GAMMA_SQ) / 3,
          "log d + (1/d)(Σ log ‖W_i‖_F² − log γ²)"),
    _case("param_norm", sum(FRO), "Σ ‖W_i‖_F²"),
    _case("dist_init_fro", DIST, "Σ ‖W_i − W_i⁰‖_F² over the diagonals"),
    _case("path_norm", PATHS, "Σ_j a_j² b_j² c_j²"),
    _case("path_norm_over_margin", PATHS / GAMMA ** 2, "Σ_j a_j² b_j² c_j² / γ²"),
]
