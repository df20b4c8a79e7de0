"""Properties over the whole registry, scikit-learn ``test_common`` style: each property is checked on the
set of measures that declares it in ``@measure(...)`` (``seeded``, ``exact_invariances``, ``invariances``,
``needs_label_noise``, ``oracle``), so a new measure joins every check through its own decorator, and a
completeness test makes it fail here until it has a value test of its own.

The measures run on a real trained network (an MLP on digits with label noise, trained by the zoo's trainer
with its per-epoch probes) through the pipeline's own Context construction.
"""
from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

import measures
from benchmark.measuring.context import Trained
from tests.helpers import permute_hidden_units
from tests.values.test_values import CASES

# ---------------------------------------------------------------------------------------------- the sets
# Each set is what the measures declare in @measure(...) (measures/registry.py), read from the registry.
# Randomness: SEEDED measures draw from ctx.generator (Monte-Carlo noise, Lanczos starts, Hutchinson probes,
# SGD continuations; with measures.curvature_samples set, the curvature subset too): bit-identical under the
# same seed. DETERMINISTIC ones draw nothing (at the default settings): the same value under any seed.
SEEDED = {m.name for m in measures.REGISTRY if m.seeded}
DETERMINISTIC = {m.name for m in measures.REGISTRY if not m.seeded}
# Relabelling hidden units (the same function): EXACT measures do not move (up to float summation order);
# IN_DISTRIBUTION ones draw random vectors per parameter index, so only the estimate's distribution is
# invariant (measured here: Hutchinson's trace moves ~4%, everything else < 0.5%).
# VARIANT ones are not invariant by construction (they do not declare it): the raw weight-space line between
# replicates depends on the order of the hidden units (the aligned barrier removes that).
PERMUTATION_VARIANT = {m.name for m in measures.REGISTRY if "permutation" not in m.invariances}
PERMUTATION_EXACT = {m.name for m in measures.REGISTRY if "permutation" in m.invariances and m.exact_invariances}
PERMUTATION_IN_DISTRIBUTION = {m.name for m in measures.REGISTRY
                               if "permutation" in m.invariances and not m.exact_invariances}
IN_DISTRIBUTION_REL = 0.05
# Undefined on some models by design (recorded as not_applicable there): needs mislabeled training samples.
NEEDS_LABEL_NOISE = {m.name for m in measures.REGISTRY if m.needs_label_noise}


# ------------------------------------------------------------------------------------------- the network
@pytest.fixture(scope="module")
def trained(trained_digits):
    return trained_digits  # tests/properties/conftest.py: shared with the invariance audit


def _context(trained, seed=0, permuted=False):
    if not permuted:
        return trained.context(seed, oracle=True)
    moved = dataclasses.replace(trained, model=permute_hidden_units(trained.model, 0),
                                init=permute_hidden_units(trained.init, 0))
    return moved.context(seed, oracle=True)


@pytest.fixture(scope="module")
def values(trained):
    """Every registered measure on fresh Contexts: twice with seed 0, once with seed 1, once permuted."""
    ctxs = [_context(trained), _context(trained), _context(trained, seed=1), _context(trained, permuted=True)]
    return {m.name: [m(c).value for c in ctxs] for m in measures.REGISTRY}


def test_the_network_really_computes_the_same_function_after_permutation(trained):
    permuted = permute_hidden_units(trained.model, 0)
    x = trained.data.x_train
    assert torch.allclose(trained.model(x), permuted(x), atol=1e-5)


# ------------------------------------------------------------------------------------------ properties
@pytest.mark.parametrize("name", measures.REGISTRY.names())
def test_finite(values, name):
    assert all(math.isfinite(v) for v in values[name]), values[name]


@pytest.mark.parametrize("name", sorted(SEEDED | DETERMINISTIC))
def test_bit_identical_under_the_same_seed(values, name):
    a, b, _, _ = values[name]
    assert a == b


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_measures_ignore_the_seed(values, name):
    a, _, other_seed, _ = values[name]
    assert a == other_seed


def test_seeded_measures_really_use_the_seed(values):
    """The continuation and Lanczos ones change with the seed, so SEEDED is not an empty promise. (The σ
    bisections of the PAC-Bayes family can land on the same grid point for two seeds, as they do on this
    network, and ``hessian.trace`` is exact, hence seed-free, on a ReLU MLP: those are not required to move.)"""
    moved = {n for n in SEEDED if values[n][0] != values[n][2]}
    assert {"vf.block_exponent", "vf.block_flatness_mean_log", "sgd.log_penalty_topk", "hessian.top_eig",
            "hessian.logdet_topk"} <= moved


@pytest.mark.parametrize("name", sorted(PERMUTATION_EXACT))
def test_exactly_invariant_to_permuting_hidden_units(values, name):
    a, _, _, p = values[name]
    assert p == pytest.approx(a, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", sorted(PERMUTATION_VARIANT))
def test_permutation_variant_measures_really_move(values, name):
    a, _, _, p = values[name]
    assert abs(p - a) > 1e-3 * abs(a), (a, p)


def seed_noise(a: float, other_seed: float) -> float:
    """The tolerance of an in-distribution comparison: IN_DISTRIBUTION_REL of the value, or three times the
    difference the seed alone makes on the same network, whichever is larger (one draw of a seeded estimate
    against another can differ by about twice its standard deviation)."""
    return max(IN_DISTRIBUTION_REL * abs(a), 3 * abs(a - other_seed), 1e-6)


@pytest.mark.parametrize("name", sorted(PERMUTATION_IN_DISTRIBUTION))
def test_invariant_in_distribution_to_permuting_hidden_units(values, name):
    a, _, other_seed, p = values[name]
    assert abs(p - a) <= seed_noise(a, other_seed)


@pytest.mark.parametrize("name", sorted(NEEDS_LABEL_NOISE))
def test_label_noise_measures_are_not_applicable_on_clean_data(trained, name):
    clean = Trained(trained.hp, trained.model, trained.init, trained.data,
                    [{k: v for k, v in row.items() if "mislabeled" not in k} for row in trained.history])
    with pytest.raises(measures.registry.NotApplicable):
        measures.REGISTRY.get(name)(clean.context())


def test_oracle_measures_are_exactly_those_that_see_test_data():
    for m in measures.REGISTRY:
        assert m.oracle == ("test_data" in m.needs), m.name


def test_every_measure_has_metadata():
    for m in measures.REGISTRY:
        assert m.description and m.reference and m.family in measures.registry.FAMILIES, m.name
        assert m.sign in (1, -1)
        assert len((m.fn.__doc__ or "").strip().splitlines()) >= 2, f"{m.name}: docstring needs the formula"


# ---------------------------------------------------------------------------------------- completeness
@pytest.mark.parametrize("declaration, why", [
    (dict(seeded="yes"), "seeded must be True or False"),
    (dict(needs_label_noise=1), "needs_label_noise must be True or False"),
    (dict(exact_invariances=False), "exact_invariances=False needs seeded=True"),
    (dict(seeded=True, exact_invariances="no"), "exact_invariances must be True, False or None"),
])
def test_invalid_property_declarations_are_refused(declaration, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        measures.measure("x", family="plugin", reference="a test", registry=measures.Registry(), **declaration)


def test_property_declarations_default_to_a_deterministic_exact_measure():
    """A plugin without the property keywords registers as a measure that draws nothing, exactly invariant to
    what it declares, defined on every model; ``seeded=True`` alone means invariant in distribution."""
    reg = measures.Registry()
    for name, kw in (("plain", {}), ("noisy", {"seeded": True}), ("partitioned",
                                                                    {"seeded": True, "exact_invariances": True})):
        measures.measure(name, family="plugin", reference="a test", registry=reg, **kw)(lambda ctx: 1.0)
    got = {m.name: (m.seeded, m.exact_invariances, m.needs_label_noise) for m in reg}
    assert got == {"plain": (False, True, False), "noisy": (True, False, False), "partitioned": (True, True, False)}


CASED = {c.measure for c in CASES}


@pytest.mark.parametrize("name", measures.REGISTRY.names())
def test_every_measure_has_a_value_test(name):
    """Each measure has a value test of its own: a ``measures.testing.ValueCase`` in a tests/values/cases_*.py
    module, collected from the cases themselves (no list to keep), with a reference worked out independently."""
    assert name in CASED, f"{name} has no value test (add a ValueCase to a tests/values/cases_*.py module)"


def test_value_cases_name_only_registered_measures():
    assert CASED <= set(measures.REGISTRY.names())


def test_at_least_35_measures():
    assert len([m for m in measures.REGISTRY if not m.oracle]) >= 35

