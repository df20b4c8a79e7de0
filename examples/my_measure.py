"""An example user measure: run it with `genbench run measures.plugins=[examples/my_measure.py]`."""
from measures import Context, measure


@measure("my.weight_l1", needs=("model", "init_model"), sign=+1, family="plugin",
         reference="me, 2026, eq. (1)")
def weight_l1(ctx: Context) -> float:
    """Sum of absolute weight changes from initialization, Σ_i ‖W_i − W_i⁰‖₁.

    Larger moves from the initial weights are expected to generalize worse (sign +1).
    """
    return sum(float((w - w0).abs().sum()) for w, w0 in zip(ctx.weights, ctx.init_weights))
