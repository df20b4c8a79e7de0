"""Many parameter sets of one model in one pass (``Context.copies_logits``): the batched-matmul form of
``measures.stacking.forward_copies`` against each copy run through the model itself, its gradients, when it is
used and when ``vmap`` is used instead (a model whose ``forward`` does more than its ``net``), a conv net's
copies (one by one) against ``vmap``, and the perturbed-copy error of the PAC-Bayes searches against a plain
loop."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from benchmark.zoo.models import MLP, ConvNet
from measures import Context, stacking
from measures import pacbayes as PB


def _copies(ctx: Context, count: int, scale: float, seed: int) -> torch.Tensor:
    w = ctx.flatten(ctx.params)
    return w + scale * torch.randn(count, w.numel(), generator=torch.Generator().manual_seed(seed))


def _one_by_one(ctx: Context, flats: torch.Tensor, x: torch.Tensor, shared: bool) -> torch.Tensor:
    """Each copy through the model's own forward (the independent reference)."""
    return torch.stack([functional_call(ctx.model, ctx.unflatten(f), (x if shared else x[i],))
                        for i, f in enumerate(flats)])


class _Doubled(nn.Module):
    """An MLP-shaped ``net`` whose ``forward`` doubles the logits: not stackable from ``net`` alone."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))

    def forward(self, x):
        return 2 * self.net(x)


def _ctx(model: nn.Module, shape: tuple, n: int = 20) -> Context:
    g = torch.Generator().manual_seed(3)
    return Context(model, train=(torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_forward_copies_equal_each_copy_through_the_model(bias, shared):
    """Flatten, three Linear layers (with and without biases), ReLUs and an eval-mode dropout."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 7, bias=bias), nn.ReLU(), nn.Dropout(0.3),
                        nn.Linear(7, 5, bias=bias), nn.ReLU(), nn.Linear(5, 3, bias=bias))
    ctx = _ctx(net, (2, 3))
    assert ctx._copies_program is not None  # the batched form is the one used
    flats = _copies(ctx, 4, 0.3, 1)
    x = ctx.x_train[:9] if shared else torch.randn(4, 9, 2, 3, generator=torch.Generator().manual_seed(2))
    got = ctx.copies_logits(ctx.unflatten_rows(flats), x, shared)
    assert got.shape == (4, 9, 3)
    torch.testing.assert_close(got, _one_by_one(ctx, flats, x, shared), rtol=1e-5, atol=1e-6)
    # and differentiable: the gradient of a loss of all copies equals that of the copies one by one
    a = flats.clone().requires_grad_(True)
    b = flats.clone().requires_grad_(True)
    ctx.copies_logits(ctx.unflatten_rows(a), x, shared).square().sum().backward()
    _one_by_one(ctx, b, x, shared).square().sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_copies_of_other_models_go_through_vmap():
    """A wrapper whose forward rescales ``net`` fails the check against the model: it uses
    ``vmap(functional_call)`` and still gives each copy's own logits."""
    torch.manual_seed(1)
    ctx = _ctx(_Doubled(), (5,))
    assert ctx._copies_program is None and ctx.copies_step(4) == ctx.chunk // 4
    flats = _copies(ctx, 3, 0.2, 4)
    got = ctx.copies_logits(ctx.unflatten_rows(flats), ctx.x_train)
    torch.testing.assert_close(got, _one_by_one(ctx, flats, ctx.x_train, True), rtol=1e-5, atol=1e-6)
    assert stacking.program(_Doubled()) is not None  # the recipe alone would have been wrong: the check caught it


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("shape", [(2, 12), (1, 6, 6)])
def test_conv_copies_run_one_by_one_and_equal_vmap(shared, shape):
    """A conv net's copies go through the model copy by copy (faster than vmap's grouped convolution on a CPU):
    the logits and their gradients equal ``vmap(functional_call)``'s, 1-D and 2-D, shared and own inputs, and a
    chunk of samples per call need not shrink with the number of copies."""
    from torch.func import vmap
    torch.manual_seed(4)
    ctx = _ctx(ConvNet(shape, 3, depth=2, width=4), shape)
    assert ctx._copies_program is None and ctx.copies_step(16) == ctx.chunk
    flats = _copies(ctx, 3, 0.2, 6)
    x = ctx.x_train[:7] if shared else torch.randn(3, 7, *shape, generator=torch.Generator().manual_seed(7))

    def by_vmap(f):
        return vmap(lambda p, xb: functional_call(ctx.model, p, (xb,)),
                    in_dims=(0, None if shared else 0))(ctx.unflatten_rows(f), x)
    a, b = flats.clone().requires_grad_(True), flats.clone().requires_grad_(True)
    got, want = ctx.copies_logits(ctx.unflatten_rows(a), x, shared), by_vmap(b)
    assert got.shape == (3, 7, 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.square().sum().backward()
    want.square().sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_batched_error_is_each_copy_s_error():
    """The perturbed-copy training error of the σ searches, chunked (copies × chunk ≤ ctx.chunk), equals each
    copy's error counted one by one."""
    torch.manual_seed(2)
    ctx = _ctx(MLP((10,), 3, depth=2, width=16), (10,), n=300)
    ctx.chunk = 500  # 5 copies: chunks of 100 samples
    flats = _copies(ctx, 5, 0.5, 5)
    want = torch.stack([(_one_by_one(ctx, f[None], ctx.x_train, True)[0].argmax(1) != ctx.y_train).float().mean()
                        for f in flats])
    got = PB.batched_error(ctx, flats, ctx.x_train, ctx.y_train)
    assert torch.equal(got, want) and len(set(got.tolist())) > 1  # the copies differ, and each is counted right


def test_batched_error_of_a_conv_net_is_each_copy_s_error():
    """The same for a conv net, whose copies run one by one on chunks of ``ctx.chunk`` samples."""
    torch.manual_seed(3)
    ctx = _ctx(ConvNet((1, 6, 6), 3, depth=2, width=4), (1, 6, 6), n=300)
    ctx.chunk = 128  # three chunks, whatever the number of copies
    flats = _copies(ctx, 5, 0.5, 8)
    want = torch.stack([(_one_by_one(ctx, f[None], ctx.x_train, True)[0].argmax(1) != ctx.y_train).float().mean()
                        for f in flats])
    got = PB.batched_error(ctx, flats, ctx.x_train, ctx.y_train)
    assert torch.equal(got, want) and len(set(got.tolist())) > 1
