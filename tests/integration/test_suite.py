"""A suite end to end: two tiny tasks trained, measured and evaluated as one benchmark, then the cross-task
summary, the per-task leaderboards, the page and the terminal table; and the suite's user errors."""
from __future__ import annotations

import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from benchmark import pipeline
from benchmark.errors import UserError
from benchmark.evaluation import suite as cross_task
from benchmark.plan import task_configs
from benchmark.report import layout
from tests.conftest import make_cfg

BASE = ["dataset.test_size=300", "model.depth=1", "train.batch_size=50", "train.target_loss=0.3",
        "train.max_epochs=300", "run.jobs=1", "run.threads=1", "run.progress=false", "evaluate.n_boot=30",
        "measures.include=[params,log_prod_of_fro,dist_init_fro,param_norm]"]
TASKS = {"wide": {"dataset": {"name": "digits", "train_size": 300, "test_size": 300}, "optimizer": {"lr": 0.5},
                  "axes": {"dataset": {"train_size": [150, 300]}, "model": {"width": [8, 16]}}},
         "fast": {"dataset": {"name": "digits", "train_size": 200, "test_size": 300},
                  "axes": {"optimizer": {"lr": [0.4, 0.6]}, "model": {"width": [8, 12]}}}}


def _suite_cfg(tmp_path, **suite):
    cfg = make_cfg(*BASE, f"store.root={tmp_path / 'store'}", f"leaderboard.dir={tmp_path / 'lb'}")
    with open_dict(cfg):
        cfg.suite = OmegaConf.create({"name": "mini", "seeds": [0, 1], "only": None, "tasks": TASKS, **suite})
    return cfg


def test_a_suite_runs_every_task_and_summarises_them(tmp_path):
    cfg = _suite_cfg(tmp_path)
    tasks = task_configs(cfg)
    assert list(tasks) == ["wide", "fast"]
    assert tasks["fast"].leaderboard.name == "mini-fast" and tasks["fast"].optimizer.lr == 0.1  # axis replaces it
    assert tasks["wide"].optimizer.lr == 0.5 and tasks["wide"].model.depth == 1  # the task's and the base's
    text = pipeline.run(cfg)
    lb = tmp_path / "lb"
    assert set(layout.boards(lb)) == {"mini-wide", "mini-fast"} and layout.suites(lb) == ["mini"]
    files = layout.SuiteFiles(lb, "mini")
    cross = pd.read_csv(files.results)
    assert len(cross) == 4 and {"tau.wide", "tau.fast", "tier.wide", "worst_tau"} <= set(cross.columns)
    for task in ("wide", "fast"):
        board = pd.read_csv(layout.BoardFiles(lb, f"mini-{task}").results)
        gap = board[board.target == "gap_error"].set_index("measure")
        assert cross.set_index("measure")[f"tau.{task}"].to_dict() == pytest.approx(gap.tau.to_dict())
        assert gap.tier.notna().all() and gap.tier.min() == 1
    worst = cross[["tau.wide", "tau.fast"]].min(axis=1)
    assert cross.worst_tau.tolist() == pytest.approx(worst.tolist())
    assert cross.worst_tau.is_monotonic_decreasing
    md = files.markdown.read_text()
    assert "Kendall's coefficient of concordance" in md and "[mini-wide](mini-wide.md)" in md
    assert len(pd.read_csv(files.agreement)) == 1 and files.figure.exists()
    page = (lb / "index.html").read_text()
    assert 'id="mini"' in page and page.index('id="mini"') < page.index('id="mini-wide"')
    assert "<p>Over the " in page and "measures every task ranks" in page  # the suite's agreement, from memory
    stored = cross_task.load(files.typed)  # the typed suite the page was rendered from
    assert list(stored.tasks) == ["wide", "fast"] and list(stored.cross.columns) == list(cross.columns)
    assert stored.tasks["wide"]["family"] == "MLP" and "| wide | MLP | 8 (" in md  # the architectures' family
    assert len(stored.families) == 1 and "By architecture family" not in md  # one family: nothing to compare
    assert stored.cross.worst_tau.tolist() == pytest.approx(cross.worst_tau.tolist())
    assert "Suite mini" in (lb / "README.md").read_text()
    assert "worst_tau" in text and "param_norm" in text
    # one task again: nothing retrained, and the summary keeps the other task from its leaderboard on disk
    only = _suite_cfg(tmp_path, only=["fast"])
    assert pipeline.train(only) == {"trained": 0, "reused": 8, "converged": 8}
    assert set(pipeline.evaluate(only).task) == {"fast"}
    again = pd.read_csv(files.results)
    assert {"tau.wide", "tau.fast"} <= set(again.columns)
    wide = cross.set_index("measure")["tau.wide"].to_dict()
    assert again.set_index("measure")["tau.wide"].to_dict() == pytest.approx(wide)


def test_suite_mistakes_are_one_line(tmp_path):
    with pytest.raises(UserError, match="valid: wide, fast"):
        task_configs(_suite_cfg(tmp_path, only=["nope"]))
    bad = {**TASKS, "odd": {"dataset": {"name": "digits"}, "zoo": {"axes": {}}}}
    with pytest.raises(UserError, match="a task sets only dataset, model, optimizer, train, axes"):
        task_configs(_suite_cfg(tmp_path, tasks=bad))
    with pytest.raises(UserError, match="no suite summary"):
        pipeline.leaderboard(_suite_cfg(tmp_path))
