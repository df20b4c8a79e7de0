"""Every registered measure on every architecture family (tests/unit/measures/families.py: the zoo's plain conv
net, a conv net with BatchNorm, a residual net with BatchNorm, each trained on digits to cross-entropy 0.01): each
gives a finite value or raises ``NotApplicable`` with a reason, nothing else; and none of them changes the model
(its parameters or BatchNorm's running statistics) or runs a BatchNorm layer in training mode, where it would
normalise by the batch instead of the stored statistics and update them (except to collect the statistics of
interpolated weights afresh, on a private copy: ``measures.replicates.batch_statistics``)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import measures
from measures import NotApplicable
from measures.testing import permute_hidden_units
from tests.unit.measures.families import FAMILIES, fitted


def _run_all(family: str) -> dict:
    """Every measure on one Context of ``family``, each inside ``Context.protect`` as the benchmark runs them,
    with a hook that records the mode of every BatchNorm call (in the model and in any copy a measure makes)."""
    f = fitted(family)
    model = f.model
    calls: list[tuple[int, bool, float | None]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _args: calls.append((id(mod), mod.training, mod.momentum)))
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        ctx = f.context(oracle=True)
    finally:
        for h in hooks:
            h.remove()
    before = {k: v.clone() for k, v in ctx._model.state_dict().items()}
    out, changed = {}, {}
    for m in measures.REGISTRY:
        with ctx.protect() as moved:
            try:
                value = m(ctx).value
                out[m.name] = value if math.isfinite(value) else f"not finite: {value}"
            except NotApplicable as why:
                out[m.name] = NotApplicable(str(why))
            except Exception as err:  # noqa: BLE001 — what failed is the test's message
                out[m.name] = f"{type(err).__name__}: {err}"
        if moved:
            changed[m.name] = list(moved)
    after = ctx._model.state_dict()
    own = {id(m) for m in ctx._model.modules()}
    # training mode is allowed only where statistics are collected afresh, on a copy (replicates.batch_statistics)
    wrong = [c for c in calls if c[1] and (c[0] in own or c[2] is not None)]
    return {"values": out, "changed": changed, "train_mode_calls": len(wrong), "bn_calls": len(calls),
            "state_equal": all(torch.equal(before[k], after[k]) for k in before)}


@pytest.fixture(scope="module")
def runs() -> dict:
    return {family: _run_all(family) for family in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_measure_is_finite_or_not_applicable_with_a_reason(runs, family):
    values = runs[family]["values"]
    assert len(values) == len(measures.REGISTRY)
    bad = {name: v for name, v in values.items() if isinstance(v, str)}
    assert not bad, f"{family}: {bad}"
    for name, v in values.items():
        if isinstance(v, NotApplicable):
            assert str(v).strip(), f"{family}: {name} is not applicable without a reason"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_measure_changes_the_model_or_runs_batchnorm_in_training_mode(runs, family):
    run = runs[family]
    assert not run["changed"], f"{family}: measures changed their inputs: {run['changed']}"
    assert run["state_equal"], f"{family}: the parameters or the running statistics changed"
    assert run["train_mode_calls"] == 0, f"{family}: {run['train_mode_calls']} BatchNorm calls in training mode"
    if family != "cnn":
        assert run["bn_calls"] > 0  # the hook saw the measures' forward passes


def test_the_families_are_trained_to_the_target_and_batchnorm_keeps_its_statistics():
    for family in FAMILIES:
        f = fitted(family)
        assert f.history[-1]["train_loss"] <= 0.01
        bns = [m for m in f.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert (family == "cnn") == (not bns)
        for bn in bns:  # running statistics collected in training, stored with the model
            assert int(bn.num_batches_tracked) > 0 and not torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_a_replicate_runs_with_its_own_running_statistics_and_aligns_with_its_batchnorm():
    """A relabelled copy of the conv-BN net (its BatchNorm features permuted with the channels) as the replicate:
    it computes the same function with its own statistics, so the TV distance is 0, and the alignment finds the
    relabelling, so the aligned barrier is 0 while the raw one is not."""
    f = fitted("cnn_bn")
    ctx = f.context()
    ctx._replicates = [permute_hidden_units(f.model, 3)]
    get = lambda name: measures.REGISTRY.get(name)(ctx)  # noqa: E731
    assert get("replicate.tv_distance").value < 1e-6
    aligned, raw = get("replicate.barrier_aligned"), get("replicate.barrier")
    assert abs(aligned.value) < 1e-6 and raw.value > 0.1
    assert aligned.details["bn_statistics"] == "recomputed at every point"


def test_the_barrier_recomputes_batchnorm_statistics_at_each_point():
    """At the line's end the recomputed statistics are the whole training set's mean and (unbiased) variance of the
    conv outputs, and the loss there is that of the net with those statistics."""
    from measures.replicates import batch_statistics
    f = fitted("cnn_bn")
    ctx = f.context()
    stats = batch_statistics(ctx, ctx.params)
    z = f.model.net[0](f.data.x_train).detach()  # (n, channels, h, w): what the first BatchNorm normalises
    assert torch.allclose(stats["net.1.running_mean"], z.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(stats["net.1.running_var"], z.transpose(0, 1).flatten(1).var(1), rtol=1e-4)


def test_replicate_alignment_is_not_applicable_on_a_residual_net():
    f = fitted("resnet")
    with pytest.raises(NotApplicable, match="chain"):
        measures.REGISTRY.get("replicate.barrier_aligned")(f.context())
