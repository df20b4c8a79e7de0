"""The tester itself fails where it should: a wrong reference, a measure that uses the seed without declaring
``seeded=True``, a declared invariance that does not hold."""
from __future__ import annotations

import pytest
import torch

from measures import Registry, measure
from measures.testing import ValueCase, check_measure, check_value
from tests.helpers import diagonal_mlp

REG = Registry()


def _add(name, fn, **kw):
    fn.__doc__ = f"{name}.\n\nA test measure."
    measure(name, family="plugin", reference="a test", registry=REG, **kw)(fn)


_add("sum_sq", lambda ctx: sum(float((w ** 2).sum()) for w in ctx.weights), invariances=("permutation",))
_add("noisy", lambda ctx: float(torch.rand(1, generator=ctx.generator("noisy"))))
_add("first_row", lambda ctx: float(ctx.weights[0][0].sum()), invariances=("permutation",))


def _case(name, reference=21.5, **kw):
    return ValueCase(name, diagonal_mlp(((2.0, 1.0, 0.5), (1.0, 3.0, 1.0), (0.5, 1.0, 2.0))), reference,
                     registry=REG, **kw)


def test_a_right_reference_passes_every_check():
    assert check_measure(_case("sum_sq")) == pytest.approx(5.25 + 11 + 5.25)  # Σ of the squared diagonals


def test_a_wrong_reference_fails():
    with pytest.raises(AssertionError, match="the reference is 1.0"):
        check_value(_case("sum_sq", reference=1.0))


def test_a_measure_that_uses_the_seed_must_declare_it():
    with pytest.raises(AssertionError, match="declares no seeded=True"):
        check_measure(_case("noisy", reference=0.5, abs=0.5))  # any draw in [0, 1) passes the value check


def test_a_declared_invariance_that_does_not_hold_fails():
    with pytest.raises(AssertionError, match="declares permutation invariance"):
        check_measure(_case("first_row", reference=2.0))
