"""Tests of measures.phases: order parameters against brute force, phase detection, the trainer hook."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from measures import REGISTRY, Context, MissingInputError
from measures import phases as P


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def _flat_grad(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
    model.zero_grad(set_to_none=True)
    return g


# ----------------------------------------------------------------------------------------- order parameters
def test_order_parameters_match_explicit_minibatch_gradients():
    model, (x, y) = _net(), _data()
    got = P.order_parameters(model, x, y, 8, torch.Generator().manual_seed(3), n_batches=6)
    idx = P._batches(64, 8, 6, torch.Generator().manual_seed(3))
    ref = _net()
    ref.load_state_dict(model.state_dict())
    grads = [_flat_grad(ref, x[i], y[i]) for i in idx]
    cos = [float(grads[a] @ grads[b] / (grads[a].norm() * grads[b].norm()))
           for a in range(6) for b in range(6) if a < b]
    mean = torch.stack(grads).mean(0)
    norms = [float(g.norm()) for g in grads]
    assert got["alignment"] == pytest.approx(sum(cos) / len(cos), rel=1e-5)
    assert got["amplitude"] == pytest.approx(float(mean.norm()) / (sum(norms) / 6), rel=1e-5)
    assert got["grad_norm"] == pytest.approx(float(mean.norm()), rel=1e-5)
    assert got["batch_grad_norm"] == pytest.approx(sum(norms) / 6, rel=1e-5)


def test_batches_are_disjoint_within_a_permutation_and_wrap_to_new_ones():
    idx = P._batches(20, 6, 5, torch.Generator().manual_seed(0))  # 3 batches per permutation
    assert idx.shape == (5, 6)
    assert len(set(idx[:3].reshape(-1).tolist())) == 18 and len(set(idx[3:].reshape(-1).tolist())) == 12


def test_identical_minibatches_are_perfectly_aligned():
    x = torch.randn(1, 5).repeat(40, 1)
    y = torch.full((40,), 2)
    out = P.order_parameters(_net(), x, y, 4, torch.Generator().manual_seed(0), n_batches=5)
    assert out["alignment"] == pytest.approx(1.0, abs=1e-6)
    assert out["amplitude"] == pytest.approx(1.0, abs=1e-6)


def test_order_parameters_are_functional_and_deterministic():
    model, (x, y) = _net(), _data()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = torch.arange(64) % 4 == 0
    a = P.order_parameters(model, x, y, 8, torch.Generator().manual_seed(1), mislabeled=bad)
    b = P.order_parameters(model, x, y, 8, torch.Generator().manual_seed(1), mislabeled=bad)
    assert a == b and all(math.isfinite(v) for v in a.values())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_mislabeled_quantities_on_a_constructed_case():
    # zero weights: uniform prediction; mislabeled samples are copies of the correct ones with the other label
    model = nn.Linear(3, 2, bias=False)
    nn.init.zeros_(model.weight)
    x = torch.tensor([[1.0, 2.0, -1.0]]).repeat(10, 1)
    y = torch.tensor([0] * 6 + [1] * 4)
    bad = torch.tensor([False] * 6 + [True] * 4)
    out = P.order_parameters(model, x, y, 2, torch.Generator().manual_seed(0), n_batches=3, mislabeled=bad)
    assert out["loss_correct"] == pytest.approx(math.log(2)) and out["loss_mislabeled"] == pytest.approx(math.log(2))
    assert out["cos_correct_mislabeled"] == pytest.approx(-1.0, abs=1e-6)  # (p − e_0)xᵀ = −(p − e_1)xᵀ
    assert out["norm_ratio_mislabeled"] == pytest.approx(1.0, abs=1e-6)
    assert out["error_correct"] == 0.0 and out["error_mislabeled"] == 1.0  # a tie predicts class 0
    assert out["loss_auc"] == pytest.approx(0.5)  # all losses tie


def test_loss_auc_against_pairwise_counting():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(30, generator=g).double()
    m = (torch.randn(20, generator=g) + 1).double()
    m[:3] = c[:3]  # some ties across the subsets
    pairs = [(1.0 if b > a else 0.5 if b == a else 0.0) for a in c.tolist() for b in m.tolist()]
    assert P.loss_auc(c, m) == pytest.approx(sum(pairs) / len(pairs))
    assert P.loss_auc(torch.zeros(4).double(), torch.ones(3).double()) == 1.0


def test_mislabeled_quantities_match_brute_force_on_the_full_set():
    model, (x, y) = _net(2), _data(seed=2)
    bad = torch.rand(64, generator=torch.Generator().manual_seed(4)) < 0.3
    out = P.order_parameters(model, x, y, 8, torch.Generator().manual_seed(0), mislabeled=bad, subset_samples=None)
    gc, gm = _flat_grad(model, x[~bad], y[~bad]), _flat_grad(model, x[bad], y[bad])
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none")
    assert out["loss_correct"] == pytest.approx(float(losses[~bad].mean()), rel=1e-5)
    assert out["loss_mislabeled"] == pytest.approx(float(losses[bad].mean()), rel=1e-5)
    assert out["cos_correct_mislabeled"] == pytest.approx(float(gc @ gm / (gc.norm() * gm.norm())), rel=1e-5)
    assert out["norm_ratio_mislabeled"] == pytest.approx(float(gm.norm() / gc.norm()), rel=1e-5)
    assert out["loss_auc"] == pytest.approx(P.loss_auc(losses[~bad].double(), losses[bad].double()), rel=1e-5)


def test_bad_arguments_are_errors():
    model, (x, y) = _net(), _data()
    with pytest.raises(ValueError, match="at least 2"):
        P.order_parameters(model, x, y, 8, torch.Generator(), n_batches=1)
    with pytest.raises(ValueError, match="batch_size"):
        P.order_parameters(model, x, y, 100, torch.Generator())
    with pytest.raises(ValueError, match="mask has shape"):
        P.order_parameters(model, x, y, 8, torch.Generator(), mislabeled=torch.zeros(63, dtype=torch.bool))
    none = P.order_parameters(model, x, y, 8, torch.Generator(), mislabeled=torch.zeros(64, dtype=torch.bool))
    assert math.isnan(none["loss_mislabeled"]) and math.isnan(none["cos_correct_mislabeled"])
    assert math.isfinite(none["loss_correct"]) and math.isfinite(none["alignment"])


# ----------------------------------------------------------------------------------------- phases
def _noisy_history():
    """I: epochs 1–10 (test error falls), II: 11–30 (flat), III: 31–50 (mislabeled loss falls, test error
    rises), IV: 51–70 (fitted)."""
    rows = []
    for e in range(1, 71):
        if e <= 10:
            test, lm = 0.5 - 0.04 * (e - 1), 2.0 + 0.1 * e  # 0.14 at e = 10, L_m peaks at 3.0
        elif e <= 30:
            test, lm = 0.14, 3.0
        elif e <= 50:
            test, lm = 0.14 + 0.01 * (e - 30), 2.7 - (e - 31) * 2.2 / 19  # f(31) = 0.3/2.9, f(50) = 2.5/2.9
        else:
            test, lm = 0.34, 0.1
        rows.append({"epoch": e, "test_error": test, "op.loss_mislabeled": lm, "op.loss_correct": 0.1,
                     "op.alignment": 0.5 if e <= 10 else 0.02, "op.cos_correct_mislabeled": -0.9 if e <= 30 else 0.1,
                     "op.norm_ratio_mislabeled": 2.0})
    return rows


def test_four_phases_on_a_synthetic_history():
    ph = P.detect_phases(_noisy_history())
    assert ph.starts == {"I": 1, "II": 11, "III": 31, "IV": 51}
    assert ph.labels[:10] == ["I"] * 10 and ph.labels[10:30] == ["II"] * 20
    assert ph.labels[30:50] == ["III"] * 20 and ph.labels[50:] == ["IV"] * 20
    assert ph.details["II.cos_correct_mislabeled"] == pytest.approx(-0.9)
    assert ph.fraction("III") == pytest.approx(20 / 70)


def test_two_phases_on_a_clean_synthetic_history():
    rows = [{"epoch": e, "op.alignment": 0.8 if e <= 5 else 0.05} for e in range(1, 31)]
    ph = P.detect_phases(rows)
    assert ph.starts == {"fast": 1, "exploration": 6}
    assert ph.labels == ["fast"] * 5 + ["exploration"] * 25


def test_history_without_order_parameters_is_a_clear_error():
    rows = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]
    with pytest.raises(MissingInputError, match="op.alignment"):
        P.detect_phases(rows)
    for name in ("phase.final_alignment", "phase.exploration_fraction", "phase.mislabeled_fit_epoch_fraction"):
        with pytest.raises(MissingInputError, match="order parameters"):
            REGISTRY.get(name)(Context(_net(), history=rows))


def test_registered_phase_measures():
    ctx = Context(_net(), history=_noisy_history())
    assert REGISTRY.get("phase.final_alignment")(ctx).value == pytest.approx(0.02)
    assert REGISTRY.get("phase.exploration_fraction")(ctx).value == pytest.approx(60 / 70)
    half = REGISTRY.get("phase.mislabeled_fit_epoch_fraction")(ctx)
    assert half.details["half_fit_epoch"] == 41 and half.value == pytest.approx(41 / 70)
    for name in ("phase.final_alignment", "phase.exploration_fraction", "phase.mislabeled_fit_epoch_fraction"):
        m = REGISTRY.get(name)
        assert m.family == "physics" and m.needs == frozenset({"history"}) and not m.oracle


# ----------------------------------------------------------------------------------------- registered values
def test_final_alignment_is_the_last_rows_alignment():
    """Every epoch has a different alignment, and the last one differs from the mean, median, maximum and
    minimum of the history and of its last few rows."""
    align = [0.9, 0.7, 0.5, 0.33, 0.21, 0.14, 0.27, 0.08]
    rows = [{"epoch": e, "op.alignment": v} for e, v in enumerate(align, 1)]
    assert REGISTRY.get("phase.final_alignment")(Context(_net(), history=rows)).value == 0.08
    rows[-1]["op.alignment"] = 0.3175
    assert REGISTRY.get("phase.final_alignment")(Context(_net(), history=rows)).value == 0.3175


def test_exploration_fraction_on_a_linearly_decaying_alignment():
    """A = 0.3, 0.6, 0.9 at epochs 1–3, then falls by 0.02 per epoch to 0.16 at epoch 40. Late level: the median
    of the last quarter (epochs 31–40), ½(A(35) + A(36)) = 0.25; midpoint ½(0.9 + 0.25) = 0.575, first reached
    at epoch 20 (A(19) = 0.58, A(20) = 0.56). Fast learning: epochs 1–19, so the fraction is 21/40. (The last
    half as the late window would give epoch 17, the minimum epoch 22, half the maximum epoch 26.)"""
    def a(e):
        return 0.3 * e if e <= 3 else 0.9 - 0.02 * (e - 3)

    assert 0.5 * (a(35) + a(36)) == pytest.approx(0.25) and a(19) > 0.575 >= a(20)
    rows = [{"epoch": e, "op.alignment": a(e)} for e in range(1, 41)]
    out = REGISTRY.get("phase.exploration_fraction")(Context(_net(), history=rows))
    assert out.value == pytest.approx(21 / 40, rel=1e-12)
    assert out.details == {"fast_epochs": 19, "epochs": 40}
    # an alignment that never falls to the midpoint: all of training is fast learning
    rows = [{"epoch": e, "op.alignment": 0.5} for e in range(1, 11)]
    assert REGISTRY.get("phase.exploration_fraction")(Context(_net(), history=rows)).value == 0.0


def test_mislabeled_fit_epoch_fraction_with_a_spike_the_median_removes():
    """L_m rises 1.1 → 2.0 (epochs 1–10), falls by 0.1 per epoch to 0.2 (epoch 28) and stays there to epoch
    50, with a one-epoch spike to 5.0 at epoch 16. The 5-epoch running median turns the peak into 1.9 (first at
    epoch 9) and removes the spike; the final level is 0.2, so half the drop (0.85) is done when the smoothed
    L_m ≤ 1.05: at epoch 20 (1.0; epoch 19 has 1.1). Value 20/50. Without the median the spike would be the
    peak (value 17/50)."""
    def lm(e):
        if e == 16:
            return 5.0
        return 1.0 + 0.1 * e if e <= 10 else max(2.0 - 0.1 * (e - 10), 0.2)

    rows = [{"epoch": e, "op.loss_mislabeled": lm(e)} for e in range(1, 51)]
    out = REGISTRY.get("phase.mislabeled_fit_epoch_fraction")(Context(_net(), history=rows))
    assert out.value == pytest.approx(20 / 50, rel=1e-12)
    assert out.details == {"half_fit_epoch": 20, "peak_epoch": 9, "epochs": 50}
    # a mislabeled loss that only rises is never fitted: 1, censored
    rows = [{"epoch": e, "op.loss_mislabeled": 0.1 * e} for e in range(1, 21)]
    never = REGISTRY.get("phase.mislabeled_fit_epoch_fraction")(Context(_net(), history=rows))
    assert never.value == 1.0 and never.details["censored"]
