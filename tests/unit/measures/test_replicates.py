"""The replicate measures against values computed here by hand: disagreement and TV distance from two linear
models' outputs, the barrier from a loop over the line, the aligned barrier of a relabelled copy (0) and
activation matching against a brute-force search over every permutation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import measures
from measures.replicates import align
from tests.helpers import fit, permute_hidden_units


def _value(name, model, data, replicates):
    return measures.REGISTRY.get(name)(measures.Context(model, train=data, replicates=replicates))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def _mlp(seed: int, width: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3))


@pytest.fixture(scope="module")
def pair(data):
    x, y = data
    return [fit(_mlp(s), x, y, steps=150, lr=0.2) for s in (0, 1)]


def test_disagreement_and_tv_distance_by_hand(data):
    x, y = data
    a, b, c = (nn.Linear(5, 3) for _ in range(3))
    with torch.no_grad():
        pa, pb, pc = (F.softmax(m(x).double(), 1) for m in (a, b, c))
    dis = [(pa.argmax(1) != q.argmax(1)).double().mean().item() for q in (pb, pc)]
    tv = [0.5 * (pa - q).abs().sum(1).mean().item() for q in (pb, pc)]
    got = _value("replicate.disagreement", a, data, [b, c])
    assert got.value == pytest.approx(np.mean(dis), abs=1e-12)
    assert got.details["replicates"] == 2
    assert _value("replicate.tv_distance", a, data, [b, c]).value == pytest.approx(np.mean(tv), rel=1e-9)
    assert _value("replicate.disagreement", a, data, [a]).value == 0.0


def test_barrier_by_a_loop_over_the_line(data, pair):
    x, y = data
    a, b = pair
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    t = np.linspace(0, 1, measures.replicates.PATH_POINTS)
    with torch.no_grad():
        losses = np.array([F.cross_entropy(torch.func.functional_call(
            a, {k: (1 - s) * pa[k] + s * pb[k] for k in pa}, (x,)).double(), y).item() for s in t])
    expected = np.max(losses - ((1 - t) * losses[0] + t * losses[-1]))
    got = _value("replicate.barrier", a, data, [b])
    assert got.value == pytest.approx(expected, rel=1e-6)
    assert got.value > 0.01  # two independently trained networks: a real barrier on the raw line
    assert _value("replicate.barrier", a, data, [a]).value == pytest.approx(0.0, abs=1e-7)  # float32 rounding


def test_a_relabelled_copy_is_aligned_back_to_barrier_zero(data, pair):
    a, _ = pair
    copy = permute_hidden_units(a, 3)
    assert _value("replicate.barrier", a, data, [copy]).value > 0.01  # the raw line crosses a real barrier
    aligned = _value("replicate.barrier_aligned", a, data, [copy])
    assert aligned.value == pytest.approx(0.0, abs=1e-7)
    assert aligned.details["error_barrier"] == 0.0


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
