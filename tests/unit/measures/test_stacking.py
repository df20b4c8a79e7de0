"""Tests of measures.stacking, the one stacked forward pass of the trainer and the measures: which networks it
compiles, that programs of one architecture are equal (the measures group models by program), that the stacked
pass gives each model's own logits, and that the measuring groups are the trainer's stacks split by optimizer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.measuring.jobs import group_key
from benchmark.zoo.hparams import stack_key
from benchmark.zoo.models import MLP, ConvNet
from measures import stacking
from tests.helpers import default_hparams


def _mlp(seed: int, width: int = 8, dropout: float = 0.0) -> MLP:
    torch.manual_seed(seed)
    return MLP((6,), 3, depth=2, width=width, dropout=dropout)


def _cnn(seed: int, in_shape: tuple[int, ...] = (2, 10)) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(in_shape, 3, depth=2, width=4)


def test_the_measures_stack_linear_networks_only():
    """The trainer compiles MLPs, ConvNets and BatchNorm nets; the measures' copies take the MLPs only (ConvNets
    and BatchNorm nets through vmap)."""
    assert stacking.program(_mlp(0)) is not None and stacking.program(_mlp(0, dropout=0.3)) is not None
    assert stacking.program(_cnn(0)) is None
    kinds = [op.kind for op in stacking.compile_program(_cnn(0)).ops]
    assert kinds == ["conv", "relu", "conv", "relu", "channelwise", "flatten", "linear"]
    batchnorm = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    assert stacking.program(batchnorm) is None and stacking.compile_program(batchnorm).buffers == (
        "1.running_mean", "1.running_var", "1.num_batches_tracked")
    for unsupported in (nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Sequential(nn.LayerNorm(4)),
                        nn.Sequential(nn.BatchNorm1d(4, momentum=None)),
                        nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False))):
        assert stacking.program(unsupported) is None
        with pytest.raises(NotImplementedError):
            stacking.compile_program(unsupported)
    shared = nn.Linear(4, 4)
    with pytest.raises(NotImplementedError, match="used twice"):
        stacking.compile_program(nn.Sequential(shared, nn.ReLU(), shared))


def test_programs_of_one_architecture_are_equal():
    a, b = stacking.program(_mlp(0, dropout=0.1)), stacking.program(_mlp(1, dropout=0.4))
    assert a == b and hash(a) == hash(b)  # dropout is the identity in eval mode, whatever its rate
    assert a != stacking.program(_mlp(0, width=9)) and a != stacking.program(_mlp(0))
    assert stacking.compile_program(_cnn(0)) == stacking.compile_program(_cnn(1))
    assert stacking.compile_program(_cnn(0)) != stacking.compile_program(_cnn(0, in_shape=(2, 6, 6)))


@pytest.mark.parametrize("make, in_shape", [(_mlp, (6,)), (_cnn, (2, 10)), (lambda s: _cnn(s, (2, 6, 6)), (2, 6, 6))])
@pytest.mark.parametrize("shared", [False, True])
def test_the_stacked_pass_gives_each_models_logits(make, in_shape, shared):
    models = [make(seed).eval() for seed in range(3)]
    prog = stacking.compile_program(models[0])
    flat = stacking.stack(prog, [dict(m.named_parameters()) for m in models])
    assert flat.shape == (3, sum(p.numel() for p in models[0].parameters()))
    x = torch.randn(3, 5, *in_shape, generator=torch.Generator().manual_seed(0))
    got = stacking.forward(prog, stacking.views(prog, flat), x[0] if shared else x, shared=shared)
    for j, m in enumerate(models):
        torch.testing.assert_close(got[j], m(x[0] if shared else x[j]), rtol=1e-5, atol=1e-6)


def test_flat_index_points_at_the_models_own_entries():
    models = [_mlp(seed) for seed in range(2)]
    prog = stacking.program(models[0])
    flat = stacking.stack(prog, [dict(m.named_parameters()) for m in models])
    for name, p in models[1].named_parameters():
        index = torch.arange(p.numel())
        assert torch.equal(flat[1, stacking.flat_index(prog, name, index)], p.detach().reshape(-1)), name


def test_measuring_groups_are_stacks_split_by_optimizer():
    hp = default_hparams()
    for other in ({"optimizer.lr": 0.5}, {"model.dropout": 0.2}, {"seed": 3}):
        assert stack_key(hp.replace(**other)) == stack_key(hp) and group_key(hp.replace(**other)) == group_key(hp)
    adam = hp.replace(**{"optimizer.name": "adam"})
    assert stack_key(adam) == stack_key(hp) and group_key(adam) != group_key(hp)
    assert group_key(hp) == stack_key(hp) + (hp.optimizer.name,)
    wider = hp.replace(**{"model.width": hp.model.width + 1})
    assert stack_key(wider) != stack_key(hp) and group_key(wider) != group_key(hp)
