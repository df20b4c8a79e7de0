"""The evaluator's statistics, for notebooks: ``from benchmark import stats`` (they live in
``benchmark.evaluation.stats``)."""
from benchmark.evaluation.stats import *  # noqa: F401,F403
from benchmark.evaluation.stats import __all__  # noqa: F401
