"""Tests of measures.phases: order parameters against brute force, phase detection, the trainer hook."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from measures import REGISTRY, Context, MissingInputError
from measures import phases as P
from measures.registry import NotApplicable
from tests.values.cases_phases import (
    alignment_history,
    dipping_amplitude_history,
    rising_amplitude_history,
    spiky_mislabeled_history,
    spiky_mislabeled_loss,
)


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
    # κ from the explicit gradients: 64 // 8 = 8 batches per permutation, so all 6 share one (q = 1)
    u = sum(float(grads[a] @ grads[b]) for a in range(6) for b in range(6) if a != b) / 30
    v = sum(n ** 2 for n in norms) / 6
    s2 = (v - u) / (1 / 8 - 0 / 64)
    assert got["amplitude_sq_corrected"] == pytest.approx((u + s2 / 64) / v, rel=1e-5)


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
    assert out["amplitude_sq_corrected"] == pytest.approx(1.0, abs=1e-6)


def _per_sample_moments(model, x, y):
    """‖G‖² and S² = Σ_i ‖g_i − G‖² / (n − 1) from explicit per-sample gradients."""
    g = torch.stack([_flat_grad(model, x[i:i + 1], y[i:i + 1]) for i in range(len(y))])
    return float(g.mean(0).norm() ** 2), float((g - g.mean(0)).norm(dim=1).pow(2).sum() / (len(y) - 1))


@pytest.mark.parametrize("batch_size", [10, 40])  # 10: all 8 batches from one permutation; 40: 5 + 3
def test_corrected_amplitude_has_no_floor_for_pure_noise(batch_size):
    """Each input appears with both labels and the weights are zero, so the full-batch gradient is exactly 0:
    the minibatch gradients are pure noise. Over 150 seeds the raw R² sits near its floor (≈ 1/M, less the
    finite-population share) and the alignment near −B/(n − B), while κ averages to 0."""
    x = torch.randn(100, 6, generator=torch.Generator().manual_seed(0)).repeat(2, 1)
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    model = nn.Linear(6, 2, bias=False)
    nn.init.zeros_(model.weight)
    assert _per_sample_moments(model, x, y)[0] == pytest.approx(0.0, abs=1e-12)
    runs = [P.order_parameters(model, x, y, batch_size, torch.Generator().manual_seed(s)) for s in range(150)]
    kappa = torch.tensor([r["amplitude_sq_corrected"] for r in runs]).double()
    r2 = torch.tensor([r["amplitude"] ** 2 for r in runs]).double()
    assert abs(float(kappa.mean())) < 3 * float(kappa.std()) / 150 ** 0.5 + 1e-3
    assert float(r2.mean()) > 0.02 and float(r2.mean()) > 10 * abs(float(kappa.mean()))


def test_corrected_amplitude_estimates_the_signal_fraction():
    """With signal and noise, the mean of κ over seeds matches the closed form ‖G‖² / (‖G‖² + S²(1/B − 1/n))
    computed from explicit per-sample gradients, while the raw R² overshoots it by about the floor."""
    model, (x, y) = _net(1), _data(n=120, seed=1)
    g2, s2 = _per_sample_moments(model, x, y)
    target = g2 / (g2 + s2 * (1 / 10 - 1 / 120))
    runs = [P.order_parameters(model, x, y, 10, torch.Generator().manual_seed(s)) for s in range(150)]
    kappa = sum(r["amplitude_sq_corrected"] for r in runs) / len(runs)
    r2 = sum(r["amplitude"] ** 2 for r in runs) / len(runs)
    assert 0.1 < target < 0.9
    assert kappa == pytest.approx(target, abs=0.03)
    assert r2 - target > 0.05


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


def _stacked_tanh_forward(params, x):
    """The (K, B, 5) -> (K, B, 3) forward of K stacked ``_net`` models, written with einsum (no trainer code)."""
    w1, b1, w2, b2 = params
    h = torch.tanh(torch.einsum("kbi,koi->kbo", x, w1) + b1[:, None])
    return torch.einsum("kbi,koi->kbo", h, w2) + b2[:, None]


@pytest.mark.parametrize("subset_samples", [None, 40])
def test_order_parameters_many_equal_one_call_per_member(subset_samples):
    """Three models at once, with and without a mask (one mask marks nothing, so its mislabeled terms are NaN),
    give what ``order_parameters`` gives for each, and draw the same numbers from each generator."""
    nets = [_net(s) for s in range(3)]
    data = [_data(seed=s) for s in range(3)]
    masks = [torch.rand(64, generator=torch.Generator().manual_seed(9)) < 0.3, None, torch.zeros(64, dtype=torch.bool)]
    params = [torch.stack([list(n.parameters())[i].detach() for n in nets]) for i in range(4)]
    members = [P.Member(x, y, torch.Generator().manual_seed(10 + r), masks[r]) for r, (x, y) in enumerate(data)]
    many = P.order_parameters_many(_stacked_tanh_forward, params, members, 8, subset_samples=subset_samples)
    for r, (net, (x, y)) in enumerate(zip(nets, data)):
        gen = torch.Generator().manual_seed(10 + r)
        one = P.order_parameters(net, x, y, 8, gen, mislabeled=masks[r], subset_samples=subset_samples)
        assert many[r].keys() == one.keys()
        for k, v in one.items():
            if math.isnan(v):
                assert math.isnan(many[r][k]), k
            else:
                assert many[r][k] == pytest.approx(v, rel=1e-5, abs=1e-7), (r, k)
        assert torch.equal(members[r].generator.get_state(), gen.get_state())  # the same draws
    assert math.isnan(many[2]["loss_mislabeled"]) and not math.isnan(many[0]["loss_mislabeled"])


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
NAMES = ("phase.final_alignment", "phase.late_amplitude_sq", "phase.exploration_fraction",
         "phase.mislabeled_fit_epoch_fraction")


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
                     "op.alignment": 0.5 if e <= 10 else 0.02, "op.amplitude_sq_corrected": 0.5 if e <= 10 else 0.02,
                     "op.cos_correct_mislabeled": -0.9 if e <= 30 else 0.1,
                     "op.norm_ratio_mislabeled": 2.0})
    return rows


def test_four_phases_on_a_synthetic_history():
    """L_m rises 2.1 → 3.0 over epochs 1–10 (the smoothed rise is 90% done at epoch 10), stays to 30, falls
    from 31 (f(31) = 0.3/2.9 ≥ 0.1) and is 90% down at 51."""
    ph = P.detect_phases(_noisy_history())
    assert ph.starts == {"I": 1, "II": 11, "III": 31, "IV": 51}
    assert ph.labels[:10] == ["I"] * 10 and ph.labels[10:30] == ["II"] * 20
    assert ph.labels[30:50] == ["III"] * 20 and ph.labels[50:] == ["IV"] * 20
    assert ph.details["II.cos_correct_mislabeled"] == pytest.approx(-0.9)
    assert ph.fraction("III") == pytest.approx(20 / 70)
    assert ph.details["peak_mislabeled_loss_epoch"] == 10 and ph.details["rise_done_epoch"] == 10


def test_phases_never_read_the_test_error():
    """Scrambling or removing the test error leaves the detected phases as they were."""
    rows = _noisy_history()
    ref = P.detect_phases(rows)
    scrambled = [dict(r, test_error=float((7 * i) % 13) / 13) for i, r in enumerate(rows)]
    removed = [{k: v for k, v in r.items() if k != "test_error"} for r in rows]
    for other in (P.detect_phases(scrambled), P.detect_phases(removed)):
        assert other.labels == ref.labels and other.starts == ref.starts and other.details == ref.details


def test_phase_fractions_read_the_epoch_column():
    """The same history recorded every 2nd epoch: each row stands for 2 epochs, the fractions are unchanged."""
    rows = [dict(r, epoch=2 * r["epoch"]) for r in _noisy_history()]
    ph = P.detect_phases(rows)
    assert ph.starts == {"I": 2, "II": 22, "III": 62, "IV": 102}
    assert ph.fraction("III") == pytest.approx(20 / 70) and ph.fraction("I") == pytest.approx(10 / 70)
    late = rows[5:]  # epochs 12–140 only: the first row stands for 12 epochs, the others for 2
    assert P.detect_phases(late).fraction("I") == pytest.approx((12 + 2 * 4) / 140)


def test_two_phases_on_a_clean_synthetic_history():
    rows = [{"epoch": e, "op.amplitude_sq_corrected": 0.8 if e <= 5 else 0.05} for e in range(1, 31)]
    ph = P.detect_phases(rows)
    assert ph.starts == {"fast": 1, "exploration": 6}
    assert ph.labels == ["fast"] * 5 + ["exploration"] * 25


def test_history_without_order_parameters_is_a_clear_error():
    rows = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]
    with pytest.raises(MissingInputError, match="op.amplitude_sq_corrected"):
        P.detect_phases(rows)
    for name in NAMES:
        with pytest.raises(MissingInputError, match="order parameters"):
            REGISTRY.get(name)(Context(_net(), history=rows))


def test_registered_phase_measures():
    ctx = Context(_net(), history=_noisy_history())
    assert REGISTRY.get("phase.final_alignment")(ctx).value == pytest.approx(0.02)
    assert REGISTRY.get("phase.late_amplitude_sq")(ctx).value == pytest.approx(0.02)
    assert REGISTRY.get("phase.exploration_fraction")(ctx).value == pytest.approx(60 / 70)
    half = REGISTRY.get("phase.mislabeled_fit_epoch_fraction")(ctx)
    assert half.details["half_fit_epoch"] == 41 and half.value == pytest.approx(41 / 70)
    for name in NAMES:
        m = REGISTRY.get(name)
        assert m.family == "physics" and m.needs == frozenset({"history"}) and not m.oracle


# ----------------------------------------------------------------------------------------- registered values
# (the values on these histories: tests/values/cases_phases.py)
def test_final_alignment_follows_the_last_row():
    rows = alignment_history()
    rows[-1]["op.alignment"] = 0.3175
    assert REGISTRY.get("phase.final_alignment")(Context(_net(), history=rows)).value == 0.3175


def test_exploration_fraction_reads_the_epoch_column():
    """The dipping history of the value case: the fast phase is epochs 1–20 of 40. The same rows labelled
    epochs 11–50 (the first ten not recorded): 1 − 30/50; counting rows would give 20/40 again. An amplitude
    that never falls below its peak level: all of training is fast learning."""
    rows = dipping_amplitude_history()
    out = REGISTRY.get("phase.exploration_fraction")(Context(_net(), history=rows))
    assert out.details == {"fast_epochs": 20, "epochs": 40}
    shifted = [dict(r, epoch=r["epoch"] + 10) for r in rows]
    assert REGISTRY.get("phase.exploration_fraction")(Context(_net(), history=shifted)).value == pytest.approx(0.4)
    rows = [{"epoch": e, "op.amplitude_sq_corrected": 0.5} for e in range(1, 11)]
    assert REGISTRY.get("phase.exploration_fraction")(Context(_net(), history=rows)).value == 0.0


def test_late_amplitude_sq_reads_the_epoch_column():
    """κ(e) = e/100 at epochs 1–40: the last tenth is epochs 37–40 (4 rows). With only epochs 21–40 recorded,
    still epochs 37–40 (the last tenth of the rows would be 39–40, 0.395). One row: that row."""
    rows = rising_amplitude_history()
    out = REGISTRY.get("phase.late_amplitude_sq")(Context(_net(), history=rows))
    assert out.details == {"rows": 4, "from_epoch": 37}
    assert REGISTRY.get("phase.late_amplitude_sq")(Context(_net(), history=rows[20:])).value == pytest.approx(0.385)
    short = [{"epoch": 1, "op.amplitude_sq_corrected": -0.01}]
    assert REGISTRY.get("phase.late_amplitude_sq")(Context(_net(), history=short)).value == -0.01


def test_mislabeled_fit_epoch_fraction_details_and_a_loss_never_fitted():
    """The spiky history of the value case: half-fit at epoch 20, the smoothed peak at epoch 9. A mislabeled
    loss that only rises is never fitted: 1, censored."""
    out = REGISTRY.get("phase.mislabeled_fit_epoch_fraction")(Context(_net(), history=spiky_mislabeled_history()))
    assert out.details == {"half_fit_epoch": 20, "peak_epoch": 9, "epochs": 50}
    rows = [{"epoch": e, "op.loss_mislabeled": 0.1 * e} for e in range(1, 21)]
    never = REGISTRY.get("phase.mislabeled_fit_epoch_fraction")(Context(_net(), history=rows))
    assert never.value == 1.0 and never.details["censored"]


def test_mislabeled_fit_epoch_fraction_reads_the_epoch_column_and_is_not_applicable_on_clean_labels():
    """The spiky history of the value case labelled epochs 11–60 (the first ten not recorded): the half-fit
    row is epoch 30, value 30/60 (counting rows would give 20/50). A history with order parameters but no
    mislabeled subset (clean labels) is NotApplicable, not a failure."""
    rows = [{"epoch": e + 10, "op.loss_mislabeled": spiky_mislabeled_loss(e)} for e in range(1, 51)]
    out = REGISTRY.get("phase.mislabeled_fit_epoch_fraction")(Context(_net(), history=rows))
    assert out.value == pytest.approx(0.5, rel=1e-12)
    assert out.details == {"half_fit_epoch": 30, "peak_epoch": 19, "epochs": 60}
    clean = [{"epoch": e, "op.alignment": 0.1, "op.amplitude_sq_corrected": 0.1} for e in range(1, 11)]
    with pytest.raises(NotApplicable, match="clean labels"):
        REGISTRY.get("phase.mislabeled_fit_epoch_fraction")(Context(_net(), history=clean))
