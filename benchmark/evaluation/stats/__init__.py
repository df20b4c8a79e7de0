"""Statistics of the evaluator: how well does a generalization measure rank a zoo of models?

Everything here is a pure function of a "zoo DataFrame" (one row per trained model) and
column names: hyperparameters ``hp.*``, metrics ``metric.*`` (``metric.gap_error``,
``metric.test_error``, ``metric.converged``, ``metric.test_size``, ...) and measures
``measure.*`` (NaN where the measure failed). No function mutates its input and no result
depends on the row order (the bootstrap puts rows in a canonical order before resampling).

One module per statistic or concern (sources in each module and docstring):

* :mod:`.pairs` -- ranks, pair signs, configurations and the pair designs every statistic sums over;
  :func:`default_axes`, :func:`configurations`.
* :mod:`.ranks` -- :func:`kendall_tau`, :func:`spearman_rho` and Jiang et al.'s (ICLR 2020)
  granulated Kendall Psi, :func:`granulated_kendall`.
* :mod:`.cmi` -- :func:`conditional_mutual_information` (Jiang et al. 2020 Sec. 5 / PGDL, NeurIPS
  2020) and its permutation null :func:`cmi_null`.
* :mod:`.sign_error` -- :func:`robust_sign_error` over Dziugaite et al.'s (NeurIPS 2020)
  environments, with :func:`hoeffding_weight`.
* :mod:`.resampling` -- :func:`filter_converged`; :func:`bootstrap_counts`, :func:`bootstrap_ci`,
  the percentile bootstrap that resamples seed replicates within configurations (or whole
  configurations), never rows across them; :func:`paired_difference`, :func:`holm` and
  :func:`tiers`, the groups of a ranking that the paired test cannot split.
* :mod:`.reliability` -- :func:`kendall_w`, Kendall's coefficient of concordance of several
  rankings (tasks); :func:`seed_noise`, the noise floor measured from the seed replicates;
  :func:`split_half`, the split-half reliability of the ranking.
* :mod:`.replicates` -- bootstrap replicates of tau and Psi as weighted pair sums, and
  :func:`compare`, the paired comparison of two measures on the same replicates.
* :mod:`.baseline` -- :func:`hparam_baseline`, the out-of-fold prediction of a target from the hyperparameters
  alone (a gradient-boosting regressor, whole configurations held out), and :func:`within_configuration_tau`,
  Kendall's tau over seed replicates of one configuration: what a measure adds beyond the hyperparameters.
  Reached as attributes of the package; ``__all__`` keeps the single module's names.
* :mod:`.table` -- :func:`evaluate`: all of the above for many measures, as the long leaderboard
  table, with every measure compared with the best one.

Implementation note: every statistic is a sum over *pairs of models* of products of pair
signs ``sign(x_i - x_j)``. Pair index arrays and their grouping (cells, environments,
conditioning cells) depend only on the hyperparameters, so :func:`evaluate` builds them once
(``_Design``) and reuses them for every measure, target and bootstrap replicate.
"""

from __future__ import annotations

import importlib

# name → the module of this package that defines it; imported on first use (PEP 562), so that the tables that only
# read a stored board (``genbench leaderboard``) never load scipy
_WHERE = {
    "GBR_SETTINGS": "baseline",
    "configuration_folds": "baseline",
    "hparam_baseline": "baseline",
    "hparam_features": "baseline",
    "within_configuration_tau": "baseline",
    "cmi_null": "cmi",
    "conditional_mutual_information": "cmi",
    "CONVERGED_COLUMN": "pairs",
    "SEED_COLUMN": "pairs",
    "TEST_SIZE_COLUMN": "pairs",
    "configurations": "pairs",
    "default_axes": "pairs",
    "HP_PREFIX": "pairs",
    "granulated_kendall": "ranks",
    "kendall_tau": "ranks",
    "spearman_rho": "ranks",
    "kendall_w": "reliability",
    "seed_noise": "reliability",
    "split_half": "reliability",
    "compare": "replicates",
    "RESAMPLING": "resampling",
    "bootstrap_ci": "resampling",
    "bootstrap_counts": "resampling",
    "filter_converged": "resampling",
    "holm": "resampling",
    "paired_difference": "resampling",
    "replicated": "resampling",
    "tiers": "resampling",
    "MIN_ESS": "sign_error",
    "MIN_WEIGHT": "sign_error",
    "hoeffding_weight": "sign_error",
    "robust_sign_error": "sign_error",
    "evaluate": "table",
}

__all__ = [
    "SEED_COLUMN",
    "CONVERGED_COLUMN",
    "TEST_SIZE_COLUMN",
    "default_axes",
    "kendall_tau",
    "spearman_rho",
    "granulated_kendall",
    "conditional_mutual_information",
    "cmi_null",
    "hoeffding_weight",
    "robust_sign_error",
    "bootstrap_ci",
    "bootstrap_counts",
    "configurations",
    "replicated",
    "paired_difference",
    "holm",
    "tiers",
    "compare",
    "kendall_w",
    "seed_noise",
    "split_half",
    "filter_converged",
    "evaluate",
]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"benchmark.evaluation.stats.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
