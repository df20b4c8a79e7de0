"""The invariance audit: for every registered measure, does its value survive reparametrisations that leave
the network's function unchanged? Each measure declares its invariances (``@measure(invariances=...)``,
shown in the leaderboard's "invariant" column); here a declared invariance must hold, and an undeclared one
must really fail (so the column is neither optimistic nor modest).

* permutation: the hidden units of every layer relabelled (``tests.helpers.permute_hidden_units``);
* rescaling: every hidden unit's incoming weights and bias multiplied by its own factor in [1/4, 4] and its
  outgoing weights divided by it (``tests.helpers.rescale_relu_units``; Neyshabur et al. 2015, Dinh et al.
  2017);
* batchnorm_scaling: the weights of every layer that feeds a BatchNorm layer multiplied by one factor per layer
  in [1/4, 4], BatchNorm's running statistics and ε rescaled to match (``measures.testing.rescale_batchnorm_inputs``);
  checked on the network with BatchNorm only (on the others it changes nothing);
* units: a change of the units of the weights or of the loss; meaningful for the physics measures, which
  are tested for it in their own files (``UNITS_TESTS``).

The audit runs on three trained networks: the MLP on digits with label noise that every registry-wide property
uses, and (marked slow) the zoo's plain conv net and a conv net with BatchNorm on digits
(tests/unit/measures/families.py).

A seeded measure draws its random vectors per parameter index, so on a reparametrised network it can only be
invariant in distribution: a declared invariance holds within its seed noise for it (``seed_noise``: 5 % or
three times the change a second measure seed makes, whichever is larger; ``EXACT_REL`` for a deterministic
measure), and an undeclared one must move it by more than that same noise (more than ``MOVES_REL`` for a
deterministic measure, in one of two draws of the rescaling factors).
"""
from __future__ import annotations

import ast
import dataclasses
import math

import pytest
import torch

import measures
from measures.registry import INVARIANCES
from measures.testing import rescale_batchnorm_inputs
from tests.helpers import permute_hidden_units, rescale_relu_units
from tests.properties.test_registry import SEEDED, seed_noise

EXACT_REL = 1e-4
MOVES_REL = 1e-3  # an undeclared invariance must move a deterministic value by more than this

# measure → the test (tests/unit/measures/...) that checks its invariance to the units of weights and loss
UNITS_TESTS: dict[str, str] = {
    name: "tests/unit/measures/test_sgd_regularization.py::test_same_network_in_scaled_weights_gives_the_same_values"
    for name in ("sgd.log_penalty_topk", "sgd.noise_anisotropy", "sgd.noise_curvature_exponent", "sgd.noise_to_loss")
}

TRANSFORMS = {
    "permutation": lambda model: permute_hidden_units(model, 0),
    "rescaling": lambda model: rescale_relu_units(model, 0),
    "batchnorm_scaling": lambda model: rescale_batchnorm_inputs(model, 0),
}
# A second draw of the rescaling factors: an undeclared invariance must show in one of the two draws (one draw
# can leave a nearly invariant value almost unchanged), a declared one must hold in both.
SECOND_DRAW = {"rescaling": lambda model: rescale_relu_units(model, 1),
               "batchnorm_scaling": lambda model: rescale_batchnorm_inputs(model, 1)}
ALL = [m.name for m in measures.REGISTRY]
NETS = ["mlp", pytest.param("cnn", marks=pytest.mark.slow), pytest.param("cnn_bn", marks=pytest.mark.slow)]
HAS_BATCHNORM = {"mlp": False, "cnn": False, "cnn_bn": True}


def _network(net: str, trained_digits):
    if net == "mlp":
        return trained_digits
    from tests.unit.measures.families import fitted
    return fitted(net)


def _columns(net: str) -> list[str]:
    return [how for how in TRANSFORMS if how != "batchnorm_scaling" or HAS_BATCHNORM[net]]


def _moved(trained, how: str, transforms=TRANSFORMS):
    """The same trained network (and history) after the reparametrisation, applied to the trained and to
    the initial weights alike."""
    f = transforms[how]
    return dataclasses.replace(trained, model=f(trained.model), init=f(trained.init))


def _value(trained, name: str, seed: int = 0):
    try:
        return measures.REGISTRY.get(name)(trained.context(seed, oracle=True)).value
    except measures.NotApplicable:
        return None


_VALUES: dict[str, dict] = {}


@pytest.fixture
def values(request, trained_digits):
    """Every measure on the network, on each reparametrisation (twice for the rescalings), and, for the seeded
    measures, on the network with measure seed 1 (their noise); computed once per network."""
    net = request.node.callspec.params["net"]
    if net not in _VALUES:
        trained = _network(net, trained_digits)
        out = {"original": {n: _value(trained, n) for n in ALL},
               "seed 1": {n: _value(trained, n, seed=1) for n in ALL if n in SEEDED}}
        if net != "mlp":  # a second noise draw: on small nets a discrete search can land alike for two seeds
            out["seed 2"] = {n: _value(trained, n, seed=2) for n in ALL if n in SEEDED}
        for how in _columns(net):
            out[how] = {n: _value(_moved(trained, how), n) for n in ALL}
            if how in SECOND_DRAW:
                out[how + " 2"] = {n: _value(_moved(trained, how, SECOND_DRAW), n) for n in ALL}
        _VALUES[net] = out
    return _VALUES[net]


@pytest.mark.parametrize("net", NETS)
def test_the_reparametrised_networks_compute_the_same_function(trained_digits, net):
    trained = _network(net, trained_digits)
    x = trained.data.x_train
    for how in _columns(net):
        for transforms in (TRANSFORMS, SECOND_DRAW):
            if how in transforms:
                moved = _moved(trained, how, transforms).model
                assert (moved(x) - trained.model(x)).abs().max() < 1e-4, how


def test_the_batchnorm_scaling_changes_the_weights_it_should():
    from tests.unit.measures.families import fitted
    model = fitted("cnn_bn").model
    moved = rescale_batchnorm_inputs(model, 0)
    assert not torch.equal(moved.net[0].weight, model.net[0].weight)
    assert torch.equal(moved.net[-1].weight, model.net[-1].weight)  # the head feeds no BatchNorm


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


COLUMNS = [pytest.param(net, how, marks=() if net == "mlp" else pytest.mark.slow, id=f"{net}-{how}")
           for net in ("mlp", "cnn", "cnn_bn") for how in _columns(net)]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("net,how", COLUMNS)
def test_declared_invariances_hold_and_undeclared_ones_fail(values, net, name, how):
    before = values["original"][name]
    afters = [values[k][name] for k in (how, how + " 2") if k in values]
    if before is None or any(a is None for a in afters):
        assert before is None and all(a is None for a in afters), "applicability must not depend on the parametrisation"
        return
    assert math.isfinite(before) and all(math.isfinite(a) for a in afters)
    declared = how in measures.REGISTRY.get(name).invariances
    if name in SEEDED:  # invariance in distribution: within the seed's own noise (tests.properties.test_registry)
        tol = max(seed_noise(before, values[k][name]) for k in ("seed 1", "seed 2") if k in values)
        tol /= max(abs(before), 1e-12)
    else:
        tol = EXACT_REL if declared else MOVES_REL
    moved = max(_rel(before, a) for a in afters)
    if declared:
        assert moved <= tol, f"{name} declares {how} invariance but moved {before} → {afters}"
    elif net != "mlp" and name in SEEDED and moved <= tol:
        pytest.skip(f"inconclusive on the small {net}: {name} moved {moved:.3g} under {how}, within its seed noise "
                    f"{tol:.3g}: not declared, and not shown to move on this network")
    else:
        assert moved > tol, (f"{name} does not declare {how} invariance, yet its value stayed {before} → {afters}: "
                             "declare it")


def test_every_invariance_name_is_known_and_units_claims_have_a_test():
    for m in measures.REGISTRY:
        assert m.invariances <= set(INVARIANCES)
    claims = {m.name for m in measures.REGISTRY if "units" in m.invariances}
    assert claims == set(UNITS_TESTS), "every measure that claims units invariance maps to the test that checks it"
    for name, node in UNITS_TESTS.items():  # the test exists, and its module names the measure literally
        path, func = node.split("::")
        tree = ast.parse(open(path).read())
        assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in ast.walk(tree)), node
        named = any(isinstance(n, ast.Constant) and n.value == name for n in ast.walk(tree))
        assert named, f"{path} never names {name!r}"
