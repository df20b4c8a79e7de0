"""The conv architectures with BatchNorm (``cnn_bn``, ``resnet``): their layers and parameter counts against the
recipes in docs/models.md, initialisation from the generator alone, init_scale, 1-D and 2-D inputs, and the
scale invariance BatchNorm gives the weights that feed it."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from benchmark.errors import HParamsError
from benchmark.zoo import build_model, expand
from benchmark.zoo.hparams import ModelHP
from benchmark.zoo.models import BasicBlock, ConvBNNet, Dropout, ResNet, init_parameters
from tests.conftest import make_cfg

SHAPES = [(1, 8, 8), (3, 40), (2, 28, 28)]  # images and 1-D signals, with 1 to 3 channels


def _kernel(shape) -> int:
    return 9 if len(shape) == 3 else 3


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cnn_bn_params(shape, classes, depth, width, bias) -> int:
    """Convs without bias (k·c_in·w), a BatchNorm of 2w after each, a linear head."""
    k, c = _kernel(shape), shape[0]
    convs = k * c * width + (depth - 1) * k * width * width
    return convs + depth * 2 * width + width * classes + classes * bias


def _resnet_params(shape, classes, depth, width, bias) -> int:
    """Stem conv + BN; per block two convs + BNs, plus a 1-wide projection + BN in the strided (even) blocks."""
    k, c = _kernel(shape), shape[0]
    block = 2 * (k * width * width + 2 * width)
    projection = width * width + 2 * width
    blocks = depth * block + sum(projection for i in range(depth) if i % 2 == 0)
    return k * c * width + 2 * width + blocks + width * classes + classes * bias


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("depth,width,bias", [(1, 4, True), (3, 6, False), (4, 5, True)])
def test_parameter_counts_and_output_shapes_follow_the_recipes(shape, depth, width, bias):
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(0))
    for name, count in (("cnn_bn", _cnn_bn_params), ("resnet", _resnet_params)):
        model = build_model(ModelHP(name, depth, width, bias=bias), shape, 10, torch.Generator().manual_seed(1))
        assert _count(model) == count(shape, 10, depth, width, bias), name
        assert model(x).shape == (7, 10)
        assert model.eval()(x).shape == (7, 10)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_layers_are_the_documented_ones(shape):
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if len(shape) == 3 else (nn.Conv1d, nn.BatchNorm1d)
    net = ConvBNNet(shape, 10, depth=3, width=4, dropout=0.1).net
    kinds = [type(m) for m in net]
    assert kinds[:12] == [conv, norm, nn.ReLU, Dropout] * 3
    assert [m.stride[0] for m in net if isinstance(m, conv)] == [2, 1, 2]
    assert all(m.bias is None for m in net if isinstance(m, conv))  # BatchNorm's shift takes the bias's place

    res = ResNet(shape, 10, depth=3, width=4, dropout=0.1)
    assert [type(m) for m in res.stem] == [conv, norm, nn.ReLU] and res.stem[0].stride[0] == 1
    blocks = list(res.blocks)
    assert all(isinstance(b, BasicBlock) for b in blocks) and len(blocks) == 3
    assert [b.conv1.stride[0] for b in blocks] == [2, 1, 2]
    assert [isinstance(b.shortcut, nn.Identity) for b in blocks] == [False, True, False]
    assert isinstance(blocks[0].shortcut[0], conv) and blocks[0].shortcut[0].kernel_size[0] == 1
    assert isinstance(blocks[0].drop, Dropout)
    convs = [m for m in res.modules() if isinstance(m, conv)]
    assert len(convs) == 1 + 2 * 3 + 2 and all(m.bias is None for m in convs)


def test_the_residual_block_adds_its_input():
    """With the convolutions' weights zero, an identity block's output is ReLU(β₂ + x); its running stats start
    at mean 0, variance 1, so in eval mode BN(0) = β (up to BatchNorm's ε)."""
    block = BasicBlock(nn.Conv2d, nn.BatchNorm2d, 3, 3, 1, 0.0).eval()
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.conv2.weight.zero_()
        block.bn2.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(block(x), torch.relu(x + block.bn2.bias.view(1, 3, 1, 1)))


@pytest.mark.parametrize("name", ["cnn_bn", "resnet"])
def test_initial_weights_come_from_the_generator_alone(name):
    hp = ModelHP(name, 3, 6)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(100)  # whatever torch's global generator holds, the values do not depend on it
        a = build_model(hp, (1, 8, 8), 10, torch.Generator().manual_seed(3)).state_dict()
        torch.manual_seed(200)
        b = build_model(hp, (1, 8, 8), 10, torch.Generator().manual_seed(3)).state_dict()
        c = build_model(hp, (1, 8, 8), 10, torch.Generator().manual_seed(4)).state_dict()
    finally:
        torch.random.set_rng_state(state)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert all(not torch.equal(a[k], c[k]) for k in weights)
    for k, v in a.items():  # BatchNorm starts as the identity map with empty running statistics
        if k.endswith("running_mean") or k.endswith(".bias") and a[k].dim() == 1 and "bn" in k:
            assert torch.equal(v, torch.zeros_like(v)), k
        if k.endswith("running_var"):
            assert torch.equal(v, torch.ones_like(v)), k
        if k.endswith("num_batches_tracked"):
            assert v.dtype == torch.int64 and int(v) == 0


@pytest.mark.parametrize("name", ["cnn_bn", "resnet"])
def test_init_scale_multiplies_conv_and_linear_weights_only(name):
    one = build_model(ModelHP(name, 2, 5), (3, 40), 4, torch.Generator().manual_seed(0))
    three = build_model(ModelHP(name, 2, 5, init_scale=3.0), (3, 40), 4, torch.Generator().manual_seed(0))
    for (n, m1), m3 in zip(one.named_modules(), three.modules()):
        if isinstance(m1, (nn.Conv1d, nn.Linear)):
            torch.testing.assert_close(m3.weight, 3.0 * m1.weight, rtol=0, atol=0, msg=n)
            if m1.bias is not None:
                assert torch.equal(m3.bias, m1.bias), n
        if isinstance(m1, nn.BatchNorm1d):
            assert torch.equal(m3.weight, torch.ones(5)) and torch.equal(m3.bias, torch.zeros(5)), n


def test_init_parameters_resets_batchnorm_and_its_running_statistics():
    model = build_model(ModelHP("cnn_bn", 2, 4), (1, 8, 8), 10, torch.Generator().manual_seed(0))
    model(torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)))  # train mode: stats move
    bn = model.net[1]
    with torch.no_grad():
        bn.weight.fill_(2.0)
    assert int(bn.num_batches_tracked) == 1 and not torch.equal(bn.running_var, torch.ones(4))
    init_parameters(model, torch.Generator().manual_seed(0))
    fresh = build_model(ModelHP("cnn_bn", 2, 4), (1, 8, 8), 10, torch.Generator().manual_seed(0)).state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["cnn_bn", "resnet"])
def test_builds_on_the_meta_device_without_drawing(name):
    """The stacked trainer and the store's checkpoint check build the structure on ``meta``."""
    with torch.device("meta"):
        model = build_model(ModelHP(name, 2, 4), (1, 8, 8), 10)
    assert all(v.is_meta for v in model.state_dict().values())
    assert any(k.endswith("num_batches_tracked") for k in model.state_dict())


@pytest.mark.parametrize("cls", [ConvBNNet, ResNet])
def test_wrong_inputs_or_sizes_are_one_clear_error(cls):
    with pytest.raises(HParamsError, match=r"needs inputs shaped \(C, L\) or \(C, H, W\), got \(64,\)"):
        cls((64,), 10)
    for depth, width in ((0, 4), (2, 0)):
        with pytest.raises(HParamsError, match="needs model.depth >= 1 and model.width >= 1"):
            cls((1, 8, 8), 10, depth=depth, width=width)


@pytest.mark.parametrize("override,message", [("model.depth=0", "model.depth must be >= 1, got 0"),
                                              ("model.width=0", "model.width must be >= 1, got 0")])
@pytest.mark.parametrize("model", ["cnn_bn", "resnet"])
def test_an_invalid_size_fails_when_the_config_is_read(model, override, message):
    """Before any model is built or trained: the zoo's expansion validates every model's hyperparameters."""
    with pytest.raises(HParamsError) as err:
        expand(make_cfg("zoo=none", f"model={model}", "dataset=digits", override))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_batchnorm_makes_the_output_invariant_to_the_scale_of_the_weights_feeding_it(shape):
    """Multiplying the weights of every conv (each feeds a BatchNorm) by c > 0 leaves the output unchanged: in
    train mode (batch statistics) as it is; in eval mode when the running mean and variance are rescaled with
    them (c·μ, c²·σ²), as training at the rescaled weights would have made them. Exact up to rounding with
    BatchNorm's ε set to ~0 (ε is added to the variance, not scaled with it). The head is not invariant."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, *shape, generator=g).double()
    for name in ("cnn_bn", "resnet"):
        model = build_model(ModelHP(name, 3, 6), shape, 5, g).double()
        model(x)  # one train-mode pass, so that the running statistics are not the initial ones
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        assert len(convs) == len(norms)
        for bn in norms:
            bn.eps = 1e-12
        scaled, c = copy.deepcopy(model), 7.5
        with torch.no_grad():
            for m in scaled.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.weight.mul_(c)
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    m.running_mean.mul_(c)
                    m.running_var.mul_(c * c)
        torch.testing.assert_close(scaled.eval()(x), model.eval()(x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(copy.deepcopy(scaled).train()(x), copy.deepcopy(model).train()(x),
                                   rtol=1e-9, atol=1e-9)
        with torch.no_grad():
            [m for m in scaled.modules() if isinstance(m, nn.Linear)][-1].weight.mul_(c)
        assert not torch.allclose(scaled.eval()(x), model.eval()(x), rtol=1e-2)
