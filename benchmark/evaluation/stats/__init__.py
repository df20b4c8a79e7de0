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
* :mod:`.table` -- :func:`evaluate`: all of the above for many measures, as the long leaderboard
  table, with every measure compared with the best one.

Implementation note: every statistic is a sum over *pairs of models* of products of pair
signs ``sign(x_i - x_j)``. Pair index arrays and their grouping (cells, environments,
conditioning cells) depend only on the hyperparameters, so :func:`evaluate` builds them once
(``_Design``) and reuses them for every measure, target and bootstrap replicate.
"""

from benchmark.evaluation.stats.cmi import cmi_null, conditional_mutual_information
from benchmark.evaluation.stats.pairs import (
    CONVERGED_COLUMN,
    SEED_COLUMN,
    TEST_SIZE_COLUMN,
    configurations,
    default_axes,
)
from benchmark.evaluation.stats.pairs import (
    HP_PREFIX as HP_PREFIX,
)
from benchmark.evaluation.stats.ranks import granulated_kendall, kendall_tau, spearman_rho
from benchmark.evaluation.stats.reliability import kendall_w, seed_noise, split_half
from benchmark.evaluation.stats.replicates import compare
from benchmark.evaluation.stats.resampling import (
    RESAMPLING as RESAMPLING,
)
from benchmark.evaluation.stats.resampling import (
    bootstrap_ci,
    bootstrap_counts,
    filter_converged,
    holm,
    paired_difference,
    replicated,
    tiers,
)
from benchmark.evaluation.stats.sign_error import MIN_ESS as MIN_ESS
from benchmark.evaluation.stats.sign_error import MIN_WEIGHT as MIN_WEIGHT
from benchmark.evaluation.stats.sign_error import hoeffding_weight, robust_sign_error
from benchmark.evaluation.stats.table import evaluate

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
