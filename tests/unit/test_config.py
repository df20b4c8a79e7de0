"""Config smoke tests: every option of every group composes and yields valid hyperparameters."""
from __future__ import annotations

import pytest

from benchmark.config import conf_dir
from benchmark.zoo import base_hparams, expand, varying_axes
from benchmark.zoo.hparams import HParams
from tests.conftest import make_cfg

GROUPS = ["dataset", "model", "optimizer", "zoo", "measures", "experiment"]


def _options(group):
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS:
        assert _options(group), group


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_config_composes(group, option):
    cfg = make_cfg(f"{group}={option}")
    hp = base_hparams(cfg)
    assert isinstance(hp, HParams)
    if group == "dataset":
        assert hp.dataset.name == option
    if group in ("model", "optimizer"):
        assert getattr(hp, group).name == option
    if group == "experiment" or group == "zoo" and option != "jiang":
        assert len(expand(cfg)) >= 1


def test_default_zoo_is_at_least_48_models_over_5_axes():
    cfg = make_cfg()
    hps = expand(cfg)
    assert len(hps) >= 48 and len(varying_axes(cfg)) >= 5
    assert len({hp.model_id for hp in hps}) == len(hps)


def test_jiang_zoo_is_7_axes_by_3_values():
    cfg = make_cfg("experiment=jiang")
    axes = varying_axes(cfg)
    assert len(axes) == 7
    assert len(expand(cfg)) == 3 ** 7
    shard = expand(make_cfg("experiment=jiang", "zoo.num_shards=100", "zoo.shard=3"))
    assert {hp.dataset.name for hp in shard} == {"cifar10"}


def test_shards_partition_the_zoo():
    shards = [expand(make_cfg("zoo.num_shards=5", f"zoo.shard={i}")) for i in range(5)]
    ids = [hp.model_id for s in shards for hp in s]
    assert sorted(ids) == sorted(hp.model_id for hp in expand(make_cfg()))


JIANG_AXES = {"hp.model.depth", "hp.model.width", "hp.model.dropout", "hp.optimizer.name", "hp.optimizer.lr",
              "hp.optimizer.weight_decay", "hp.train.batch_size"}


def test_the_standard_benchmark_is_replicated_and_varies_jiangs_axes_on_three_tasks():
    from benchmark.plan import make_plan, task_configs
    cfg = make_cfg("experiment=standard")
    tasks = task_configs(cfg)
    assert len(tasks) >= 3
    assert len({(c.dataset.name, c.model.name) for c in tasks.values()}) == len(tasks)  # different tasks
    total = 0
    for name, task in tasks.items():
        hps = expand(task)  # every model valid before anything trains
        total += len(hps)
        assert len(set(task.zoo.seeds)) >= 3, name
        assert len(JIANG_AXES & set(varying_axes(task))) >= 4, name
        assert task.leaderboard.name == f"standard-{name}"
    assert total >= 1000
    one = task_configs(make_cfg("experiment=standard", "suite.only=[digits-mlp]"))
    assert list(one) == ["digits-mlp"]
    plan = make_plan(cfg)  # the plan holds the same tasks, as plain values
    assert [t.name for t in plan.tasks] == list(tasks)
    assert [len(t.hparams) for t in plan.tasks] == [len(expand(t)) for t in tasks.values()]
    assert [t.axes for t in plan.tasks] == [tuple(varying_axes(t)) for t in tasks.values()]


def test_paths_are_absolute_from_where_the_config_was_composed(tmp_path, monkeypatch):
    """A relative path is resolved once, in the folder genbench started in: a later os.chdir (a plugin measure
    that changes folder) cannot move the store, the leaderboard, the data, the plugins or the sources."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(start)
    cfg = make_cfg("store.root=runs/s", "leaderboard.dir=${store.root}/lb", "dataset.root=data",
                   "measures.plugins=[my.py]", "collect.sources=[jobs/*/store]")
    monkeypatch.chdir(elsewhere)
    assert cfg.store.root == str(start / "runs" / "s")
    assert cfg.leaderboard.dir == str(start / "runs" / "s" / "lb")
    assert cfg.dataset.root == str(start / "data")
    assert list(cfg.measures.plugins) == [str(start / "my.py")]
    assert list(cfg.collect.sources) == [str(start / "jobs" / "*" / "store")]
    assert make_cfg("store.root=/abs/s").store.root == "/abs/s"


@pytest.mark.parametrize("overrides", [(), ("zoo=smoke",), ("zoo=none",), ("zoo.num_shards=5", "zoo.shard=4"),
                                       ("zoo.num_shards=7", "zoo.shard=0"), ("zoo.seeds=null",)])
def test_the_zoo_size_is_counted_without_expanding(overrides):
    from benchmark.zoo.grid import zoo_size
    cfg = make_cfg(*overrides)
    configurations, seeds, models = zoo_size(cfg)
    assert models == len(expand(cfg))
    assert configurations * seeds == len(expand(make_cfg(*overrides, "zoo.num_shards=1", "zoo.shard=0")))


@pytest.mark.parametrize("experiment", ["jiang", "standard"])
def test_the_shipped_experiments_fit_the_default_model_limit(experiment):
    from benchmark.plan import make_plan
    assert "models" in make_plan(make_cfg(f"experiment={experiment}")).scale


def test_an_empty_or_scalar_seed_list_is_refused():
    from benchmark.errors import HParamsError
    for bad in ("zoo.seeds=[]", "zoo.seeds=3"):
        with pytest.raises(HParamsError, match="is not a list of seeds"):
            expand(make_cfg(bad))
    assert {hp.seed for hp in expand(make_cfg("zoo.seeds=null", "seed=7"))} == {7}


def test_evaluate_targets_are_checked_before_anything_runs():
    from benchmark.errors import UserError
    from benchmark.plan import make_plan
    plan = make_plan(make_cfg("evaluate.targets=[metric.shift_gap,metric.shift.rotate,metric.gap_error]"))
    assert plan.evaluation.targets == ("metric.shift_gap", "metric.shift.rotate", "metric.gap_error")
    assert make_plan(make_cfg()).evaluation.targets == ("metric.gap_error", "metric.test_error", "metric.shift_gap")
    with pytest.raises(UserError, match=r"unknown target 'metric.gap'; valid: metric.gap_error, .*metric.shift_gap"):
        make_plan(make_cfg("evaluate.targets=[metric.gap]"))
    with pytest.raises(UserError, match="evaluate.targets is empty"):
        make_plan(make_cfg("evaluate.targets=[]"))
