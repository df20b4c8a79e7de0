"""The replicate measures beyond their values (tests/values/cases_replicates.py): the replicates counted, no
distance or barrier to the model itself, a real barrier on the raw line that alignment lowers, activation
matching against a brute-force search over every permutation, and the errors."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import measures
from measures.replicates import align
from tests.helpers import fit, permute_hidden_units
from tests.values.cases_replicates import data as make_data
from tests.values.cases_replicates import mlp as _mlp
from tests.values.cases_replicates import trained_pair


def _value(name, model, data, replicates):
    return measures.REGISTRY.get(name)(measures.Context(model, train=data, replicates=replicates))


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def pair(data):
    return trained_pair(*data)


def test_disagreement_counts_the_replicates_and_is_zero_to_the_model_itself(data):
    a, b, c = _mlp(0), _mlp(1), _mlp(2)
    assert _value("replicate.disagreement", a, data, [b, c]).details["replicates"] == 2
    assert _value("replicate.disagreement", a, data, [a]).value == 0.0
    assert _value("replicate.tv_distance", a, data, [a]).value == 0.0


def test_a_real_barrier_between_trained_networks_and_none_to_the_model_itself(data, pair):
    a, b = pair
    assert _value("replicate.barrier", a, data, [b]).value > 0.01  # independently trained: a real barrier
    assert _value("replicate.barrier", a, data, [a]).value == pytest.approx(0.0, abs=1e-7)  # float32 rounding


def test_a_relabelled_copy_has_a_raw_barrier_but_no_aligned_error_barrier(data, pair):
    a, _ = pair
    copy = permute_hidden_units(a, 3)
    assert _value("replicate.barrier", a, data, [copy]).value > 0.01  # the raw line crosses a real barrier
    assert _value("replicate.barrier_aligned", a, data, [copy]).details["error_barrier"] == 0.0


def test_alignment_lowers_the_barrier_between_independent_replicates(data, pair):
    a, b = pair
    assert _value("replicate.barrier_aligned", a, data, [b]).value < _value("replicate.barrier", a, data, [b]).value


def test_activation_matching_finds_the_best_permutation_by_brute_force(data, pair):
    """One hidden layer of 5 units: the chosen permutation maximises the summed correlation over all 120."""
    x, y = data
    torch.manual_seed(0)
    a = fit(nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)), x, y, steps=100, lr=0.2)
    torch.manual_seed(1)
    b = fit(nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)), x, y, steps=100, lr=0.2)
    ctx = measures.Context(a, train=data)
    with torch.no_grad():
        za, zb = torch.relu(a[0](x)).double(), torch.relu(b[0](x)).double()
    corr = np.corrcoef(za.T.numpy(), zb.T.numpy())[:5, 5:]
    best = max(itertools.permutations(range(5)), key=lambda p: sum(corr[i, p[i]] for i in range(5)))
    moved = align(ctx, {k: v.detach() for k, v in b.named_parameters()})
    assert torch.equal(moved["0.weight"], b[0].weight.detach()[list(best)])
    assert torch.equal(moved["2.weight"], b[2].weight.detach()[:, list(best)])
    with torch.no_grad():  # the permuted replicate computes the same function
        same = torch.func.functional_call(b, moved, (x,))
    assert torch.allclose(same, b(x), atol=1e-6)


def test_no_replicate_is_not_applicable(data, pair):
    with pytest.raises(measures.NotApplicable):
        _value("replicate.barrier", pair[0], data, [])


def test_a_replicate_of_another_architecture_is_an_error(data, pair):
    with pytest.raises(ValueError, match="differ in name or shape"):
        _value("replicate.disagreement", pair[0], data, [_mlp(0, width=7)])
