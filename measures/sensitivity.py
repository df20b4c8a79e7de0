"""Sensitivity of the trained function to its input, on the training set.

``input_jacobian_norm`` is Novak et al. (2018)'s Jacobian norm: how much the class probabilities move when
a training input moves. It reads only the function (the softmax outputs as a function of x), so it is
invariant to any reparametrisation that keeps the function, and it is not a bound term: no sample-size
adjustment.
"""
from __future__ import annotations

import torch

from measures.context import Context
from measures.registry import measure


def jacobian_sq_norms(ctx: Context) -> torch.Tensor:
    """‖J_i‖_F² = Σ_j ‖∂ softmax(f(x_i))_j / ∂x_i‖² for every training input, (n,): one backward pass per class
    over a whole chunk, the gradient of Σ_i p_ij with respect to the inputs. The model in eval mode treats every
    sample alone, so row i of that gradient is sample i's own, and the norms are exact."""
    out = []
    for i in range(0, len(ctx.x_train), ctx.chunk):
        x = ctx.x_train[i:i + ctx.chunk].detach().requires_grad_(True)
        with torch.enable_grad():
            probs = torch.softmax(ctx.forward(x), dim=1)
            total = torch.zeros(len(x), dtype=torch.float64, device=x.device)
            for j in range(probs.shape[1]):
                (g,) = torch.autograd.grad(probs[:, j].sum(), x, retain_graph=j + 1 < probs.shape[1])
                total += g.flatten(1).double().square().sum(1)
        out.append(total)
    return torch.cat(out)


@measure("input_jacobian_norm", needs=("model", "train_data"), sign=1, family="sensitivity",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Novak, Bahri, Abolafia, Pennington & Sohl-Dickstein 2018, 'Sensitivity and generalization in "
                   "neural networks: an empirical study', eq. (1)")
def input_jacobian_norm(ctx: Context) -> float:
    """Mean Frobenius norm of the input–output Jacobian over the training set, (1/n) Σ_i ‖∂σ(f(x_i))/∂x_i‖_F,
    σ the softmax.

    Novak et al. evaluate it at test points; here at the training inputs, so that it reads no test data.
    """
    return ctx.shared(jacobian_sq_norms).sqrt().mean().item()
