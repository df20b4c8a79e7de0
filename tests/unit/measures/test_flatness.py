"""Tests of measures.flatness (variance–flatness, Feng & Tu PNAS 2021): closed-form line scans, the snapshot
PCA on an Ornstein–Uhlenbeck process, the power-law fit with censoring, the continued SGD, the batched
loss paths, the registered measures, and the quick reproduction."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.reproduce import vf_analysis as vfa
from measures import REGISTRY, Context
from measures import flatness as fl
from measures.flatness import block, landscape
from measures.registry import NotApplicable
from tests.values import cases_flatness as vf_case

E = math.e


def _quadratic_line(loss0: float, lam_left: torch.Tensor, lam_right: torch.Tensor):
    """L_i(δ) = L₀ + ½ λ δ², with λ = lam_left[i] for δ < 0 and lam_right[i] for δ > 0."""
    def loss(idx, delta):
        lam = torch.where(delta < 0, lam_left[idx], lam_right[idx]).double()
        return loss0 + 0.5 * lam * delta.double() ** 2
    return loss


# ------------------------------------------------------------------------------------------- flatness scan
def test_quadratic_flatness_closed_form():
    """L₀ + ½λδ² crosses e·L₀ at δ = √(2(e−1)L₀/λ) on each side: F = 2√(2(e−1)L₀/λ)."""
    loss0 = 0.013
    lam = torch.tensor([1e-3, 0.07, 1.0, 33.0, 4e3], dtype=torch.float64)
    scan = fl.flatness_scan(_quadratic_line(loss0, lam, lam), len(lam), loss0, start=1e-2, max_delta=1e4)
    expected = 2 * torch.sqrt(2 * (E - 1) * loss0 / lam)
    torch.testing.assert_close(scan.flatness, expected, rtol=1e-3, atol=0)
    assert scan.n_censored == 0
    # batched: one loss call per round for all (direction, side) pairs, a handful of rounds
    assert scan.n_rounds <= 12 and scan.n_evals <= 2 * len(lam) * scan.n_rounds


def test_a_direction_without_a_finite_start_is_censored_without_being_evaluated():
    loss0, lam = 0.013, torch.tensor([1.0, 33.0], dtype=torch.float64)
    seen = []
    line = _quadratic_line(loss0, lam, lam)
    scan = fl.flatness_scan(lambda idx, d: seen.extend(idx.tolist()) or line(idx, d), 2, loss0,
                            start=torch.tensor([math.nan, 1e-2]), max_delta=1e4)
    assert 0 not in seen and math.isnan(scan.flatness[0]) and scan.n_unresolved == 0
    torch.testing.assert_close(scan.flatness[1], 2 * torch.sqrt(2 * (E - 1) * loss0 / lam[1]), rtol=1e-3, atol=0)


def test_a_diverged_continuation_is_not_applicable():
    ctx = _trained_tanh_ctx()
    r = ctx.shared(fl._block, fl.BLOCK)
    snaps = r.snapshots.clone()
    snaps[7:, 3] = math.inf
    with pytest.raises(NotApplicable, match="diverged: the weights of 2.weight are not finite from recorded step 8"):
        block.block_fit(ctx, r.layer, r.index, snaps)


def test_asymmetric_sides_and_threshold():
    loss0 = 0.5
    left, right = torch.tensor([2.0, 0.5]), torch.tensor([8.0, 0.5])
    scan = fl.flatness_scan(_quadratic_line(loss0, left, right), 2, loss0, start=0.1, max_delta=100.0,
                            threshold=2.0)
    torch.testing.assert_close(scan.left, torch.sqrt(2 * loss0 / left.double()), rtol=1e-3, atol=0)
    torch.testing.assert_close(scan.right, torch.sqrt(2 * loss0 / right.double()), rtol=1e-3, atol=0)


def test_censored_sides_are_reported_not_filled():
    """A side that never crosses within the range is censored (NaN), counted, and its F is NaN."""
    loss0 = 0.1
    left = torch.tensor([1.0, 0.0, 0.0])  # direction 1: flat on the left; direction 2: flat both ways
    right = torch.tensor([1.0, 1.0, 0.0])
    scan = fl.flatness_scan(_quadratic_line(loss0, left, right), 3, loss0, start=0.01, max_delta=50.0)
    assert scan.censored_left.tolist() == [False, True, True]
    assert scan.censored_right.tolist() == [False, False, True]
    assert scan.n_censored == 3
    assert math.isfinite(scan.flatness[0]) and scan.flatness[1:].isnan().all()
    assert math.isfinite(scan.right[1]) and math.isnan(scan.left[1])


def test_a_scan_that_runs_out_of_rounds_censors_and_counts_the_sides_it_did_not_resolve():
    loss0 = 0.1
    lam = torch.tensor([1.0, 1e-6], dtype=torch.float64)
    scan = fl.flatness_scan(_quadratic_line(loss0, lam, lam), 2, loss0, start=1e-3, max_delta=1e6, max_rounds=2)
    assert scan.n_rounds == 2 and scan.n_unresolved == 4
    assert scan.censored_left.all() and scan.censored_right.all() and scan.flatness.isnan().all()


def test_a_kinked_loss_is_resolved_within_the_round_budget():
    """q = log δ below the crossing at δ = 1 and 10⁴·log δ above it (a kink, where secant steps are poor)."""
    loss0 = 0.01

    def line(idx, delta):
        s = delta.abs().log()
        q = torch.where(s < 0, s, 1e4 * s).clamp(max=600.0)
        return loss0 + (E - 1) * loss0 * torch.exp(q)

    scan = fl.flatness_scan(line, 1, loss0, start=1e-3, max_delta=1e3)
    torch.testing.assert_close(scan.flatness, torch.tensor([2.0], dtype=torch.float64), rtol=2e-3, atol=0)
    assert scan.n_unresolved == 0 and scan.n_rounds <= 40


def test_too_sharp_below_min_delta_is_censored():
    loss0 = 0.1
    lam = torch.tensor([1e12])
    scan = fl.flatness_scan(_quadratic_line(loss0, lam, lam), 1, loss0, start=1.0, max_delta=10.0,
                            min_delta=1e-4)
    assert scan.censored_left.all() and scan.censored_right.all()


def test_non_positive_reference_loss_is_an_error():
    with pytest.raises(ValueError, match="L0 > 0"):
        fl.flatness_scan(_quadratic_line(0.0, torch.ones(1), torch.ones(1)), 1, 0.0, start=1.0, max_delta=2.0)


def test_end_to_end_closed_form_through_a_model():
    """One sample x = 1 of class 0, logits (w_a·x, w_b·x) with w_b = 0: L(w_a) = softplus(−w_a). Along
    p = (1, 0) the loss falls to the right (censored) and reaches e·L₀ on the left at
    δ_l = w_a + log(exp(e·L₀) − 1)."""
    model = nn.Linear(1, 2, bias=False)
    w_a = 1.3
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[w_a], [0.0]]))
    ctx = Context(model, train=(torch.ones(1, 1), torch.zeros(1, dtype=torch.long)))
    loss0 = F.softplus(torch.tensor(-w_a)).item()
    assert ctx.train_loss == pytest.approx(loss0, rel=1e-6)
    w0 = ctx.params["weight"].reshape(-1)
    p = torch.tensor([[1.0, 0.0]])
    for fast in (True, False):
        line = fl.line_loss(ctx, ["weight"], w0, p, fast=fast)
        assert line.kind == ("layer" if fast else "vmap")
        scan = fl.flatness_scan(line, 1, loss0, start=0.05, max_delta=30.0)
        assert scan.left.item() == pytest.approx(w_a + math.log(math.expm1(E * loss0)), rel=1e-3)
        assert scan.censored_right.item() and not scan.censored_left.item()


# ------------------------------------------------------------------------------------------- PCA
def _ou_snapshots(n_steps: int, stds: np.ndarray, a: np.ndarray, seed: int):
    """AR(1) (a discretised OU process) θ_{t+1} = a θ_t + s ξ in a random rotated basis plus an offset.
    Stationary variance along rotated axis j: s_j²/(1 − a_j²) = stds_j²."""
    rng = np.random.default_rng(seed)
    n = len(stds)
    rot, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = stds * np.sqrt(1 - a ** 2)
    theta = rng.standard_normal(n) * stds  # start in the stationary state
    offset = rng.standard_normal(n)
    for _ in range(n_steps):
        theta = a * theta + s * rng.standard_normal(n)
        yield torch.from_numpy(offset + rot @ theta).float(), rot


def test_pca_recovers_ornstein_uhlenbeck_variances():
    stds = np.array([2.0, 1.0, 0.5, 0.25, 0.1, 0.05])
    a = np.array([0.5, 0.3, 0.6, 0.2, 0.4, 0.1])
    snaps, rots = zip(*_ou_snapshots(20000, stds, a, seed=1))
    pca = fl.snapshot_pca(iter(snaps), len(snaps), 6)
    assert pca.method == "covariance"
    np.testing.assert_allclose(pca.variances.numpy(), stds ** 2, rtol=0.08)
    cos = np.abs(pca.components.numpy() @ rots[0])  # (PC, true axis)
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=0.02)
    assert pca.total_variance == pytest.approx(float(pca.spectrum.sum()), rel=1e-9)


def test_pca_methods_agree():
    """covariance (N ≤ T), gram (T < N) and randomised SVD give the same leading PCs of one data set."""
    g = torch.Generator().manual_seed(3)
    scales = torch.logspace(0, -2, 40)
    snaps = [torch.randn(40, generator=g) * scales + 5.0 for _ in range(300)]
    res = {m: fl.snapshot_pca(iter(snaps), 300, 8, method=m, generator=torch.Generator().manual_seed(0))
           for m in ("covariance", "gram", "lowrank")}
    ref = res["covariance"]
    for m in ("gram", "lowrank"):
        torch.testing.assert_close(res[m].variances, ref.variances, rtol=2e-3, atol=0)
        cos = (res[m].components @ ref.components.T).abs().diagonal()
        assert (cos > 0.99).all(), m
        assert res[m].total_variance == pytest.approx(ref.total_variance, rel=1e-4)
        torch.testing.assert_close(res[m].mean, ref.mean, rtol=0, atol=1e-5)
    assert fl.snapshot_pca(iter(snaps[:30]), 30, 8).method == "gram"


# ------------------------------------------------------------------------------------------- fit
def test_power_law_fit_recovers_psi():
    rng = np.random.default_rng(0)
    f = np.exp(rng.uniform(-1, 2, 60))
    var = 0.3 * f ** -3.5 * np.exp(0.1 * rng.standard_normal(60))
    fit = fl.power_law_fit(var, f)
    assert fit.psi == pytest.approx(3.5, abs=0.1)
    assert fit.r2 > 0.98 and fit.n == 60
    f[:7] = np.nan  # censored PCs are dropped from the fit and counted out of n
    assert fl.power_law_fit(var, f).n == 53
    assert math.isnan(fl.power_law_fit(var[:2], f[:2]).psi)


def test_scan_plus_fit_recovers_psi_and_excludes_censored():
    """Synthetic PCs with σ_i² = c·F_i^(−ψ) (noisy) and quadratic profiles of those widths, plus fully flat
    PCs that must be censored: the scan+fit pipeline gives back ψ, and counts the censored sides."""
    rng = np.random.default_rng(1)
    psi, loss0, k = 2.7, 0.02, 25
    f_true = np.exp(rng.uniform(-2, 1, k))
    var = 0.01 * f_true ** -psi * np.exp(0.05 * rng.standard_normal(k))
    lam = 8 * (E - 1) * loss0 / f_true ** 2  # F = 2√(2(e−1)L₀/λ)
    lam[[3, 11]] = 0.0  # flat: never crosses
    lam_t = torch.from_numpy(lam)
    scan = fl.flatness_scan(_quadratic_line(loss0, lam_t, lam_t), k, loss0, start=torch.from_numpy(np.sqrt(var)),
                            max_delta=1e3)
    assert scan.n_censored == 4
    fit = fl.power_law_fit(var, scan.flatness.numpy())
    assert fit.n == k - 2
    assert fit.psi == pytest.approx(psi, abs=0.1)


# ------------------------------------------------------------------------------------------- model paths
def _mlp(seed=0, width=16, n=300, d_in=12, classes=4, bias=True):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d_in, width, bias=bias), nn.ReLU(),
                          nn.Linear(width, width, bias=bias), nn.ReLU(), nn.Linear(width, classes, bias=bias))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(n, 1, d_in, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return model, x, y


def _ctx(seed=0, **kw):
    model, x, y = _mlp(seed, **kw)
    return Context(model, train=(x, y), hparams={"optimizer.lr": 0.05, "train.batch_size": 16}, seed=seed,
                   chunk=128)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_continuation_follows_torch_optim_after_the_warmup(name):
    """The continuation is the model's own optimizer with a warmed-up state: the recorded snapshots are the
    steps warmup+1 … warmup+T of torch.optim's SGD / heavy-ball / Adam (with weight decay) on the same seeded
    batches, and the Context's own parameters are untouched."""
    model, x, y = _mlp(2)
    hp = {"optimizer.name": name, "optimizer.lr": 0.02, "optimizer.momentum": 0.8, "optimizer.weight_decay": 0.01,
          "train.batch_size": 16}
    ctx = Context(model, train=(x, y), hparams=hp)
    before = {k: v.clone() for k, v in ctx.params.items()}
    assert fl.middle_hidden_layer(ctx).weight == "3.weight"
    warmup, steps = 30, 25
    snaps = list(fl.optimizer_snapshots(ctx, ("3.weight",), steps, torch.Generator().manual_seed(7), warmup=warmup))
    ref = copy.deepcopy(model)
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.02, weight_decay=0.01),
           "momentum": lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.8, weight_decay=0.01),
           "adam": lambda p: torch.optim.Adam(p, lr=0.02, weight_decay=0.01)}[name](ref.parameters())
    gen = torch.Generator().manual_seed(7)
    perm, pos = None, len(y)
    for t in range(warmup + steps):
        if pos >= len(y):
            perm, pos = torch.randperm(len(y), generator=gen), 0
        idx = perm[pos:pos + 16]
        pos += 16
        opt.zero_grad()
        F.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()
        if t >= warmup:
            torch.testing.assert_close(snaps[t - warmup], ref[3].weight.detach().reshape(-1), rtol=1e-5, atol=1e-6)
    for k, v in ctx.params.items():
        assert torch.equal(v, before[k])


def test_an_optimizer_not_covered_is_not_applicable_and_so_is_a_model_without_hidden_to_hidden_layer():
    model, x, y = _mlp(2)
    ctx = Context(model, train=(x, y), hparams={"optimizer.name": "lbfgs", "optimizer.lr": 0.1,
                                                "train.batch_size": 16})
    with pytest.raises(NotApplicable, match="lbfgs"):
        REGISTRY.get("vf.block_exponent")(ctx)
    shallow = Context(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)), train=(x.flatten(1), y),
                      hparams={"optimizer.lr": 0.1, "train.batch_size": 16})
    with pytest.raises(NotApplicable, match="hidden-to-hidden"):
        REGISTRY.get("vf.block_exponent")(shallow)


def test_middle_hidden_layer_of_deeper_nets():
    def names(depth):
        layers = [nn.Linear(4, 4) for _ in range(depth + 1)]
        return fl.middle_hidden_layer(Context(nn.Sequential(*layers))).weight
    assert [names(d) for d in (2, 3, 4)] == ["1.weight", "1.weight", "2.weight"]


def test_layer_path_matches_vmap_path_and_direct_losses():
    ctx = _ctx(4)
    names = ("3.weight", "3.bias")
    w0 = torch.cat([ctx.params[k].reshape(-1) for k in names])
    dirs = torch.randn(5, w0.numel(), generator=torch.Generator().manual_seed(0))
    dirs /= dirs.norm(dim=1, keepdim=True)
    fast = fl.line_loss(ctx, names, w0, dirs)
    slow = fl.line_loss(ctx, names, w0, dirs, fast=False)
    assert (fast.kind, slow.kind) == ("layer", "vmap")
    idx = torch.tensor([0, 1, 1, 4, 2, 3])
    delta = torch.tensor([0.3, -1.0, 2.0, 0.0, -0.01, 5.0])
    direct = torch.stack([ctx.loss({**ctx.params, **landscape._split(ctx, names, w0 + d * dirs[i])})
                          for i, d in zip(idx, delta)]).double()
    torch.testing.assert_close(fast(idx, delta), direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slow(idx, delta), direct, rtol=1e-5, atol=1e-6)


def _direct_losses(ctx, names, w0, dirs, idx, delta):
    return torch.stack([ctx.loss({**ctx.params, **landscape._split(ctx, names, w0 + d * dirs[i])})
                        for i, d in zip(idx, delta)]).double()


def test_layer_path_on_a_conv_layer():
    g = torch.Generator().manual_seed(8)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    ctx = Context(model, train=(x, y))
    names = ("2.weight", "2.bias")
    w0 = torch.cat([ctx.params[k].reshape(-1) for k in names])
    dirs = torch.randn(3, w0.numel(), generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    line = fl.line_loss(ctx, names, w0, dirs)
    assert line.kind == "layer"
    idx, delta = torch.tensor([0, 2, 1]), torch.tensor([0.5, -2.0, 1.0])
    torch.testing.assert_close(line(idx, delta), _direct_losses(ctx, names, w0, dirs, idx, delta),
                               rtol=1e-5, atol=1e-6)


class _PassThrough(nn.Module):
    """A parameter-free module that returns its input in eval mode, as the zoo's dropout does."""

    def forward(self, x):
        return x * 2.0 if self.training else x


def _block_dirs(shape, blocks, g, bias=False):
    """Unit directions, each moving the rows ``rows`` × columns ``cols`` of a weight (and, with ``bias``, those
    rows' biases), in the flat space of (weight[, bias])."""
    out_dim, in_dim = shape
    dirs = []
    for rows, cols in blocks:
        w = torch.zeros(shape)
        w[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = torch.randn(len(rows), len(cols), generator=g)
        parts = [w.reshape(-1)]
        if bias:
            b = torch.zeros(out_dim)
            b[torch.tensor(rows)] = torch.randn(len(rows), generator=g)
            parts.append(b)
        d = torch.cat(parts)
        dirs.append(d / d.norm())
    return torch.stack(dirs)


@pytest.mark.parametrize("bias", [False, True])
def test_sparse_path_on_block_directions_matches_the_direct_loss(bias):
    """Directions that move a few rows of a hidden Linear layer take the compact path: only those units of
    z = Wa + b change, and the next layer's output is y₀ + W₂[:, S](φ(z_S(δ)) − φ(z₀,S)) through ReLU and an
    eval-mode pass-through module; the layers above (ReLU, Linear) are the model's own. Blocks of 2, 3 and
    1 rows (padded to one width) and every probe equal the direct loss, and the dense layer path."""
    g = torch.Generator().manual_seed(11)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), _PassThrough(),
                          nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    x, y = torch.randn(300, 6, generator=g), torch.randint(0, 4, (300,), generator=g)
    ctx = Context(model, train=(x, y), chunk=128)
    names = ("2.weight", "2.bias") if bias else ("2.weight",)
    w0 = torch.cat([ctx.params[k].reshape(-1) for k in names])
    dirs = _block_dirs((16, 16), [([1, 5], [0, 3, 9]), ([2, 7, 15], [4, 5]), ([0], [1, 2, 3, 4])], g, bias)
    line = fl.line_loss(ctx, names, w0, dirs)
    assert line.kind == "sparse"
    assert line.units.shape == (3, 3)
    idx = torch.tensor([0, 1, 2, 2, 1, 0])
    delta = torch.tensor([0.3, -1.5, 4.0, -8.0, 0.0, 12.0])
    direct = _direct_losses(ctx, names, w0, dirs, idx, delta)
    torch.testing.assert_close(line(idx, delta), direct, rtol=1e-5, atol=1e-6)
    dense = landscape._LayerLine(ctx, ctx.layers[1], names, w0, dirs)
    torch.testing.assert_close(line(idx, delta), dense(idx, delta), rtol=1e-5, atol=1e-6)


def test_sparse_path_needs_few_units_and_per_unit_modules():
    """Directions that move most units, or a module between the two layers that mixes units (LayerNorm), keep
    the dense layer path, with the same losses."""
    g = torch.Generator().manual_seed(12)
    x, y = torch.randn(200, 6, generator=g), torch.randint(0, 4, (200,), generator=g)
    few = _block_dirs((16, 16), [([1, 5], [0, 3])], g)
    many = _block_dirs((16, 16), [(list(range(8)), [0, 3])], g)
    for between, dirs, kind in ((nn.ReLU(), few, "sparse"), (nn.ReLU(), many, "layer"),
                                (nn.LayerNorm(16), few, "layer")):
        ctx = Context(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), between, nn.Linear(16, 4)),
                      train=(x, y))
        w0 = ctx.params["2.weight"].reshape(-1)
        line = fl.line_loss(ctx, ("2.weight",), w0, dirs)
        assert line.kind == kind
        idx, delta = torch.zeros(2, dtype=torch.long), torch.tensor([0.7, -2.0])
        torch.testing.assert_close(line(idx, delta), _direct_losses(ctx, ("2.weight",), w0, dirs, idx, delta),
                                   rtol=1e-5, atol=1e-6)


class _BatchMixing(nn.Module):
    """Centres the hidden layer over the batch: samples are not independent, so probes must not be folded
    into the sample axis."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.l1(x)
        return self.l2(torch.tanh(h - h.mean(0, keepdim=True)))


def test_sample_mixing_model_falls_back_to_vmap():
    g = torch.Generator().manual_seed(9)
    ctx = Context(_BatchMixing(), train=(torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g)))
    names = ("l1.weight",)
    w0 = ctx.params["l1.weight"].reshape(-1)
    dirs = torch.randn(2, w0.numel(), generator=g)
    line = fl.line_loss(ctx, names, w0, dirs)
    assert line.kind == "vmap"
    idx, delta = torch.tensor([0, 1]), torch.tensor([0.3, -0.7])
    torch.testing.assert_close(line(idx, delta), _direct_losses(ctx, names, w0, dirs, idx, delta),
                               rtol=1e-5, atol=1e-6)


def test_crossings_hit_e_times_l0_on_a_model():
    """End to end on an MLP: at the returned δ_l, δ_r the directly computed training loss is e·L₀."""
    ctx = _ctx(5)
    r = vfa.variance_flatness(ctx, vfa.VFSettings(steps=60, pcs=(2, 3, 4, 5), params="weights"))
    assert r.line_kind == "vmap"  # several layers: the generic path
    for pc, dl, dr in zip(r.pcs, r.left, r.right):
        p = r.pca.components[r.pca.row(pc)].float()
        for d in (-dl, dr):
            params = {**ctx.params, **landscape._split(ctx, r.names, r.w0 + float(d) * p)}
            assert ctx.loss(params).item() == pytest.approx(E * r.loss0, rel=2e-3)


def test_variance_flatness_is_deterministic_and_skips_pc1():
    ctx = _ctx(6)
    settings = vfa.VFSettings(steps=50, pcs=tuple(range(2, 8)))
    a = vfa.variance_flatness(ctx, settings)
    b = vfa.variance_flatness(_ctx(6), settings)
    assert a.pcs.tolist() == list(range(2, 8))
    assert a.line_kind == "layer"
    np.testing.assert_array_equal(a.flatness, b.flatness)
    assert a.fit == b.fit
    np.testing.assert_allclose(a.variance, a.pca.spectrum[1:7].numpy())


# ------------------------------------------------------------------------------------------- split-sample PCA
def test_split_sample_pca_removes_the_eigenvalue_spreading():
    """Isotropic snapshots (every true variance 1) with T = 4N: the plain PCA spreads the eigenvalues over
    about [(1 − ½)², (1 + ½)²] (Marchenko–Pastur, N/T = ¼), a ratio of ~9; the split-sample variances p_iᵀΣ_B p_i
    stay near 1 for every rank (sampling noise only), so the spreading cannot fake a variance–flatness slope."""
    g = torch.Generator().manual_seed(0)
    n, t = 64, 256
    x = torch.randn(t, n, generator=g, dtype=torch.float64)
    plain = torch.linalg.eigvalsh(torch.cov(x.T, correction=0)).flip(0)
    assert plain[0] / plain[-1] > 5
    dirs, var = fl.split_sample_pca(x, chunk=8)
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-10)
    assert float(var.max() / var.min()) < 2.5 and abs(float(var.mean()) - 1) < 0.1
    # the halves: even chunks give the directions, odd chunks the variances
    a = x.reshape(-1, 8, n)[0::2].reshape(-1, n)
    b = x.reshape(-1, 8, n)[1::2].reshape(-1, n)
    evec = torch.linalg.eigh(torch.cov(a.T, correction=0)).eigenvectors.flip(1)
    torch.testing.assert_close(var, ((evec.T @ torch.cov(b.T, correction=0)) * evec.T).sum(1), rtol=1e-9, atol=0)


# ------------------------------------------------------------------------------------------- measures
VF_MEASURES = ("vf.block_exponent", "vf.block_flatness_mean_log", "vf.block_weight_variance")


def test_measures_registered_with_family_and_sign():
    for name in VF_MEASURES:
        m = REGISTRY.get(name)
        assert m.family == "physics" and m.sign == -1 and not m.oracle
        assert m.needs == {"model", "train_data", "hparams"}


# ------------------------------------------------------------------------------------------- registered values
def _trained_tanh_ctx():
    """The 4→12→12→3 tanh MLP of tests/values/cases_flatness.py: its middle hidden-to-hidden weight is the 12×12
    matrix "2.weight" (144 entries: each 16×16 block is all of it), PCs 2, 42, 82, 122 of each of the four
    blocks are fitted."""
    return Context(vf_case.MODEL, train=(vf_case.X, vf_case.Y), hparams=vf_case.HP, seed=vf_case.SEED)


def test_vf_block_analysis_against_the_recomputation():
    """The values are cases of tests/values/cases_flatness.py; here what lies behind them: the analysed layer
    and blocks (each the whole 12×12 matrix), the recorded snapshots (those of the plain SGD loop there), the 16
    fitted PCs with no censored side, and the fit's standard error."""
    ctx = _trained_tanh_ctx()
    out = REGISTRY.get("vf.block_exponent")(ctx)
    r = ctx.shared(fl._block, fl.BLOCK)
    assert r.layer == "2.weight" and out.details["block"] == "4x12x12" and out.details["optimizer"] == "sgd"
    snaps = r.snapshots.numpy()  # (T, 4·144)
    assert snaps.shape == (1000, 4 * 144)
    for k, idx in enumerate(r.index.numpy()):
        np.testing.assert_array_equal(idx, np.arange(144))  # each block: the whole 12×12 matrix, in order
        np.testing.assert_allclose(snaps[:, k * 144:(k + 1) * 144], vf_case.SNAPSHOTS, rtol=1e-5, atol=1e-6)
    assert out.details["n_pcs"] == 16 and out.details["n_censored_left"] == out.details["n_censored_right"] == 0
    assert out.details["se"] == pytest.approx(vf_case.REFERENCE["se"], rel=2e-2)


def test_a_random_walk_is_told_apart_from_the_optimizers_fluctuations():
    """Null control. Real SGD fluctuations of the trained net give a clear inverse relation (ψ > 1, R² > 0.8, ψ
    many standard errors from 0). A random walk w₀ + Σ ξ_s with isotropic Gaussian increments of the same mean
    size, and i.i.d. isotropic noise around w₀, analysed by the same estimator, have PCs that are random
    directions of the block: the flatness barely varies between them and the fit finds no relation (R² < 0.5,
    ψ within 3 standard errors of 0)."""
    ctx = _trained_tanh_ctx()
    real = fl.block_variance_flatness(ctx)
    assert real.fit.psi > 1.0 and real.fit.r2 > 0.8 and real.fit.psi > 10 * real.fit.se, real.fit
    steps = real.snapshots.diff(dim=0)
    g = torch.Generator().manual_seed(11)
    scale = float(steps.pow(2).mean().sqrt())
    w0 = ctx.params[real.layer].reshape(-1)[real.index.reshape(-1)].double()
    walk = w0 + torch.cumsum(scale * torch.randn(real.snapshots.shape, generator=g, dtype=torch.float64), 0)
    around = w0 + scale * torch.randn(real.snapshots.shape, generator=g, dtype=torch.float64)
    for snaps in (walk, around):
        null = fl.block_fit(ctx, real.layer, real.index, snaps)
        assert null.fit.r2 < 0.5 and abs(null.fit.psi) < 3 * null.fit.se, (null.fit, real.fit)


# ------------------------------------------------------------------------------------------- many models at once
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_stacked_continuation_equals_each_model_alone(name):
    """The many-model form of the continuation: three models of one architecture with their own weights, data,
    labels, learning rates and weight decays take their steps together, and each one's snapshots equal its own
    continuation; a fourth model of another width is left to compute alone (NotImplemented)."""
    settings = fl.BlockSettings(size=8, blocks=2, steps=120, warmup=15)
    ctxs = []
    for seed, lr, wd in [(0, 0.05, 0.0), (1, 0.02, 0.01), (2, 0.08, 0.001)]:
        model, x, y = _mlp(seed)
        ctxs.append(Context(model, train=(x, y), seed=3, hparams={
            "optimizer.name": name, "optimizer.lr": lr if name != "adam" else lr / 10, "optimizer.momentum": 0.7,
            "optimizer.weight_decay": wd, "train.batch_size": 16}))
    other, x, y = _mlp(4, width=12)
    ctxs.append(Context(other, train=(x, y), seed=3, hparams={"optimizer.name": name, "optimizer.lr": 0.01,
                                                              "optimizer.momentum": 0.7, "train.batch_size": 16}))
    many = block._block_snapshots_many(ctxs, settings)
    assert many[3] is NotImplemented
    for c, got in zip(ctxs[:3], many[:3]):
        alone = block._block_snapshots(c, settings)
        assert torch.equal(got.index, alone.index) and got.optimizer == alone.optimizer == name
        assert got.snapshots.shape == alone.snapshots.shape == (120, 2 * 64)
        torch.testing.assert_close(got.snapshots, alone.snapshots, rtol=1e-4, atol=1e-5)
        assert (alone.snapshots[-1] - alone.snapshots[0]).abs().max() > 1e-3  # the weights did move
