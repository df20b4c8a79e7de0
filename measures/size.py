"""Size of the model (Jiang et al. 2020, Appendix C, VC-dimension-based measures).

Equation numbers are Jiang et al.'s (arXiv:1912.02178, Appendix C; numbering as in the ``ComplexityType``
enum of nitarshan/robust-generalization-measures).

Sample size: every measure here is a bound-type complexity term and is reported adjusted for the number m of
training samples (the registry's ``sample_size``; docs/measures/size-and-output.md): ½(v − log m) for a logarithm,
√(v/m) otherwise, v the formula of its docstring. The unadjusted v and m are kept in the details.
"""
from __future__ import annotations

import math

from measures.context import Context
from measures.registry import measure


@measure("params", needs=("model", "train_data"), sign=1, family="size",
         version=2, sample_size="log",
         invariances=("permutation", "rescaling", "batchnorm_scaling"),
         reference="Jiang et al. 2020, 'Fantastic generalization measures', eq. (20): number of parameters")
def num_params(ctx: Context) -> float:
    """log of the number of parameters, log ω (a VC-dimension proxy).

    log ω with ω the number of entries of all parameters (weights, biases and any other parameter). Jiang et al.
    use ω itself; the log is a monotone transform, so rank correlations are unchanged.
    """
    return math.log(ctx.num_params)
