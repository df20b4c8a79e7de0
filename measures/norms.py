"""Norm- and distance-based measures (Jiang et al. 2020, §C.2–C.3)."""
from __future__ import annotations

import math

import torch

from measures.context import Context
from measures.registry import measure


@measure("log_prod_of_fro", needs=("model",), sign=1, family="norm",
         reference="Jiang et al. 2020, eq. (47); Neyshabur et al. 2015")
def log_prod_of_fro(ctx: Context) -> float:
    """Log product of the layers' squared Frobenius norms, log Π_i ‖W_i‖_F².

    Σ_i log ‖W_i‖_F² over the d Linear/Conv layers (biases excluded).
    """
    return sum(math.log(torch.linalg.vector_norm(w).item() ** 2) for w in ctx.weights)


@measure("dist_init_fro", needs=("model", "init_model"), sign=1, family="norm",
         reference="Jiang et al. 2020, eq. (54); Nagarajan & Kolter 2019")
def dist_init_fro(ctx: Context) -> float:
    """Squared Frobenius distance from initialization, Σ_i ‖W_i − W_i⁰‖_F².

    Sum over layers of the squared Frobenius norm of (trained − initial) weights (biases excluded).
    """
    return sum((torch.linalg.vector_norm(w - w0) ** 2).item() for w, w0 in zip(ctx.weights, ctx.init_weights))
