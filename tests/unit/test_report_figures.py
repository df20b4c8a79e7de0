"""Figures are drawn again only when what they show changed: a second drawing of the same board draws nothing,
a changed measure draws its scatter and the figures that rank every measure, an unreadable manifest draws
everything, and whatever was reused or drawn is byte for byte what a full drawing gives."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from benchmark.evaluation import board
from benchmark.evaluation import leaderboard as lb
from benchmark.report import figure_cache, layout, plots
from tests.unit.evaluation.stats.zoos import AXES, make_zoo

TARGETS = ["metric.gap_error"]
AGGREGATES = [layout.SUMMARY_FIGURE, layout.HEATMAP_FIGURE, layout.TIERS_FIGURE, layout.COST_FIGURE]


class _Measure:
    def __init__(self, name):
        self.name, self.family, self.sign, self.oracle, self.version = name, "f", 1, False, 1
        self.sample_size, self.invariances, self.description, self.reference = None, (), f"{name}.", "a test"


def _board(df: pd.DataFrame) -> board.Board:
    names = [c.removeprefix("measure.") for c in df if c.startswith("measure.")]
    info = lb.measure_info([_Measure(n) for n in names])
    costs = pd.DataFrame({"measure": info.measure, "seconds": np.linspace(0.001, 0.5, len(names)), "failures": 0,
                          "failure_message": None, "not_applicable": 0, "not_applicable_reason": None})
    return board.build("zoo-data", df, info, costs, AXES, TARGETS, n_boot=20, seed=0)


@pytest.fixture(scope="module")
def zoo() -> pd.DataFrame:
    df = make_zoo(seed=3, n_seeds=2, unconverged=2)
    df.insert(0, "model_id", [f"m{i:02d}" for i in range(len(df))])
    return df


def _changed(df: pd.DataFrame) -> pd.DataFrame:
    """``noise`` measured again with other values; every other column as it was."""
    return df.assign(**{"measure.noise": np.random.default_rng(7).standard_normal(len(df))})


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_a_second_drawing_of_the_same_board_draws_nothing(zoo, tmp_path):
    built = _board(zoo)
    first = plots.write(built, tmp_path)
    assert sorted(first.drawn) == sorted(first) and first.reused == []
    assert len(first) == 5 + len(AGGREGATES)  # five measures ranked on gap_error
    manifest = json.loads((tmp_path / figure_cache.MANIFEST).read_text())
    assert set(manifest["figures"]) == {p.relative_to(tmp_path).as_posix() for p in first}
    before = {p: p.stat().st_mtime_ns for p in [*first, tmp_path / figure_cache.MANIFEST]}
    again = plots.write(built, tmp_path)
    assert list(again) == list(first) and again.drawn == [] and again.reused == list(first)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # not one file written, the manifest included


def test_a_changed_measure_draws_its_scatter_and_the_figures_that_rank_it(zoo, tmp_path):
    plots.write(_board(zoo), tmp_path)
    changed = plots.write(_board(_changed(zoo)), tmp_path)
    expected = {"scatter/noise.png", layout.SUMMARY_FIGURE, layout.HEATMAP_FIGURE, layout.TIERS_FIGURE,
                layout.COST_FIGURE}
    assert {p.relative_to(tmp_path).as_posix() for p in changed.drawn} == expected
    assert len(changed.reused) == len(changed) - len(expected)


def test_values_rescaled_draw_only_their_scatter(zoo, tmp_path):
    """τ, Ψ and their intervals depend on ranks alone: ten times the values change the scatter's x axis and no
    cell of the table, so no other figure is drawn."""
    before = _board(zoo)
    plots.write(before, tmp_path)
    rescaled = _board(zoo.assign(**{"measure.perfect": 10 * zoo["measure.perfect"]}))
    pd.testing.assert_frame_equal(rescaled.table, before.table)
    assert plots.write(rescaled, tmp_path).drawn == [tmp_path / layout.scatter_file("perfect")]


def test_incremental_drawing_gives_the_bytes_of_a_full_drawing(zoo, tmp_path):
    full, incremental = tmp_path / "full", tmp_path / "incremental"
    plots.write(_board(_changed(zoo)), full)
    plots.write(_board(zoo), incremental)
    stale = incremental / layout.scatter_file("gone")
    shutil.copy(incremental / layout.scatter_file("noise"), stale)  # a measure no longer on the board
    assert plots.write(_board(_changed(zoo)), incremental).drawn
    assert not stale.exists()
    assert _files(incremental) == _files(full) and len(_files(full)) == 9
    assert (incremental / figure_cache.MANIFEST).read_bytes() == (full / figure_cache.MANIFEST).read_bytes()


def test_a_corrupt_or_missing_manifest_or_figure_draws_again(zoo, tmp_path):
    built = _board(zoo)
    first = plots.write(built, tmp_path)
    full = _files(tmp_path)
    manifest = tmp_path / figure_cache.MANIFEST
    for corrupt in ("{not json", json.dumps({"format": 99, "figures": {}}), json.dumps([1, 2]), ""):
        manifest.write_text(corrupt)
        assert sorted(plots.write(built, tmp_path).drawn) == sorted(first), corrupt
        assert _files(tmp_path) == full
    manifest.unlink()
    assert sorted(plots.write(built, tmp_path).drawn) == sorted(first)
    (tmp_path / layout.scatter_file("depth")).unlink()
    assert plots.write(built, tmp_path).drawn == [tmp_path / layout.scatter_file("depth")]
    assert _files(tmp_path) == full


def test_an_interrupted_drawing_leaves_no_entry_for_the_figures_it_was_drawing(zoo, tmp_path):
    """A drawing stopped part-way (an error, Ctrl-C) may already have replaced some of the figures it was drawing:
    the manifest forgets them first, so the next drawing of the old board draws them again."""
    plots.write(_board(zoo), tmp_path)
    entries = json.loads((tmp_path / figure_cache.MANIFEST).read_text())["figures"]
    manifest = figure_cache.Manifest(tmp_path)
    manifest.drop([tmp_path / layout.SUMMARY_FIGURE, tmp_path / layout.scatter_file("noise")])
    left = json.loads((tmp_path / figure_cache.MANIFEST).read_text())["figures"]
    assert set(entries) - set(left) == {layout.SUMMARY_FIGURE, "scatter/noise.png"}
    drawn = plots.write(_board(zoo), tmp_path).drawn
    assert {p.relative_to(tmp_path).as_posix() for p in drawn} == {layout.SUMMARY_FIGURE, "scatter/noise.png"}


def test_the_digest_follows_values_not_objects():
    frame = pd.DataFrame({"a": [1.0, np.nan], "b": ["x", None]})
    assert figure_cache.digest(frame, [1, "a"]) == figure_cache.digest(frame.copy(), [1, "a"])
    assert figure_cache.digest(frame) != figure_cache.digest(frame.assign(a=[1.0, 2.0]))
    assert figure_cache.digest(frame) != figure_cache.digest(frame.rename(columns={"b": "c"}))
    assert figure_cache.digest(["ab", "c"]) != figure_cache.digest(["a", "bc"])  # parts cannot run together
    assert figure_cache.digest((frame, "x")) != figure_cache.digest((frame, "y"))


def test_the_figure_code_is_part_of_every_digest(tmp_path):
    source = tmp_path / "plots.py"
    source.write_text("x = 1\n")
    before = figure_cache.sources_digest([source], "matplotlib 3.9.0")
    assert figure_cache.sources_digest([source], "matplotlib 3.9.1") != before
    source.write_text("x = 2\n")
    assert figure_cache.sources_digest([source], "matplotlib 3.9.0") != before


def test_the_suite_figure_is_drawn_only_when_its_table_changed(tmp_path):
    cross = pd.DataFrame({"measure": ["a", "b"], "worst_tau": [0.5, 0.1], "tau.x": [0.5, 0.2], "tau.y": [0.6, 0.1]})
    path = tmp_path / "suite" / layout.TASKS_FIGURE
    plots.write_tasks(cross, ["x", "y"], path)
    first, stamp = path.read_bytes(), path.stat().st_mtime_ns
    plots.write_tasks(cross.assign(other=1), ["x", "y"], path)  # a column the figure does not read
    assert path.stat().st_mtime_ns == stamp
    plots.write_tasks(cross.assign(**{"tau.y": [0.6, 0.3]}), ["x", "y"], path)
    assert path.read_bytes() != first
    plots.write_tasks(cross, ["x", "y"], path)
    assert path.read_bytes() == first


def test_figures_drawn_in_another_process_are_the_bytes_drawn_here(zoo, tmp_path, caplog):
    from benchmark.report.drawing import Drawer
    here, there = tmp_path / "here", tmp_path / "there"
    with Drawer(background=False) as drawer:
        drawer.draw(_board(zoo), here)
    with caplog.at_level("INFO", logger="genbench"), Drawer(background=True) as drawer:
        drawer.draw(_board(zoo), there)  # in the other process
        drawer.draw(_board(zoo), tmp_path / "shared", last=True)  # in both: each about half of the figures
    for folder in (there, tmp_path / "shared"):
        assert _files(folder) == _files(here) and len(_files(here)) == 9
        assert (folder / figure_cache.MANIFEST).read_bytes() == (here / figure_cache.MANIFEST).read_bytes()
    assert sorted(r.getMessage() for r in caplog.records) == [f"figures: 9 drawn, 0 reused under {tmp_path / f}"
                                                              for f in ("shared", "there")]


def test_figures_shared_between_two_processes_are_split_by_their_cost():
    from concurrent.futures import ThreadPoolExecutor
    done = []
    jobs = [(cost, lambda name: done.append(name), (name,)) for cost, name in [(1.0, "a"), (0.9, "b"), (0.6, "c"),
                                                                               (0.5, "d"), (2.0, "e")]]
    with ThreadPoolExecutor(1) as helper:
        submitted = []
        original = helper.submit
        helper.submit = lambda fn, *args: submitted.append(args[0]) or original(fn, *args)
        plots._run(jobs, helper)
    assert sorted(done) == ["a", "b", "c", "d", "e"]
    assert submitted == ["a", "b", "c"]  # e (2.0) here; a, b, c there (1.0, 1.9, 2.5); d here (2.5)


def test_an_error_in_the_drawing_process_is_raised_when_its_figures_are_awaited(zoo, tmp_path):
    from benchmark.report.drawing import Drawer
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the figures' folder should be")
    with pytest.raises(NotADirectoryError), Drawer(background=True) as drawer:
        drawer.draw(_board(zoo), blocked)


def test_the_cost_figure_draws_an_interval_that_does_not_contain_its_estimate(tmp_path):
    """A bootstrap interval over a handful of models can miss the point estimate (4 models of a conv zoo did
    this); the figure draws the interval as it is instead of failing."""
    table = pd.DataFrame({"measure": ["a", "b", "c"], "target": "gap_error", "seconds": [0.01, 0.1, 1.0],
                          "tau": [0.5, 0.2, -0.1], "tau_lo": [0.6, 0.1, -0.3], "tau_hi": [0.9, 0.3, np.nan],
                          "tier": [1, 2, 3], "p_holm": [np.nan, 0.01, 0.001]})
    path = plots.write_cost(table, tmp_path / "cost.png")
    assert path is not None and path.stat().st_size > 1000
