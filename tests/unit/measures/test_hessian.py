"""Hessian measures against dense Hessians of the whole training set: small trained MLPs
(torch.autograd.functional.hessian; one with close top eigenvalues, one with more samples than any old subset),
the curvature_samples subset option, and softmax regression, whose Hessian is known in closed form; the Lanczos
and Hutchinson helpers on explicit matrices. The values of hessian.top_eig, hessian.trace (ReLU MLPs) and
hessian.logdet_topk against dense Hessians are value cases (tests/values/cases_hessian.py)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.zoo.models import MLP, ConvNet
from measures import REGISTRY, Context
from measures import hessian as H
from measures import pacbayes as PB
from tests.helpers import dense_hessian, fit, trained_mlp
from tests.values.cases_hessian import softmax_regression, tanh_network

NAMES = {"hessian.top_eig", "hessian.trace", "hessian.logdet_topk"}


@pytest.fixture(scope="module")
def tiny():
    """A 6→10→10→4 MLP (224 parameters) on 64 samples: the Hessian is taken over all of them."""
    ctx = trained_mlp(6, 4, 10, 64, seed=1)
    return ctx, torch.linalg.eigvalsh(dense_hessian(ctx)).flip(0)  # descending


def test_registered():
    got = {m.name: m for m in REGISTRY if m.fn.__module__ == "measures.hessian"}  # relative_flatness: its own page
    assert set(got) == NAMES
    assert all(m.sign == 1 and m.needs == {"model", "train_data"} and m.sample_size is None for m in got.values())


@pytest.fixture(scope="module")
def close_top():
    """An 8→8→8→6 MLP (198 parameters) on 120 samples whose top two Hessian eigenvalues are 2.6 % apart
    (0.3812 and 0.3714; seed 55 found by a search over seeds)."""
    ctx = trained_mlp(8, 6, 8, 120, seed=55)
    return ctx, torch.linalg.eigvalsh(dense_hessian(ctx)).flip(0)


@pytest.fixture(scope="module")
def many_samples():
    """A 4→6→6→3 MLP (81 parameters) on 900 noisy-label samples: more than the 512-sample subset the Hessian
    used to be taken over, so a measure on a subset would be caught."""
    ctx = trained_mlp(4, 3, 6, 900, seed=11, label_noise=0.3)
    return ctx, torch.linalg.eigvalsh(dense_hessian(ctx)).flip(0)


@pytest.mark.parametrize("case", ["tiny", "close_top", "many_samples"])
def test_top_eigenvalues_match_dense(case, request):
    """Every one of the top-10 Ritz values within 1e-3·λ_max of its dense eigenvalue on the whole training set, and
    hessian.logdet_topk within 1e-3 of Σ log λ_i (hessian.top_eig against the dense λ_max: a value case,
    tests/values/cases_hessian.py)."""
    ctx, evals = request.getfixturevalue(case)
    top = REGISTRY.get("hessian.top_eig")(ctx)
    assert top.details["converged"] and top.details["samples"] == len(ctx.y_train)
    keep = evals[:H.TOP_K][evals[:H.TOP_K] > 1e-3 * evals[0]]
    logdet = REGISTRY.get("hessian.logdet_topk")(ctx)
    assert torch.allclose(torch.tensor(logdet.details["eigenvalues"], dtype=torch.float64), evals[:H.TOP_K], rtol=0,
                          atol=1e-3 * evals[0].item())
    assert logdet.details["hvps"] > top.details["hvps"]  # the top-10 solve extends the top-1 basis
    assert logdet.details["positive"] == len(keep)
    assert logdet.value == pytest.approx(torch.log(keep).sum().item(), rel=1e-3, abs=1e-3)


def test_close_top_eigenvalues_are_both_found(close_top):
    ctx, evals = close_top
    assert (evals[0] - evals[1]) / evals[0] < 0.03  # the premise: a near-degenerate top pair
    assert REGISTRY.get("hessian.top_eig")(ctx).value == pytest.approx(evals[0].item(), rel=1e-4)
    eig = REGISTRY.get("hessian.logdet_topk")(ctx).details["eigenvalues"]
    assert eig[0] == pytest.approx(evals[0].item(), rel=1e-4) and eig[1] == pytest.approx(evals[1].item(), rel=1e-4)


def test_a_resumed_solve_equals_a_solve_alone():
    """The top-10 solve after a top-1 solve on one state costs no extra products and returns what each returns
    alone, in either order (values do not depend on which measures ran before)."""
    g = torch.Generator().manual_seed(12)
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
    mat = (q * torch.linspace(-0.5, 6.0, 200, dtype=torch.float64) ** 3) @ q.T
    calls = []
    matvec = lambda v: (calls.append(1), mat @ v)[1]
    v0 = torch.randn(200, generator=g, dtype=torch.float64)
    alone = {k: H.lanczos(matvec, v0, k, tol=1e-6, max_iter=200) for k in (1, 10)}
    calls.clear()
    for order in ((1, 10), (10, 1)):
        state = {}
        shared = {k: H.lanczos(matvec, v0, k, tol=1e-6, max_iter=200, state=state) for k in order}
        for k in (1, 10):
            assert shared[k].iterations == alone[k].iterations
            assert torch.equal(shared[k].values, alone[k].values)
    assert len(calls) == 2 * alone[10].iterations  # each order paid for the larger solve only


def test_whole_training_set_by_default_and_a_subset_on_request(many_samples):
    ctx, evals = many_samples
    x, y = PB.train_subsample(ctx, 512)
    sub = torch.linalg.eigvalsh(dense_hessian(ctx, x, y)).flip(0)
    assert abs(sub[0] / evals[0] - 1) > 2e-2  # the 512-sample subset Hessian is measurably different
    # curvature_samples = 300: the Hessian of the seeded 300-sample subset, exactly
    small = Context(ctx.model, train=(ctx.x_train, ctx.y_train), extras={"curvature_samples": 300})
    xs, ys = PB.train_subsample(small, 300)
    dense = dense_hessian(small, xs, ys)
    top = REGISTRY.get("hessian.top_eig")(small)
    assert top.details["samples"] == 300
    assert top.value == pytest.approx(torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-3)
    out = REGISTRY.get("hessian.trace")(small)
    assert out.details["samples"] == 300
    assert out.value == pytest.approx(torch.trace(dense).item(), rel=1e-5)
    with pytest.raises(ValueError, match="curvature_samples"):
        REGISTRY.get("hessian.top_eig")(Context(ctx.model, train=(ctx.x_train, ctx.y_train),
                                               extras={"curvature_samples": 0}))


@pytest.mark.parametrize("case", ["tiny", "close_top", "many_samples"])
def test_trace_of_relu_mlps_takes_the_exact_formula(case, request):
    """ReLU MLPs: the closed-form Gauss-Newton diagonal, no sampling (that it equals the dense Hessian's trace is
    a value case)."""
    ctx, _ = request.getfixturevalue(case)
    out = REGISTRY.get("hessian.trace")(ctx)
    assert out.details["method"].startswith("exact") and out.details["stderr"] == 0.0


def _tanh_context(seed: int = 3) -> Context:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(90, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(1)
    torch.manual_seed(seed)
    return Context(fit(nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 3)), x, y, lr=0.1), train=(x, y))


def test_trace_of_a_smooth_network_by_hutchinson_and_why_it_cannot_be_exact():
    """A tanh network has curvature in each single weight: the Gauss-Newton diagonal is not the trace there, so
    the measure falls back to seeded, deflated Hutchinson, within 3 of its stated standard errors of the dense
    trace, with the standard error at its target (1 % of the trace) before the sample cap."""
    ctx = _tanh_context()
    exact = torch.trace(dense_hessian(ctx)).item()
    assert not H.exact_trace_applies(ctx.model)
    assert abs(H.exact_trace(ctx, ctx.x_train, ctx.y_train) / exact - 1) > 0.05
    out = REGISTRY.get("hessian.trace")(ctx)
    assert out.details["method"].startswith("hutchinson")
    assert out.details["converged"] and out.details["stderr"] <= H.TRACE_REL_STDERR * abs(out.value)
    assert abs(out.value - exact) <= 3 * out.details["stderr"]


class _Reused(nn.Module):
    """The same Linear layer applied twice: each of its weights enters the logits twice (degree 2)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.relu(self.inner(torch.relu(self.inner(x)))))


def test_a_reused_layer_is_sampled_not_given_the_exact_formula():
    torch.manual_seed(4)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(60, 4, generator=g), torch.randint(0, 3, (60,), generator=g)
    ctx = Context(_Reused(), train=(x, y))
    assert H.exact_trace_applies(ctx.model)  # its leaves look fine; the forward pass shows the reuse
    with pytest.raises(ValueError, match="exactly once"):
        H.exact_trace(ctx, x, y)
    out = REGISTRY.get("hessian.trace")(ctx)
    assert out.details["method"].startswith("hutchinson")
    assert abs(out.value - torch.trace(dense_hessian(ctx)).item()) <= 3 * out.details["stderr"]


def test_which_models_get_the_exact_trace():
    assert H.exact_trace_applies(MLP((4,), 3, depth=3, width=5, dropout=0.2, bias=False))
    assert not H.exact_trace_applies(ConvNet((1, 8, 8), 3, depth=2, width=4))  # conv weights: Hutchinson
    assert not H.exact_trace_applies(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2)))


def test_logdet_topk_fails_without_positive_curvature():
    """Dead ReLUs and no biases: the loss is constant near w, H = 0, and the log-volume is undefined."""
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[2].weight.fill_(0.5)
    x = torch.rand(20, 3, generator=torch.Generator().manual_seed(0)) + 0.1  # positive inputs: every unit dead
    ctx = Context(model, train=(x, torch.zeros(20, dtype=torch.long)))
    assert REGISTRY.get("hessian.top_eig")(ctx).value == 0.0
    with pytest.raises(ValueError, match="no Hessian eigenvalue"):
        REGISTRY.get("hessian.logdet_topk")(ctx)


def test_trace_exact_when_deflation_spans_everything():
    ctx = trained_mlp(3, 2, 5, 40, seed=2)  # 3→5→5→2: 62 parameters
    exact = torch.trace(dense_hessian(ctx)).item()
    matvec = H.hvp_operator(ctx, ctx.x_train, ctx.y_train)
    n = ctx.num_params
    eigs = H.lanczos(matvec, torch.randn(n, generator=torch.Generator().manual_seed(3)), n, tol=1e-5, max_iter=n)
    out = H.hutchinson(matvec, n, torch.Generator().manual_seed(4), basis=eigs.vectors,
                       offset=float(eigs.values.sum()), max_iter=3)
    assert out["trace"] == pytest.approx(exact, rel=1e-4, abs=1e-5)


def test_softmax_regression_closed_form():
    """Linear softmax model: H = (1/n) Σ_n (diag p_n − p_n p_nᵀ) ⊗ x_n x_nᵀ (weights row-major)."""
    d, classes, n = 5, 3, 80
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)
    model = nn.Sequential(nn.Linear(d, classes, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(classes, d, generator=torch.Generator().manual_seed(6)))
    ctx = Context(model, train=(x, y))
    p = torch.softmax(x.double() @ model[0].weight.double().T, 1)  # (n, classes)
    A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (n, classes, classes)
    xx = x.double()[:, :, None] * x.double()[:, None, :]  # (n, d, d)
    hess = torch.einsum("nab,nij->aibj", A, xx).reshape(classes * d, classes * d) / n
    evals = torch.linalg.eigvalsh(hess).flip(0)
    assert REGISTRY.get("hessian.top_eig")(ctx).value == pytest.approx(evals[0].item(), rel=1e-4)
    # rank (classes − 1)·d = 10 < 15 parameters: the Krylov space is exhausted, deflation is exact
    assert REGISTRY.get("hessian.trace")(ctx).value == pytest.approx(torch.trace(hess).item(), rel=1e-4)
    rank = (classes - 1) * d
    logdet = REGISTRY.get("hessian.logdet_topk")(ctx)
    assert logdet.details["positive"] == rank
    assert logdet.value == pytest.approx(torch.log(evals[:rank]).sum().item(), rel=1e-3)


def test_lanczos_on_explicit_matrix():
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([9.0, 7.0, 5.0, 4.0, 3.5]), torch.rand(295, generator=g) * 2 - 0.5]).double()
    mat = (q * spectrum) @ q.T
    eigs = H.lanczos(lambda v: mat @ v, torch.randn(300, generator=g, dtype=torch.float64), 5, tol=1e-8,
                     max_iter=300)
    assert eigs.converged
    assert torch.allclose(eigs.values, spectrum.sort(descending=True).values[:5], atol=1e-6)
    resid = mat @ eigs.vectors - eigs.vectors * eigs.values
    assert resid.norm(dim=0).max() < 1e-6 * 9


def test_hutchinson_is_unbiased():
    g = torch.Generator().manual_seed(8)
    a = torch.randn(40, 40, generator=g, dtype=torch.float64)
    mat = a + a.T
    out = H.hutchinson(lambda v: mat @ v, 40, torch.Generator().manual_seed(9), tol=0.0, max_iter=2000,
                       dtype=torch.float64)
    assert out["iterations"] == 2000
    assert abs(out["trace"] - torch.trace(mat).item()) < 4 * out["stderr"]


def test_deterministic_and_finite_on_mlp_and_convnet():
    torch.manual_seed(1)
    for model, x in ((MLP((8,), 3, depth=2, width=12), torch.randn(100, 8)),
                     (ConvNet((2, 10), 3, depth=2, width=4), torch.randn(100, 2, 10))):
        y = torch.randint(0, 3, (100,))
        a, b = Context(model, train=(x, y), seed=3), Context(model, train=(x, y), seed=3)
        for name in sorted(NAMES):
            va, vb = REGISTRY.get(name)(a), REGISTRY.get(name)(b)
            assert math.isfinite(va.value), name
            assert va.value == vb.value, name


def test_logdet_topk_leaves_out_null_and_negative_directions():
    """hessian.logdet_topk counts the top-10 eigenvalues with λ_i > 1e-3·λ_1 (its value, Σ log λ_i over them
    against dense eigenvalues, is a value case on the same two models):
    (a) softmax regression with 4 features and 3 classes, 12 parameters, whose closed-form Hessian has rank
        (3 − 1)·4 = 8 < 10: the null directions must be left out;
    (b) a 2→2→2 tanh network without biases at random weights (8 parameters): an indefinite Hessian, with a
        2-dimensional null space besides (adding one vector to both output rows leaves the loss unchanged);
        3 eigenvalues are kept, the null and negative ones left out."""
    model, x, y, evals = softmax_regression()
    assert evals[7] > 1e-2 * evals[0] and evals[8].abs() < 1e-12 * evals[0]  # rank 8
    assert REGISTRY.get("hessian.logdet_topk")(Context(model, train=(x, y))).details["positive"] == 8

    model, x, y, evals = tanh_network()
    ctx = Context(model, train=(x, y))
    keep = evals[evals > 1e-3 * evals[0]]
    assert (evals < -1e-2 * evals[0]).any() and len(keep) == 3
    assert not ((evals > 0.5e-3 * evals[0]) & (evals < 2e-3 * evals[0])).any()  # none near the cut
    assert REGISTRY.get("hessian.logdet_topk")(ctx).details["positive"] == len(keep)
