"""Every value case of ``tests/values/cases_*.py`` through ``measures.testing.check_measure``: the reference value,
the same value under the same seed, a seed-free value for a measure that declares no ``seeded=True``, and the
declared invariances."""
from __future__ import annotations

import importlib
import pkgutil

import pytest

import tests.values
from measures.testing import ValueCase, check_measure


def all_cases() -> list[ValueCase]:
    """The ``CASES`` of every ``cases_*`` module of this package."""
    out: list[ValueCase] = []
    for info in pkgutil.iter_modules(tests.values.__path__):
        if info.name.startswith("cases_"):
            out += importlib.import_module(f"tests.values.{info.name}").CASES
    return out


CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.measure}-{i}" for i, c in enumerate(CASES)])
def test_value_case(case):
    check_measure(case)
