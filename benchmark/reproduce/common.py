"""Shared pieces of the paper reproductions (``genbench reproduce pnas|prl|nmi|mlst``): the protocol files,
the thread setting, and the statistics over seeds that every reported trend carries."""
from __future__ import annotations

import math
import time
import typing
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from benchmark.config import conf_dir
from benchmark.errors import UserError
from benchmark.measuring.context import Trained
from benchmark.training.loop import train_model
from benchmark.zoo.datasets import DataBundle
from benchmark.zoo.hparams import DatasetHP, HParams, ModelHP, OptimizerHP, TrainHP
from measures.seeding import generator

PROFILES = ("default", "full", "quick")


@contextmanager
def one_thread():
    """Run on one intra-op thread: the reproductions' matrices are small, and extra threads only add
    synchronisation on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def protocol_file(paper: str):
    return conf_dir() / "reproduce" / f"{paper}.yaml"


def load_protocol(paper: str, cls, profile: str = "default", overrides: Sequence[str] = ()):
    """The dataclass ``cls`` filled from ``conf/reproduce/<paper>.yaml``: its ``default`` block, then the
    ``profile`` block on top (``full``: the authors' protocol; ``quick``: a smoke test), then ``key=value``
    overrides (``key=value``, or ``key.entry=value`` inside a mapping). An unknown profile or key, or a value
    of the wrong type, is a :class:`UserError` that names the valid ones."""
    path = protocol_file(paper)
    if not path.is_file():
        raise UserError(f"{paper} has no protocol file ({path})")
    raw = OmegaConf.load(path)
    if profile not in raw:
        valid = [p for p in PROFILES if p in raw]
        raise UserError(f"{paper} has no {profile!r} protocol; valid: {', '.join(valid)}")
    valid = {f.name for f in fields(cls)}
    merged = OmegaConf.merge(raw["default"], raw[profile] if profile != "default" else {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} is not key=value")
        head = key.split(".")[0]
        if head not in valid:
            raise UserError(f"unknown {paper} protocol key {key!r}; valid: {', '.join(sorted(valid))}")
        OmegaConf.update(merged, key, _yaml_value(value), merge=False)  # sweeps.lr=[…] sets one entry
    values = OmegaConf.to_container(merged, resolve=True)
    unknown = sorted(set(values) - valid)
    if unknown:
        raise UserError(f"{path.name}: unknown keys {unknown}; valid: {', '.join(sorted(valid))}")
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{k: _coerce(hints[k], v, k) for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise UserError(f"{paper} protocol: {e}") from None


def begin(protocol, profile: str, overrides: Sequence[str], out_dir) -> tuple:
    """What every reproduction's ``run`` opens with: the start time, the protocol (a bad profile, key or value
    fails here, before anything trains) and the output folder, created. Returns ``(protocol, out, start)``."""
    start = time.perf_counter()
    p = protocol(profile, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return p, out, start


def command_line(paper: str, profile: str, overrides: Sequence[str] = ()) -> str:
    """The ``genbench reproduce`` command that reruns ``paper`` with this profile and these overrides."""
    flag = {"default": "", "full": " --full", "quick": " --quick"}[profile]
    return f"genbench reproduce {paper}" + flag + "".join(f" {o}" for o in overrides)


def _coerce(typ, v, key: str):
    """``v`` as the field's type: YAML writes 1e-3 as a string and 5 where 5.0 is meant."""
    if typ is bool:
        if not isinstance(v, bool):
            raise ValueError(f"{key} must be true or false, got {v!r}")
        return v
    if typ is int:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)) or float(v) != int(float(v)):
            raise ValueError(f"{key} must be an integer, got {v!r}")
        return int(float(v))
    if typ is float:
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {v!r}") from None
    if typ is tuple:
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {v!r}")
        return _tuples(list(v))
    if typ is dict:
        if not isinstance(v, dict):
            raise ValueError(f"{key} must be a mapping, got {v!r}")
        return {k: _tuples(x) for k, x in v.items()}
    return v


def _yaml_value(text: str):
    """``key=value`` parsed as YAML does (numbers, lists, null), as Hydra's overrides do."""
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse override value {text!r}: {e}") from None


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def spread(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean, sample standard deviation, count and the two-sided ``level`` Student-t interval of the mean of
    ``values`` over the replicates (finite values only; fewer than 2 give NaN bounds)."""
    from scipy import stats
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "sd": sd, "n": n, "lo": mean - half, "hi": mean + half}


def tau(x: np.ndarray, y: np.ndarray, block: np.ndarray) -> float:
    """Kendall's τ over the pairs of runs in different blocks: (concordant − discordant) / pairs.

    With the blocks the settings of a sweep this is Jonckheere's trend statistic scaled to [−1, 1]; with
    every run its own block it is Kendall's τ-a. Leaving out the pairs inside a block keeps a bootstrap
    that draws a run twice from adding ties that would shrink τ towards 0."""
    i, j = np.triu_indices(len(x), 1)
    keep = block[i] != block[j]
    s = np.sign(x[i[keep]] - x[j[keep]]) * np.sign(y[i[keep]] - y[j[keep]])
    return float(s.mean()) if len(s) else math.nan


def trend(rows, col: str, resamples: int, stream: str, x: str = "x", by: str | None = "x") -> dict:
    """τ (:func:`tau`) between the columns ``x`` and ``col`` of the DataFrame ``rows``, with a 95 % percentile
    interval from ``resamples`` bootstrap resamples (generator stream ``stream``): the runs are drawn again
    within each block of ``by`` (the seeds of each setting), or from all runs when ``by`` is None."""
    gen = generator(0, f"bootstrap/{stream}")
    xs, ys = rows[x].to_numpy(float), rows[col].to_numpy(float)
    blocks = rows[by].to_numpy() if by else np.arange(len(rows))
    groups = [np.flatnonzero(blocks == b) for b in dict.fromkeys(blocks)] if by else [np.arange(len(rows))]
    draws = []
    for _ in range(resamples):
        idx = np.concatenate([g[torch.randint(len(g), (len(g),), generator=gen).numpy()] for g in groups])
        # a run drawn twice is one block with itself: its copies are never compared
        draws.append(tau(xs[idx], ys[idx], blocks[idx] if by else idx))
    draws = np.asarray([d for d in draws if math.isfinite(d)])
    lo, hi = np.percentile(draws, [2.5, 97.5]) if len(draws) else (math.nan, math.nan)
    return {"tau": tau(xs, ys, blocks), "lo": float(lo), "hi": float(hi)}


# --------------------------------------------------------------------------------------------- figures
def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (a reproduction never opens a window)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Lay out, save and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


# --------------------------------------------------------------------------------------------- results.md
VERDICT_HEADER = ["| claim | source | published | obtained here | agrees |", "|---|---|---|---|---|"]
IMPLEMENTATION_CHECKS = ["## Implementation checks", "",
                         "These hold by construction; they check the code, not the paper.", ""]


def results_head(title: str, profile: str) -> list[str]:
    """The first lines of every ``results.md``: the title, and a warning in quick mode."""
    lines = [f"# Reproduction: {title}", ""]
    if profile == "quick":
        lines += ["**Quick mode**: a smoke test at toy scale; its numbers are not a reproduction.", ""]
    return lines


def verdict_table(rows) -> list[str]:
    """The verdicts, one ``(claim, source, published, obtained, agrees)`` row each, as a Markdown table."""
    return VERDICT_HEADER + [f"| {' | '.join(r)} |" for r in rows]


def results_tail(figures: dict[str, str], command: str, wall: float, workers: int, files: str = "") -> list[str]:
    """The last lines of every ``results.md``: what each figure shows, and the command that made it all."""
    return (["", "## Figures", ""] + [f"* `{name}`: {text}" for name, text in figures.items()]
            + ["", f"Made by `{command}` in {wall / 60:.1f} min (wall clock, {workers} worker processes of one "
                   "torch thread each)." + (f" {files}" if files else ""), ""])


def tau_text(t: dict) -> str:
    return f"τ = {t['tau']:+.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}]"


def sign_of(t: dict) -> int:
    """+1 or −1 where the interval excludes 0, else 0."""
    return 1 if t["lo"] > 0 else -1 if t["hi"] < 0 else 0


def pm(s: dict, digits: int = 3) -> str:
    """``mean ± sd [lo, hi] (n)`` of :func:`spread`."""
    if not s["n"]:
        return "—"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}g} (1 seed)"
    return (f"{s['mean']:.{digits}g} ± {s['sd']:.2g} [{s['lo']:.{digits}g}, {s['hi']:.{digits}g}] "
            f"({s['n']} seeds)")


def mlp_hparams(dataset: DatasetHP, lr: float, batch_size: int, *, width: int, target_loss: float,
                max_epochs: int, seed: int = 0) -> HParams:
    """The physics papers' network, a 784→width→width→10 ReLU MLP without biases, with plain SGD."""
    return HParams(dataset=dataset, model=ModelHP(name="mlp", depth=2, width=width, bias=False),
                   optimizer=OptimizerHP(name="sgd", lr=lr),
                   train=TrainHP(batch_size=batch_size, target_loss=target_loss, max_epochs=max_epochs), seed=seed)


def train_mlp(data: DataBundle, lr: float, batch_size: int, *, width: int, target_loss: float, max_epochs: int,
              seed: int = 0):
    """:func:`mlp_hparams` trained by ``train_model`` on ``data`` until the training cross-entropy is ≤
    ``target_loss``; returns the trained model, its Context (with α and B) and the training metrics."""
    hp = mlp_hparams(DatasetHP(name="mnist5k", train_size=len(data.y_train), test_size=len(data.y_test)), lr,
                     batch_size, width=width, target_loss=target_loss, max_epochs=max_epochs, seed=seed)
    return train_hparams(hp, data)


def train_hparams(hp: HParams, data: DataBundle, before_step=None):
    """``train_model(hp, data)``; returns the trained model, its Context (seeded with ``hp.seed``) and the
    training metrics."""
    result = train_model(hp, data, before_step=before_step)
    trained = Trained.from_result(result, data)
    return trained.model, trained.context(seed=hp.seed), result.metrics
