"""The statistics package keeps the single module's interface: the same ``__all__``, each name one object
wherever it is reached from, every helper defined in one module only, and modules of at most 600 lines."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import benchmark.evaluation.stats as package
from benchmark import stats as notebook_api

# The names the single module benchmark/evaluation/stats.py exported, in its order.
EXPORTED = [
    "SEED_COLUMN", "CONVERGED_COLUMN", "TEST_SIZE_COLUMN", "default_axes", "kendall_tau", "spearman_rho",
    "granulated_kendall", "conditional_mutual_information", "cmi_null", "hoeffding_weight", "robust_sign_error",
    "bootstrap_ci", "bootstrap_counts", "configurations", "replicated", "paired_difference", "holm", "tiers",
    "compare", "kendall_w", "seed_noise", "split_half", "filter_converged", "evaluate",
]

MODULES = [importlib.import_module(f"{package.__name__}.{m.name}") for m in pkgutil.iter_modules(package.__path__)]


def test_all_is_unchanged_and_the_notebook_api_reexports_it():
    assert package.__all__ == EXPORTED
    assert notebook_api.__all__ == EXPORTED
    for name in EXPORTED:
        assert getattr(notebook_api, name) is getattr(package, name)


def test_public_constants_of_the_module_are_still_attributes():
    assert (package.HP_PREFIX, package.RESAMPLING) == ("hp.", ("seeds", "configurations"))
    assert (package.MIN_WEIGHT, package.MIN_ESS) == (0.5, 4.0)


def test_every_function_and_class_has_one_definition():
    """A name that several modules hold is one object (imported from the module that defines it), so no helper
    is copied, and the lru_cache of the pair indices is one cache."""
    holders: dict[str, list] = {}
    for module in MODULES:
        for name, obj in vars(module).items():
            if inspect.isfunction(obj) or inspect.isclass(obj) or hasattr(obj, "cache_info"):
                holders.setdefault(name, []).append(obj)
                assert getattr(importlib.import_module(obj.__module__), name) is obj, f"{module.__name__}.{name}"
    copies = {name: len({id(o) for o in objs}) for name, objs in holders.items() if len({id(o) for o in objs}) > 1}
    assert copies == {}
    assert len(holders["_triu"]) > 1 and hasattr(holders["_triu"][0], "cache_info")


def test_exported_names_are_defined_in_the_submodules():
    for name in EXPORTED:
        obj = getattr(package, name)
        if inspect.isfunction(obj):
            assert obj.__module__.startswith(package.__name__ + "."), name


def test_the_names_the_evaluation_modules_use_resolve():
    """leaderboard.py and suite.py reach the statistics as ``stats.<name>``; each of those names must resolve."""
    root = Path(package.__file__).resolve().parent.parent
    used = set()
    for source in ("leaderboard.py", "suite.py"):
        used |= set(re.findall(r"(?<![\w.])stats\.(\w+)", (root / source).read_text()))
    assert used
    assert [name for name in sorted(used) if not hasattr(package, name)] == []


def test_modules_stay_short():
    for module in [package, *MODULES]:
        lines = Path(module.__file__).read_text().count("\n")
        assert lines <= 600, (module.__name__, lines)
