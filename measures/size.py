"""Size of the model (Jiang et al. 2020, §C.1)."""
from __future__ import annotations

import math

from measures.context import Context
from measures.registry import measure


@measure("params", needs=("model",), sign=1, family="size",
         reference="Jiang et al. 2020, 'Fantastic generalization measures', eq. (41): number of parameters")
def num_params(ctx: Context) -> float:
    """log of the number of parameters, log ω (a VC-dimension proxy).

    log ω with ω = Σ_layers numel(W) + numel(b).
    """
    return math.log(ctx.num_params)
