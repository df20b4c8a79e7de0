"""Early prediction end to end on a real tiny zoo: the kept weights travel through the store (and a merge), the
early values equal the measure computed by hand on those weights, a rerun reuses them, unusable measures are
refused in one line, and the table's τ is Kendall's τ of the oriented early values against the final gap."""
from __future__ import annotations

import pytest

import measures
from benchmark import pipeline
from benchmark.errors import UserError
from benchmark.evaluation import leaderboard as lb
from benchmark.evaluation import stats
from benchmark.measuring.context import Trained
from benchmark.measuring.early import check_early, measure_early
from benchmark.plan import make_plan
from benchmark.runtime import RunOptions
from benchmark.store import CheckpointError, Store, merge
from benchmark.zoo.datasets import make_data
from tests.conftest import TINY_MODELS

EARLY = ["log_prod_of_fro", "dist_init_fro"]  # the tiny zoo's early.measures (tests/conftest.py)


@pytest.fixture
def zoo(trained_tiny):
    cfg = trained_tiny()
    return cfg, Store(cfg.store.root)


def test_every_model_kept_its_snapshots_and_the_early_values_are_the_measure_on_them(zoo):
    cfg, store = zoo
    ids = sorted(store.model_ids())
    assert len(ids) == TINY_MODELS
    early = store.early()
    assert len(early) == TINY_MODELS * 3 * len(EARLY) and set(early.status) == {"ok"}
    model_id = ids[0]
    hp, metrics, history = store.model_record(model_id)
    snaps = store.load_snapshots(model_id)
    assert [s["fraction"] for s in snaps] == [0.25, 0.5, 0.75]
    assert all(1 <= s["epoch"] < metrics["epochs"] for s in snaps)
    init, _ = store.load_states(model_id)
    data = make_data(hp.dataset)
    for snap in snaps:
        ctx = Trained.from_states(hp, init, snap["state"], data, history[:snap["epoch"]]).context()
        want = measures.REGISTRY.get("dist_init_fro")(ctx).value
        got = early[(early.model_id == model_id) & (early.fraction == snap["fraction"])
                    & (early.measure == "dist_init_fro")]
        assert got.value.item() == pytest.approx(want, rel=1e-9) and got.epoch.item() == snap["epoch"]
    # a rerun computes nothing new
    again = measure_early(ids, store, EARLY, (0.25, 0.5, 0.75), RunOptions(progress=False))
    assert again["computed"] == 0 and again["without_snapshots"] == 0


def test_snapshots_travel_with_a_merge_and_go_with_a_deleted_model(zoo, tmp_path):
    _, store = zoo
    dest = Store(tmp_path / "merged")
    merge(dest, store)
    model_id = sorted(store.model_ids())[0]
    assert dest.early_path(model_id).read_bytes() == store.early_path(model_id).read_bytes()
    assert len(dest.early()) == len(store.early())
    dest.delete_model(model_id)
    assert not dest.early_path(model_id).exists() and model_id not in set(dest.early().model_id)


def test_a_truncated_early_checkpoint_is_named(zoo):
    _, store = zoo
    model_id = sorted(store.model_ids())[0]
    path = store.early_path(model_id)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="early checkpoint .* is corrupt or truncated"):
        store.load_snapshots(model_id)


def test_measures_that_need_more_than_the_weights_are_refused_in_one_line():
    with pytest.raises(UserError, match=r"steps_to_0\.1 \(reads history\).*replicate\.barrier \(reads replicates\)"):
        check_early(["log_sum_of_fro", "steps_to_0.1", "replicate.barrier"])


def test_a_bad_fraction_fails_before_training(tiny_cfg):
    with pytest.raises(UserError, match="strictly between 0 and 1"):
        make_plan(tiny_cfg("early.fractions=[0.5,1.0]"))
    assert make_plan(tiny_cfg("early.measures=[]")).early.fractions == ()


def test_the_table_is_kendall_tau_of_the_oriented_early_values(zoo):
    cfg, store = zoo
    df = store.frame(measures={m: measures.REGISTRY.get(m).version for m in EARLY})
    info = lb.measure_info(check_early(EARLY))
    table = lb.early_table(df, store.early(), info, ["hp.dataset.train_size", "hp.model.width"], n_boot=20)
    assert set(table.fraction) == {0.25, 0.5, 0.75, 1.0}
    early = store.early()
    for r in table.itertuples():
        sign = measures.REGISTRY.get(r.measure).sign
        if r.fraction == 1.0:
            column = sign * df[f"measure.{r.measure}"]
        else:
            e = early[(early.measure == r.measure) & (early.fraction == r.fraction)].set_index("model_id").value
            column = sign * df.model_id.map(e)
        by_hand = stats.kendall_tau(df.assign(x=column), "x", "metric.gap_error")
        assert r.tau == pytest.approx(by_hand, abs=1e-12)
        assert r.tau_final == pytest.approx(table[(table.measure == r.measure) & (table.fraction == 1.0)].tau.item())


def test_the_leaderboard_writes_the_early_table(zoo):
    cfg, _ = zoo
    pipeline.evaluate(cfg)
    files = make_plan(cfg).board
    assert files.early.exists()
    text = files.markdown.read_text()
    assert "## Early prediction" in text and "`dist_init_fro`" in text.split("## Early prediction")[1]
    assert "Early prediction" in (files.folder / "index.html").read_text()
