"""Grouped Contexts (``benchmark.measuring.many``): a shared intermediate with a many-model form is computed once
for the whole group, each model reads its own value (equal to the one it computes alone), the time is attributed
to the models that read it, and a measure still sees only what it declares."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from benchmark.measuring.jobs import compute
from benchmark.measuring.many import Member, costs
from measures import Context, Registry, measure
from measures import flatness as fl
from measures.flatness import block

SETTINGS = fl.BlockSettings(size=8, blocks=2, steps=120, warmup=15)


def _members(cls=Member, seeds=range(3)) -> list[Context]:
    out = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                              nn.Linear(16, 4))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        x, y = torch.randn(300, 1, 12, generator=g), torch.randint(0, 4, (300,), generator=g)
        out.append(cls(model, train=(x, y), hparams={"optimizer.lr": 0.05, "train.batch_size": 16}))
    return out


def test_the_many_form_is_declared_on_the_helper_not_registered_in_the_library():
    assert block._block_snapshots.many is block._block_snapshots_many


def test_grouped_contexts_share_the_stacked_value_and_its_cost():
    """The first grouped Context's call computes the value of all, each reads its own, the time is split (``lent``
    on the caller, ``charged`` on the others when they read it), and the value equals the one computed alone; a
    plain ``measures.Context`` computes alone."""
    grouped, alone = _members(), _members(Context)
    Member.group(grouped)
    first = grouped[0].shared(block._block_snapshots, SETTINGS)
    assert grouped[0].lent > 0 and grouped[0].charged == 0
    assert all(c.charged == 0 and c.lent == 0 for c in grouped[1:])
    for g, a in zip(grouped, alone):
        torch.testing.assert_close(g.shared(block._block_snapshots, SETTINGS).snapshots,
                                   a.shared(block._block_snapshots, SETTINGS).snapshots, rtol=1e-4, atol=1e-5)
        assert fl.block_variance_flatness(g, SETTINGS).fit.psi == pytest.approx(
            fl.block_variance_flatness(a, SETTINGS).fit.psi, rel=1e-3)
    share = grouped[1].charged
    assert share > 0 and grouped[0].lent == pytest.approx(2 * share, rel=1e-6)
    assert grouped[0].shared(block._block_snapshots, SETTINGS) is first
    assert costs(grouped[1]) == (0.0, share) and costs(alone[0]) == (0.0, 0.0)
    grouped[0].leave()
    assert grouped[0] not in grouped[1]._group and len(grouped[1]._group) == 2
    assert not grouped[0].has_shared(Context.shared_key(block._block_snapshots, SETTINGS))


def test_a_value_computed_for_the_group_rests_on_what_it_read():
    """The many form read each member's hyperparameters: a measure of a peer that does not declare them cannot read
    the value the caller's measure computed for it."""
    reg = Registry()
    for name, needs in (("declared", ("model", "train_data", "hparams")), ("undeclared", ("model", "train_data"))):
        def fn(ctx):
            return float(ctx.shared(block._block_snapshots, SETTINGS).snapshots.sum())
        fn.__doc__ = "The sum of the continued snapshots.\n\nA test measure."
        measure(name, needs=needs, family="plugin", reference="a test", registry=reg)(fn)
    grouped = _members(seeds=range(2))
    Member.group(grouped)
    assert compute(reg.get("declared"), grouped[0], grouped[0], None)[1] == "ok"
    assert grouped[0].lent > 0 and grouped[1].has_shared(Context.shared_key(block._block_snapshots, SETTINGS))
    value, status, error, _, seconds = compute(reg.get("undeclared"), grouped[1], grouped[1], None)
    assert (value, status) == (None, "failed")
    assert error == ("UndeclaredInputError: measure 'undeclared' uses ctx.shared(_block_snapshots), which rests on "
                     "the hyperparameters, but does not declare needs=(..., 'hparams')")


def test_the_recorded_seconds_are_the_models_own_share():
    """``compute``: the caller's seconds leave out what it lent, a peer's include what it was charged."""
    reg = Registry()

    def fn(ctx):
        return float(ctx.shared(block._block_snapshots, SETTINGS).snapshots.sum())
    fn.__doc__ = "The sum of the continued snapshots.\n\nA test measure."
    measure("snaps", needs=("model", "train_data", "hparams"), family="plugin", reference="a test", registry=reg)(fn)
    grouped = _members(seeds=range(2))
    Member.group(grouped)
    start = time.perf_counter()
    *_, first = compute(reg.get("snaps"), grouped[0], grouped[0], None)
    total = time.perf_counter() - start
    *_, second = compute(reg.get("snaps"), grouped[1], grouped[1], None)
    assert grouped[0].lent > 0 and 0 < first <= total - grouped[0].lent  # it computed both, and keeps its half
    assert grouped[1].charged > 0 and second >= grouped[1].charged  # the peer pays for its half when it reads it
