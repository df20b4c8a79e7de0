"""Where the report's files live: the one place that knows the leaderboard folder's file names.

    <dir>/<name>.csv            the long results table (one row per measure and target)
    <dir>/<name>.md             the same as Markdown, with the per-axis breakdown and failures
    <dir>/<name>.zoo.csv        the zoo DataFrame the statistics were computed on
    <dir>/<name>.oracle.csv     the oracle analyses (they see test data; never ranked)
    <dir>/<name>.baselines.csv  the baselines' statistics (random, noisy oracle, single axes; never ranked)
    <dir>/<name>.summary.json   the split-half reliability of the ranking, per target
    <dir>/<name>.early.csv      early prediction: τ of measures computed part-way through training (if measured)
    <dir>/<name>.board.json     the board in a typed form (``benchmark.evaluation.board``): the page and a suite
                                read it back instead of parsing the CSVs
    <dir>/<name>/               the figures: summary.png, psi_heatmap.png, tiers.png, cost.png, scatter/<measure>.png
    <dir>/<suite>.suite.md      a suite's cross-task summary (experiment=standard), its tasks being the
    <dir>/<suite>.suite.csv     leaderboards <suite>-<task>; the cross-task table, the agreement of the
    <dir>/<suite>.agreement.csv tasks' rankings, and <dir>/<suite>/tasks.png
    <dir>/<suite>.suite.json    the suite in a typed form (``benchmark.evaluation.suite.Suite``)
    <dir>/index.html            the offline page over every leaderboard in <dir>
    <dir>/README.md             the index of every leaderboard in <dir>, with generated summaries
    leaderboard/reproductions/<paper>/   what ``genbench reproduce <paper>`` writes

``<name>`` is ``<zoo>-<dataset>`` by default (``leaderboard.name``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

INDEX, README = "index.html", "README.md"
SUMMARY_FIGURE, HEATMAP_FIGURE, TIERS_FIGURE = "summary.png", "psi_heatmap.png", "tiers.png"
COST_FIGURE = "cost.png"
TASKS_FIGURE = "tasks.png"
_RESULTS, _ZOO, _ORACLE, _MARKDOWN = ".csv", ".zoo.csv", ".oracle.csv", ".md"
_BASELINES, _SUMMARY, _EARLY = ".baselines.csv", ".summary.json", ".early.csv"
_TYPED = ".board.json"
REPRODUCTIONS = Path("leaderboard") / "reproductions"


@dataclass(frozen=True)
class BoardFiles:
    folder: Path
    name: str

    @property
    def results(self) -> Path:
        return self.folder / f"{self.name}{_RESULTS}"

    @property
    def markdown(self) -> Path:
        return self.folder / f"{self.name}{_MARKDOWN}"

    @property
    def zoo(self) -> Path:
        return self.folder / f"{self.name}{_ZOO}"

    @property
    def oracle(self) -> Path:
        return self.folder / f"{self.name}{_ORACLE}"

    @property
    def baselines(self) -> Path:
        return self.folder / f"{self.name}{_BASELINES}"

    @property
    def summary(self) -> Path:
        return self.folder / f"{self.name}{_SUMMARY}"

    @property
    def early(self) -> Path:
        return self.folder / f"{self.name}{_EARLY}"

    @property
    def typed(self) -> Path:
        return self.folder / f"{self.name}{_TYPED}"

    @property
    def tables(self) -> dict[str, Path]:
        """The tables a board written before its typed form is read from (``board.from_tables``)."""
        return {"results": self.results, "zoo": self.zoo, "oracle": self.oracle, "baselines": self.baselines,
                "summary": self.summary, "early": self.early}

    @property
    def figures(self) -> Path:
        return self.folder / self.name

    def exists(self) -> bool:
        return self.results.exists() and self.zoo.exists()


@dataclass(frozen=True)
class SuiteFiles:
    folder: Path
    name: str

    @property
    def markdown(self) -> Path:
        return self.folder / f"{self.name}.suite.md"

    @property
    def results(self) -> Path:
        return self.folder / f"{self.name}.suite.csv"

    @property
    def agreement(self) -> Path:
        return self.folder / f"{self.name}.agreement.csv"

    @property
    def typed(self) -> Path:
        return self.folder / f"{self.name}.suite.json"

    @property
    def figure(self) -> Path:
        return self.folder / self.name / TASKS_FIGURE

    def board(self, task: str) -> str:
        return f"{self.name}-{task}"


def suites(folder: Path) -> list[str]:
    """The names of every suite summary in ``folder``, sorted."""
    return sorted(p.name.removesuffix(".suite.csv") for p in Path(folder).glob("*.suite.csv"))


def scatter_file(measure: str) -> str:
    """A measure's scatter plot, relative to its figures folder (names made file-system safe)."""
    return f"scatter/{re.sub(r'[^A-Za-z0-9._-]', '_', measure)}.png"


def boards(folder: Path) -> list[str]:
    """The names of every leaderboard in ``folder`` (those with both a results and a zoo table), sorted."""
    return sorted(p.name.removesuffix(_ZOO) for p in Path(folder).glob(f"*{_ZOO}")
                  if BoardFiles(Path(folder), p.name.removesuffix(_ZOO)).exists())


def index(folder: Path) -> Path:
    return Path(folder) / INDEX


def readme(folder: Path) -> Path:
    return Path(folder) / README


def reproduction(paper: str) -> Path:
    return REPRODUCTIONS / paper
