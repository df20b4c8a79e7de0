"""The leaderboard's text: columns that cannot separate the measures, the opening sentences, the tier figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import PIL.Image

from benchmark.evaluation.board import Board
from benchmark.report import plots, summary, tables

NOISE = {"n_converged": 4, "n_models": 4, "gap_min": 0.1, "gap_max": 0.3, "gap_spread": 0.2, "spread_over_se": 5.0,
         "test_error_se": 0.04}


def _rows(n=10, max_values=None, tiers=None):
    max_values = max_values if max_values is not None else [1.0] * n
    return pd.DataFrame({"measure": [f"m{k}" for k in range(n)], "target": "gap_error", "family": "f",
                         "tau": np.linspace(0.9, 0.0, n), "tau_lo": np.linspace(0.85, -0.05, n),
                         "tau_hi": np.linspace(0.95, 0.05, n), "sign_error_max": max_values,
                         "sign_error_p90": np.linspace(0.1, 0.9, n), "sign_error_n_envs": [36, 76] * (n // 2),
                         "tier": tiers if tiers is not None else [1, 1, 2, 2, 2, 3, 3, 4, 4, 5][:n],
                         "tied_with_best": [True, True] + [False] * (n - 2)})


def test_a_worst_case_column_that_is_flat_is_explained_not_printed():
    t = _rows(max_values=[1.0] * 8 + [0.5, 0.33])
    flat = tables.flat_columns(t)
    assert set(flat) == {"sign_error_max"}  # 8 of 10 at 1.00; the p90 varies
    assert "it is 1.00 for 8 of the 10 measures" in flat["sign_error_max"] and "36–76 usable" in flat["sign_error_max"]
    assert tables.flat_columns(_rows(max_values=[1.0] * 7 + [0.5, 0.4, 0.3])) == {}  # 7 of 10: it still separates
    assert tables.flat_columns(_rows(max_values=[1.0 - 1e-4] * 4 + [1.0] * 6)) != {}  # equal as printed


def test_markdown_opens_with_the_tier_of_one_and_the_baselines():
    t = _rows()
    base = pd.DataFrame({"measure": ["baseline.noisy_oracle", "baseline.axis.model.width", "baseline.axis.lr",
                                     "baseline.random"], "target": "gap_error", "tau": [0.95, 0.5, 0.2, 0.01]})
    base = base.assign(tau_lo=base.tau - 0.05, tau_hi=base.tau + 0.05, psi=0.0, psi_lo=0.0, psi_hi=0.0,
                       sign_error_mean=0.2)
    text = summary.lead_text(t, base)
    assert text.startswith("**#1 predicting `gap_error`:** `m0`, τ = 0.90 [0.85, 0.95].")
    assert "cannot tell 1 other measure apart from it (`m0`, `m1`)" in text
    assert "the best single axis (`model.width`) τ = 0.50, beaten by 4 of the 10 measures" in text
    assert "random τ = 0.01" in text
    alone = summary.lead_text(t.assign(tied_with_best=[True] + [False] * 9), None)
    assert "separates it from every other measure" in alone
    md = tables.markdown(Board("x", t.assign(psi=0.1, psi_lo=0.0, psi_hi=0.2, cmi=0.01, cmi_null=0.001,
                                             sign_error_mean=0.1, seconds=0.01, failures=0), pd.DataFrame(),
                               NOISE, baselines=base, axes=[]))
    assert md.index("**#1 predicting") < md.index("converged models") < md.index("## Predicting")
    assert "sign err. mean / max" not in md and "The sign error's maximum is not shown" in md
    assert "| 1 | 1 | `m0` |" in md and "| 10 | 5 | `m9` |" in md
    assert "Holm-adjusted, α = 0.05)" in md
    stricter = tables.markdown(Board("x", t.assign(psi=0.1, psi_lo=0.0, psi_hi=0.2, cmi=0.01, cmi_null=0.001,
                                                   sign_error_mean=0.1, seconds=0.01, failures=0), pd.DataFrame(),
                                     NOISE, alpha=0.01, axes=[]))
    assert "Holm-adjusted, α = 0.01)" in stricter and "α = 0.05" not in stricter  # the board's level, not a constant


def test_tier_figure(tmp_path):
    path = plots.write_tiers(_rows(), tmp_path / "tiers.png")
    assert path.read_bytes() != plots.write_tiers(_rows(), tmp_path / "strict.png", alpha=0.01).read_bytes()
    with PIL.Image.open(path) as image:
        assert image.format == "PNG" and image.height > 200
    assert plots.write_tiers(_rows().assign(tier=None), tmp_path / "none.png") is None


def test_an_undefined_sign_error_is_said_once_and_left_out():
    t = _rows().assign(sign_error_mean=np.nan, sign_error_max=np.nan, sign_error_p90=np.nan,
                       sign_error_n_below=576)
    flat = tables.flat_columns(t)
    assert set(flat) == {"sign_error_mean", "sign_error_max", "sign_error_p90"}
    assert "all 576 environments fall below the minimum effective sample size" in flat["sign_error_mean"]
    md = tables.markdown(Board("x", t.assign(psi=0.1, psi_lo=0.0, psi_hi=0.2, cmi=0.01, cmi_null=0.001,
                                             seconds=0.01, failures=0), pd.DataFrame(), NOISE, axes=[]))
    head = next(line for line in md.splitlines() if line.startswith("| # |"))
    assert "sign err" not in head and md.count("The robust sign error is undefined") == 1
    rule = md.splitlines()[md.splitlines().index(head) + 1]
    assert rule.count("---") == head.count("|") - 1


def test_the_terminal_table_says_why_the_sign_error_is_missing():
    t = _rows().assign(psi=0.1, psi_lo=0.0, psi_hi=0.2, cmi=0.01, seconds=0.01, failures=0, sign_error_mean=np.nan,
                       sign_error_max=np.nan, sign_error_p90=np.nan, sign_error_n_below=12)
    text = tables.terminal(t)
    assert "sign_err" not in text.splitlines()[0] and "The robust sign error is undefined" in text
    shown = tables.terminal(t.assign(sign_error_mean=0.1, sign_error_max=1.0))
    assert "sign_err" in shown.splitlines()[0] and "not shown" not in shown


def test_the_noise_sentence_says_whether_the_test_set_sees_seed_level_differences():
    seeds = {"gap_sd_seed": 0.01, "test_error_sd_seed": 0.01, "gap_sd_config": 0.05, "gap_config_over_seed": 5.0}
    small = summary.noise_text({**NOISE, **seeds, "test_error_se": 0.008})
    assert "0.80× the gap's seed-to-seed deviation" in small and "the test set is too small" in small
    large = summary.noise_text({**NOISE, **seeds, "test_error_se": 0.005})
    assert "0.50×" in large and "large enough to see seed-level differences" in large
    assert "½×" not in summary.noise_text({**NOISE, "gap_sd_seed": float("nan")})  # no replicates: no verdict
