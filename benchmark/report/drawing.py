"""Each leaderboard's figures drawn in one other process while this one goes on to the next board's statistics:
on two cores a suite's evaluation takes about the time of its statistics, not of its statistics and figures. The
last board (the only one, outside a suite) is drawn by both processes, each about half of its figures.

The child starts from the ``forkserver`` (``benchmark.processes``); it receives the board and draws exactly what
:func:`benchmark.report.plots.write` would draw here, into the same folder, with the same manifest. Leaving the
``with`` block waits for every drawing; an error in one is raised there, as if it had happened here.
"""
from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.processes import main_not_imported

if TYPE_CHECKING:
    from benchmark.evaluation.board import Board
    from benchmark.report.plots import Figures

log = logging.getLogger("genbench")


def _draw(board: Board, folder: Path) -> Figures:
    from benchmark.report import plots  # matplotlib: only where figures are drawn
    return plots.write(board, folder)


def _import_plots() -> None:
    from benchmark.report import plots  # noqa: F401 — the child's first task, while the first board is computed


class Drawer:
    """Draws boards' figures (:func:`draw`) in one other process when ``background``, else here at once; logs what
    each drawing drew and reused."""

    def __init__(self, background: bool):
        self.background = background
        self._pool: ProcessPoolExecutor | None = None
        self._pending: list[tuple[Path, Future]] = []

    def __enter__(self) -> "Drawer":
        if self.background:  # started now, so that it imports matplotlib while this process computes statistics
            with main_not_imported():  # the child is started by the first submit
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
                self._pool.submit(_import_plots)
        return self

    def draw(self, board: Board, folder: Path, last: bool = False) -> None:
        """Draw ``board``'s figures into ``folder``: in the other process, unless this is the ``last`` board (this
        process has nothing else to do), which is drawn here with the other process drawing about half of it."""
        if self._pool is None:
            self._done(folder, _draw(board, folder))
        elif last:
            from benchmark.report import plots
            self._done(folder, plots.write(board, folder, helper=self._pool))
        else:
            self._pending.append((folder, self._pool.submit(_draw, board, folder)))

    def __exit__(self, kind, *exc) -> None:
        try:
            if kind is None:
                for folder, future in self._pending:
                    self._done(folder, future.result())
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _done(folder: Path, figures: Figures) -> None:
        log.info("figures: %d drawn, %d reused under %s", len(figures.drawn), len(figures.reused), folder)
