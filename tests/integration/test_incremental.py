"""Scoring a new measure against a stored zoo: `genbench evaluate` computes the statistics of that measure alone, and
writes the same leaderboard, file by file, as an evaluation without the cache; a change to the zoo or the settings
recomputes everything and says why in one line."""
from __future__ import annotations

import logging
import textwrap

import pytest

from benchmark import pipeline
from benchmark.store import Store

TABLES = ("*.csv", "*.md", "*.json", "*.html")


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "incremental_plugin.py"
    path.write_text(textwrap.dedent('''
        from measures import measure

        @measure("incremental.weight_l1", needs=("model",), sign=1, family="plugin", reference="a test")
        def weight_l1(ctx):
            """Sum of the absolute weights."""
            return sum(float(w.abs().sum()) for w in ctx.weights)
    '''))
    yield path
    import measures
    from measures import plugins
    if "incremental.weight_l1" in measures.REGISTRY:
        measures.REGISTRY.remove("incremental.weight_l1")
    plugins._LOADED.discard(str(path.resolve()))


def _lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _tables(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for pattern in TABLES for p in sorted(folder.glob(pattern))}


def test_a_plugin_is_scored_alone_and_the_board_equals_a_full_evaluation(trained_tiny, tmp_path, plugin, caplog):
    include = "measures.include=[params,log_prod_of_fro,dist_init_fro,incremental.weight_l1]"
    with caplog.at_level(logging.INFO, logger="genbench"):
        pipeline.evaluate(trained_tiny())
        assert (tmp_path / "store" / "cache" / "statistics.sqlite").exists()
        cfg = trained_tiny(f"measures.plugins=[{plugin}]", include)
        assert pipeline.measure(cfg)["computed"] == 4
        caplog.clear()
        pipeline.evaluate(cfg)
    [line] = _lines(caplog, "statistics of smoke-digits")
    assert line.startswith("statistics of smoke-digits: 1 of 4 ranked measures computed,"), line
    full = trained_tiny(f"measures.plugins=[{plugin}]", include, "evaluate.cache=false",
                        f"leaderboard.dir={tmp_path / 'full'}")
    pipeline.evaluate(full)
    incremental, recomputed = _tables(tmp_path / "lb"), _tables(tmp_path / "full")
    assert "smoke-digits.board.json" in incremental and incremental.keys() == recomputed.keys()
    for name in incremental:
        assert incremental[name] == recomputed[name], name


def test_a_changed_setting_or_zoo_recomputes_and_says_why(trained_tiny, tmp_path, caplog):
    pipeline.evaluate(trained_tiny())
    with caplog.at_level(logging.INFO, logger="genbench"):
        pipeline.evaluate(trained_tiny("evaluate.n_boot=21"))
    [why] = _lines(caplog, "recomputing every measure")
    assert "the evaluation settings changed (n_boot 20 → 21)" in why and "zoo" not in why
    [line] = _lines(caplog, "ranked measures computed")
    assert "3 of 3 ranked measures computed" in line

    store = Store(tmp_path / "store")
    store.delete_model(sorted(store.model_ids())[0])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="genbench"):
        pipeline.evaluate(trained_tiny("evaluate.n_boot=21"))
    [why] = _lines(caplog, "recomputing every measure")
    assert "the zoo changed (4 → 3 models)" in why

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="genbench"):
        pipeline.evaluate(trained_tiny("evaluate.n_boot=21"))
    assert not _lines(caplog, "recomputing every measure")
    [line] = _lines(caplog, "ranked measures computed")
    assert line.startswith("statistics of smoke-digits: 0 of 3 ranked measures computed,")
