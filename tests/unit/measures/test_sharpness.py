"""PAC-Bayes and sharpness measures: the σ / α searches on a two-weight model whose accuracy drop is known in
closed form (and the σ-is-a-standard-deviation regression), the bound terms by hand, the ascent routine on
explicit quadratics, and finite, seeded outputs on small MLPs and ConvNets. The registered values against
references worked out by hand are value cases (tests/values/cases_sharpness.py)."""
from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import pytest
import torch
from torch import nn

from measures import REGISTRY, Context
from measures import pacbayes as PB
from measures import sharpness as S
from tests.values.cases_sharpness import one_hot

PACBAYES = ["pacbayes.init", "pacbayes.orig", "pacbayes.flatness", "pacbayes.mag.init", "pacbayes.mag.orig",
            "pacbayes.mag.flatness"]
SEARCH = ["sharpness.init", "sharpness.orig", "sharpness.flatness", "sharpness.mag.init", "sharpness.mag.orig",
          "sharpness.mag.flatness"]
FIXED = ["sharpness.l2", "sharpness.linf", "sharpness.adaptive.l2", "sharpness.adaptive.linf"]
M_SHARP = ["sharpness.adaptive.m.linf", "sharpness.adaptive.m.l2"]
AVERAGE = ["sharpness.adaptive.avg.l2", "sharpness.adaptive.avg.linf", "sharpness.avg.l2"]
Z90 = NormalDist().inv_cdf(0.9)  # Φ⁻¹(0.9) = 1.2816


def test_registered():
    fams = {m.name: m.family for m in REGISTRY if m.family in ("pacbayes", "sharpness")}
    assert fams == {**{n: "pacbayes" for n in PACBAYES},
                    **{n: "sharpness" for n in SEARCH + FIXED + M_SHARP + AVERAGE}}
    assert all(REGISTRY.get(n).sign == 1 for n in fams)
    # the bound terms are reported as √(v/m); the fixed-radius loss increases are not bounds
    assert {n for n in fams if REGISTRY.get(n).sample_size == "sqrt"} == set(PACBAYES + SEARCH)
    assert all(REGISTRY.get(n).sample_size is None for n in FIXED + M_SHARP + AVERAGE)
    assert {n for n in fams if "init_model" in REGISTRY.get(n).needs} == {
        "pacbayes.init", "pacbayes.mag.init", "pacbayes.mag.orig",
        "sharpness.init", "sharpness.mag.init", "sharpness.mag.orig"}


# ----------------------------------------------------------------------------------------- closed form
def _two_weight_ctx(a: float) -> Context:
    """logits = (a·x, −a·x) with x = 1, label 0: the margin is 2a, and Gaussian noise of standard deviation s on
    both weights flips the prediction with probability Φ(−2a/(√2 s)); the worst case in the box |δ_i| ≤ α flips
    it exactly when α > a."""
    model = nn.Sequential(nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[a], [-a]]))
    return Context(model, init_model=model, train=(torch.ones(1, 1), torch.zeros(1, dtype=torch.long)))


def test_sigma_search_closed_form():
    a = 0.1
    ctx = _two_weight_ctx(a)
    expected = math.sqrt(2) * a / Z90  # drop(σ) = Φ(−√2·a/σ) = 0.1
    found = PB._sigma_search(ctx, False, samples=20000, tol=1e-3, steps=30)
    assert found.sigma == pytest.approx(expected, rel=0.04)
    # passing σ² as the standard deviation (the copied bug) would find √expected ≈ 0.33 instead
    assert abs(found.sigma - math.sqrt(expected)) > 0.5 * expected


def test_magnitude_sigma_search_closed_form():
    a, eps = 0.1, PB.MAGNITUDE_EPS
    ctx = _two_weight_ctx(a)
    std = math.sqrt(2) * a / Z90  # noise std √(σ'²a² + ε²) at the crossing
    expected = math.sqrt(std ** 2 - eps ** 2) / a
    found = PB._sigma_search(ctx, True, samples=20000, tol=1e-3, steps=30)
    assert found.sigma == pytest.approx(expected, rel=0.04)


def test_noise_is_a_standard_deviation():
    w = torch.tensor([0.5, -2.0, 0.0])
    assert torch.allclose(PB.noise_std(w, 0.1, False), torch.full((3,), 0.1))
    assert torch.allclose(PB.noise_std(w, 0.1, True, eps=1e-3), torch.sqrt(0.01 * w ** 2 + 1e-6))
    z = torch.randn(200000, generator=torch.Generator().manual_seed(0))
    assert (PB.noise_std(torch.zeros(1), 0.1, False) * z).std().item() == pytest.approx(0.1, rel=0.01)


def test_alpha_search_closed_form():
    a = 0.1
    ctx = _two_weight_ctx(a)
    plain = S._alpha_search(ctx, False, tol=0.0, steps=24)  # error increase jumps 0 → 1 at α = a
    assert plain["alpha"] == pytest.approx(a, rel=1e-4)
    mag = S._alpha_search(ctx, True, tol=0.0, steps=24)  # box α'|w_i| + ε: jump at α' = (a − ε)/a
    assert mag["alpha"] == pytest.approx((a - S.MAG_EPS) / a, rel=1e-4)


def test_bisect_log():
    out = PB.bisect_log(lambda s: s, (1e-3, 10.0), 0.3, tol=0.0, steps=40)
    assert out["s"] == pytest.approx(0.3, rel=1e-6) and out["at_bound"] is None
    assert PB.bisect_log(lambda s: 0.0, (1e-3, 10.0), 0.3, tol=0.01, steps=8)["at_bound"] == "upper"
    low = PB.bisect_log(lambda s: 1.0, (1e-3, 10.0), 0.3, tol=0.01, steps=8)
    assert low["at_bound"] == "lower" and low["s"] == 1e-3 and low["probes"] == 9  # bounds[0] probed last


def test_bisect_log_returns_the_largest_probe_at_or_below_the_target():
    """A step function (the error jumps 0 → 1 at s = 0.37, so no probe is ever within tol): the answer is the
    largest probe with f ≤ target, i.e. the final lower end of the bracket, never the last probe when that one
    was above the target; it is within the bracket's width below the crossing."""
    probes = []

    def step(s: float) -> float:
        probes.append(s)
        return float(s > 0.37)

    out = PB.bisect_log(step, (1e-3, 10.0), 0.1, tol=0.01, steps=9)
    assert len(probes) == 9 and probes[-1] > 0.37  # the last probe was above the target here
    assert out["s"] == max(s for s in probes if s <= 0.37) and out["f"] == 0.0 and out["at_bound"] is None
    assert out["bracket"][0] == pytest.approx(out["s"]) and out["bracket"][0] <= 0.37 < out["bracket"][1]
    width = math.log(1e4) / 2 ** 9  # ln(hi/lo) after 9 halvings
    assert math.log(0.37 / out["s"]) <= width
    # early stop: a probe within tol of the target ends the search and is the answer, even a little above it
    out = PB.bisect_log(lambda s: 0.105, (1e-3, 10.0), 0.1, tol=0.01, steps=9)
    assert out["probes"] == 1 and out["s"] == pytest.approx(0.1) and out["at_bound"] is None
    # every probe above the target, but the lower end of the range is not: that end is the (uncensored) answer
    out = PB.bisect_log(lambda s: float(s > 2e-3), (1e-3, 10.0), 0.1, tol=0.01, steps=2)
    assert out["s"] == 1e-3 and out["at_bound"] is None and out["probes"] == 3


def test_bound_terms_by_hand():
    # ‖v‖² = 2, σ = 0.05, m = 1000: 2/(4·0.0025) + log(1000/0.05) + 10
    assert PB.pacbayes_bound(2.0, 0.05, 1000) == pytest.approx(200 + math.log(20000) + 10)
    dist = torch.tensor([0.1, -0.2])
    sigma, eps, ref = 0.5, 1e-3, 0.3
    num = eps ** 2 + (sigma ** 2 + 1) * ref / 2
    hand = 0.25 * sum(math.log(num / (eps ** 2 + sigma ** 2 * d ** 2)) for d in (0.1, 0.2)) + math.log(
        100 / sigma) + 10
    assert PB.mag_bound(ref, dist, sigma, sigma ** 2 + 1, 100, eps) == pytest.approx(hand, rel=1e-6)


def test_measures_use_sigma_as_standard_deviation(trained):
    ctx = Context(trained.model, init_model=trained.init_model, train=(trained.x_train, trained.y_train))
    m = len(ctx.y_train)
    flat = REGISTRY.get("pacbayes.flatness")(ctx)
    sigma = flat.details["sigma"]
    assert flat.value == pytest.approx(math.sqrt(1 / sigma ** 2 / m))
    w, w0 = ctx.flatten(ctx.params).double(), ctx.flatten(ctx.init_params).double()
    init = REGISTRY.get("pacbayes.init")(ctx).value
    assert init == pytest.approx(math.sqrt(
        (((w - w0) ** 2).sum().item() / (4 * sigma ** 2) + math.log(m / sigma) + 10) / m))
    alpha = REGISTRY.get("sharpness.orig")(ctx).details["alpha"]
    omega = ctx.num_params
    assert REGISTRY.get("sharpness.orig")(ctx).value == pytest.approx(math.sqrt(
        ((w ** 2).sum().item() * math.log(2 * omega) / (4 * alpha ** 2) + math.log(m / alpha) + 10) / m))


# ----------------------------------------------------------------------------------------- ascent
def _quadratic(h: torch.Tensor):
    """evaluate(flat) for f(δ) = ½ δᵀHδ around w = 0."""
    def evaluate(flat, need_grad):
        g = h @ flat
        return 0.5 * float(flat @ g), 0.0, g if need_grad else None
    return evaluate


def test_ascent_l2_ball_reaches_half_lambda_max_rho_squared():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    h = (q * torch.tensor([5.0, 2.0, 1.0, 0.5, 0.2, 0.0], dtype=torch.float64)) @ q.T
    rho = 0.3
    w = torch.zeros(6, dtype=torch.float64)
    u0 = rho * S.direction(torch.randn(6, generator=g, dtype=torch.float64), "l2")
    out = S.ascent(_quadratic(h), w, torch.ones_like(w), rho, "l2", 30, u0)
    assert out["loss"] == pytest.approx(0.5 * 5.0 * rho ** 2, rel=1e-8)
    assert all(b >= a - 1e-12 for a, b in zip(out["losses"], out["losses"][1:]))  # monotone on a convex f
    # adaptive: ‖δ ⊘ c‖₂ ≤ ρ gives ½ ρ² λ_max(C H C)
    c = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.1, 3.0], dtype=torch.float64)
    out = S.ascent(_quadratic(h), w, c, rho, "l2", 60, u0)
    assert out["loss"] == pytest.approx(0.5 * rho ** 2 * torch.linalg.eigvalsh(c[:, None] * h * c).max().item(),
                                        rel=1e-6)


def test_ascent_linf_box_finds_best_vertex():
    v = torch.tensor([1.0, -2.0, 0.5, 0.3, -1.5], dtype=torch.float64)
    h = torch.outer(v, v) + 0.1 * torch.eye(5, dtype=torch.float64)
    rho = 0.2
    brute = max(0.5 * rho ** 2 * float(torch.tensor(s, dtype=torch.float64) @ h @ torch.tensor(s, dtype=torch.float64))
                for s in itertools.product((-1.0, 1.0), repeat=5))
    w = torch.zeros(5, dtype=torch.float64)
    u0 = rho * torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    out = S.ascent(_quadratic(h), w, torch.ones_like(w), rho, "linf", 3, u0)
    assert out["loss"] == pytest.approx(brute, rel=1e-12)


# ------------------------------------------------------------------- real networks (conftest: trained, trained_cnn)
@pytest.mark.parametrize("net", ["trained", "trained_cnn"])
def test_finite_and_deterministic(net, request):
    base = request.getfixturevalue(net)
    runs = []
    for _ in range(2):  # two fresh Contexts, same seed
        ctx = Context(base.model, init_model=base.init_model, train=(base.x_train, base.y_train))
        runs.append({name: REGISTRY.get(name)(ctx) for name in PACBAYES + SEARCH + FIXED + M_SHARP + AVERAGE})
    for name, a in runs[0].items():
        assert math.isfinite(a.value), name
        assert a == runs[1][name], name
    for name in PACBAYES + SEARCH:  # the searches found an interior crossing on a fitted network
        assert runs[0][name].details["at_bound"] is None, name
        assert runs[0][name].details["samples"] == len(base.y_train), name  # the whole training set
    for name in FIXED + M_SHARP + AVERAGE:
        assert runs[0][name].value > 0, name


def test_seed_changes_the_draws(trained):
    a = Context(trained.model, train=(trained.x_train, trained.y_train), seed=0)
    b = Context(trained.model, train=(trained.x_train, trained.y_train), seed=1)
    assert REGISTRY.get("pacbayes.flatness")(a).details != REGISTRY.get("pacbayes.flatness")(b).details
    for name in M_SHARP + AVERAGE:  # the partition (and the draws) follow the measure seed
        assert REGISTRY.get(name)(a).value != REGISTRY.get(name)(b).value, name


# -------------------------------------------------------------- the searches' σ and α (values: tests/values)
def _one_hot_ctx(n: int, a: float, seed: int = 0) -> Context:
    """The one-hot network of the sharpness value cases (``tests.values.cases_sharpness.one_hot``) as a Context:
    every margin is 2a and every |w_i| is a, so noise on column k moves sample k only."""
    model, init, x, y = one_hot(n, a, seed)
    return Context(model, init_model=init, train=(x, y))


def test_pacbayes_searches_find_the_closed_form_sigma():
    """The σ (σ') the six PAC-Bayes measures report against its closed form, through the registry (their values
    are value cases, tests/values/cases_sharpness.py): the expected drop Φ(−√2a/σ) at the reported σ is the
    target 0.1 within the search tolerance and four Monte-Carlo standard errors; passing σ² as the standard
    deviation would give σ ≈ 0.33 (σ' ≈ 3.3). n = 1100 samples: more than the 1024-sample subset the search
    once used, so a subset would show in ``samples``."""
    n, a = 1100, 0.1
    ctx = _one_hot_ctx(n, a)
    draws = PB.mc_samples(ctx.num_params) * n  # independent flips behind each estimated drop
    slack = 0.01 + 4 * math.sqrt(0.09 / draws)  # search tolerance + 4 Monte-Carlo standard errors
    eps = 1e-3  # Jiang's ε of the magnitude-aware noise (module docstring)

    # isotropic: noise σ·z on every weight
    init = REGISTRY.get("pacbayes.init")(ctx)
    sigma = init.details["sigma"]
    assert init.details["at_bound"] is None and init.details["samples"] == n
    assert -0.1 - slack <= NormalDist().cdf(-math.sqrt(2) * a / sigma) - 0.1 <= slack
    assert sigma == pytest.approx(math.sqrt(2) * a / Z90, rel=0.08)
    assert REGISTRY.get("pacbayes.orig")(ctx).details["sigma"] == sigma
    assert REGISTRY.get("pacbayes.flatness")(ctx).details["sigma"] == sigma

    # magnitude-aware: noise of standard deviation √(σ'²w_i² + ε²) = √(σ'²a² + ε²) on every weight
    mag_init = REGISTRY.get("pacbayes.mag.init")(ctx)
    s = mag_init.details["sigma"]
    assert mag_init.details["at_bound"] is None and mag_init.details["eps"] == eps
    assert -0.1 - slack <= NormalDist().cdf(-math.sqrt(2) * a / math.sqrt(s ** 2 * a ** 2 + eps ** 2)) - 0.1 <= slack
    std = math.sqrt(2) * a / Z90
    assert s == pytest.approx(math.sqrt(std ** 2 - eps ** 2) / a, rel=0.08)
    assert REGISTRY.get("pacbayes.mag.orig")(ctx).details["sigma"] == s
    assert REGISTRY.get("pacbayes.mag.flatness")(ctx).details["sigma"] == s

    # the subset option: the search runs on 300 seeded samples, m stays the training-set size
    sub = Context(ctx.model, init_model=ctx.init_model, train=(ctx.x_train, ctx.y_train),
                  extras={"curvature_samples": 300})
    out = REGISTRY.get("pacbayes.flatness")(sub)
    assert out.details["samples"] == 300 and out.details["m"] == n
    assert out.details["sigma"] == pytest.approx(math.sqrt(2) * a / Z90, rel=0.1)


def test_sharpness_searches_find_the_closed_form_alpha():
    """The α (α') the six radius-search measures report, through the registry (their values are value cases):
    α = a and α' = (a − ε)/a in closed form (the worst-case error jumps from 0 to 1 there; the search returns the
    largest probe below the jump, at most a factor exp(ln(1e6)/2⁹) = 1.027 below it). n = 600 > 512, the old
    subset size."""
    n, a = 600, 0.1
    ctx = _one_hot_ctx(n, a, seed=1)
    eps = 1e-5  # the box's ε (module docstring: not Jiang's 1e-3)
    width = math.exp(math.log(1e6) / 2 ** 9)  # the final bracket's ratio hi/lo

    init = REGISTRY.get("sharpness.init")(ctx)
    alpha = init.details["alpha"]
    assert init.details["at_bound"] is None and init.details["samples"] == n
    assert a / width <= alpha <= a  # below the jump: the error increase there is 0
    assert init.details["error_increase"] == 0.0
    assert REGISTRY.get("sharpness.orig")(ctx).details["alpha"] == alpha
    assert REGISTRY.get("sharpness.flatness")(ctx).details["alpha"] == alpha

    mag_init = REGISTRY.get("sharpness.mag.init")(ctx)
    s = mag_init.details["alpha"]
    assert mag_init.details["at_bound"] is None and mag_init.details["eps"] == eps
    assert (a - eps) / a / width <= s <= (a - eps) / a
    assert REGISTRY.get("sharpness.mag.orig")(ctx).details["alpha"] == s
    assert REGISTRY.get("sharpness.mag.flatness")(ctx).details["alpha"] == s

    sub = Context(ctx.model, init_model=ctx.init_model, train=(ctx.x_train, ctx.y_train),
                  extras={"curvature_samples": 200})
    out = REGISTRY.get("sharpness.flatness")(sub)
    assert out.details["samples"] == 200 and out.details["m"] == n and a / width <= out.details["alpha"] <= a


@pytest.mark.parametrize("name,rho", [("sharpness.l2", 0.1), ("sharpness.linf", 1e-3),
                                      ("sharpness.adaptive.l2", 1.0), ("sharpness.adaptive.linf", 0.01)])
def test_fixed_radius_sharpness_reads_its_radius_and_the_whole_training_set(name, rho):
    """The fixed radii (their values are value cases) run on all 700 samples, more than the old 512-sample
    subset, at their documented ρ."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    x = torch.randn(700, 3, generator=torch.Generator().manual_seed(0))
    out = REGISTRY.get(name)(Context(model, train=(x, (x[:, 0] > 0).long())))
    assert out.details["radius"] == rho and out.details["samples"] == 700
