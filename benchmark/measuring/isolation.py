"""Measures run isolated: worker processes that no measure can take down with the run.

A measure is code the benchmark does not control (a plugin, a C extension). Whatever it does inside its own
process — ``sys.exit``, ``os._exit``, a segfault or an abort, raising ``KeyboardInterrupt``, being killed for
memory — ends at most that process. The parent here hands each worker a task (a list of *items*, each one
measure on one model, computed in order by a module-level generator that yields one result per item), reads the
results as they come, and watches the worker's process:

* results reach the parent one by one, so a worker that dies loses none that it finished;
* the item in flight when a worker dies is the first one it has not reported: that measure on that model is
  recorded as failed with what happened ("the measure ended its process with status 3", "killed by SIGSEGV"),
  a fresh worker takes the rest of the task, and every other measure and model goes on;
* a measure that has ended its worker ``MAX_CRASHES`` times in one run is not started again in that run: its
  remaining items are recorded as failed without running (so a measure that always crashes costs a few worker
  starts, not one per model);
* a measure that stops answering (stuck in C code, where the worker's own time limit cannot interrupt it) is
  killed once ``hard_timeout`` seconds pass without a result, and recorded like a crash;
* workers ignore SIGINT, so only a real Ctrl-C of the user reaches the parent, which stops every worker and
  raises ``KeyboardInterrupt`` (exit 130); a measure that raises ``KeyboardInterrupt`` itself is its own failure.

Workers start from a fork server that has imported genbench and every built-in measure once (the ``forkserver``
start method), so replacing a worker after a crash takes milliseconds, not an interpreter start. Every worker
ends with its parent (``benchmark.runtime.bind_to_parent``).

``Pool(isolate=False)`` computes the same items in this process (for a debugger; a crashing measure then ends the
run).
"""
from __future__ import annotations

import collections
import multiprocessing
import signal
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Hashable, Iterator, Sequence

from benchmark.errors import UserError
from benchmark.processes import MEASURE_PRELOAD, main_not_imported
from benchmark.runtime import bind_to_parent

MAX_CRASHES = 3  # a measure that ended its worker this often in one run is not started again in that run
POLL_S = 0.5  # how often the parent looks at the clock while it waits for results


@dataclass(frozen=True)
class Task:
    """Work for one worker: ``fn(common, items)`` is a module-level generator that yields one result per item,
    in the order of ``items``; ``common`` is what the items share. Both must pickle."""
    fn: Callable[[Any, Sequence], Iterator]
    common: Any
    items: tuple


@dataclass
class Isolation:
    """How the caller describes its items to the pool, and what the pool counts in one run.

    ``measure_of(item)``: the measure an item runs (crashes are counted per measure). ``failed(item, why)``: the
    result to record for an item that could not be computed. ``hard_timeout``: seconds a worker may go without
    sending a result before it is killed (None: no limit)."""
    measure_of: Callable[[Any], Hashable]
    failed: Callable[[Any, str], Any]
    hard_timeout: float | None = None
    crashes: collections.Counter = field(default_factory=collections.Counter)
    last_crash: dict = field(default_factory=dict)


class WorkerError(RuntimeError):
    """A worker failed outside any measure (while starting, or loading what its task needs)."""


def describe_exit(exitcode: int | None) -> str:
    """How a worker process ended, in words: "ended its process with status 3", "killed by SIGSEGV"."""
    if exitcode is None:
        return "ended its process"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the system's out-of-memory killer sends it)" if exitcode == -signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"ended its process with status {exitcode}"


def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(MEASURE_PRELOAD)  # what the fork server imports once, for every worker
    return ctx


def _worker_main(conn: Connection, setup: tuple[Callable, tuple] | None) -> None:
    """A worker: set up, then compute tasks and send each item's result as soon as it exists."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the user's Ctrl-C is the parent's to handle
    bind_to_parent()
    try:
        if setup is not None:
            setup[0](*setup[1])
    except BaseException as err:  # noqa: BLE001 — reported to the parent, which ends the run with it
        conn.send(("error", _portable(err), traceback.format_exc()))
        return
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            for result in task.fn(task.common, task.items):
                conn.send(("item", result))
        except BaseException as err:  # noqa: BLE001 — not a measure's failure (those are results): the task's own
            conn.send(("error", _portable(err), traceback.format_exc()))
            continue
        conn.send(("done",))


def _portable(err: BaseException) -> BaseException:
    """``err`` if it pickles (so the parent can raise it as it is, a user error staying a user error), else a
    ``WorkerError`` with its text."""
    import pickle
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return WorkerError(f"{type(err).__name__}: {err}")


class _Worker:
    def __init__(self, ctx, setup):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, setup), daemon=True, name="genbench-measure")
        with main_not_imported():
            self.process.start()
        child.close()
        self.task: Task | None = None
        self.done = 0  # items of the task reported
        self.ready = False
        self.since = time.monotonic()  # of the last message

    def give(self, task: Task) -> None:
        self.task, self.done, self.since = task, 0, time.monotonic()
        self.conn.send(task)

    def stop(self, kill: bool = False) -> None:
        if self.process.is_alive():
            if kill:
                self.process.kill()
            else:
                try:
                    self.conn.send(None)
                except OSError:
                    self.process.kill()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class Pool:
    """``jobs`` isolated worker processes, started as work arrives and kept between runs (the final weights'
    measures, then the early snapshots'), so that what a worker has cached (the datasets, torch's first-call set-up)
    serves every run. ``setup``: a module-level function and its arguments, called once in each worker before its
    first task (torch threads, plugins). ``isolate=False`` computes in this process instead."""

    def __init__(self, jobs: int, setup: tuple[Callable, tuple] | None = None, isolate: bool = True):
        self.jobs, self.setup, self.isolate = max(1, jobs), setup, isolate
        self.workers: list[_Worker] = []
        self._set_up = False  # in this process (isolate=False)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for w in self.workers:
            w.stop(kill=w.task is not None)
        self.workers = []

    def run(self, tasks: Sequence[Task], iso: Isolation) -> Iterator[Any]:
        """Every task's results (one per item, and the failure results of items that crashed or were not
        started), in order of completion. If the run ends early (an error, Ctrl-C), every worker is stopped."""
        if not self.isolate:
            if self.setup is not None and not self._set_up:
                self.setup[0](*self.setup[1])
                self._set_up = True
            for task in tasks:
                yield from task.fn(task.common, task.items)
            return
        queue = collections.deque(tasks)
        workers = self.workers
        finished = False
        try:
            while queue or any(w.task is not None for w in workers):
                yield from _skip_banned(queue, iso)
                busy = sum(w.task is not None for w in workers)
                while len(workers) < min(self.jobs, busy + len(queue)):
                    workers.append(_Worker(_context(), self.setup))
                for w in workers:
                    if queue and w.ready and w.task is None:
                        w.give(queue.popleft())
                ready = set(wait([w.conn for w in workers if not w.conn.closed]
                                 + [w.process.sentinel for w in workers], timeout=POLL_S))
                for w in list(workers):
                    if w.conn in ready or w.process.sentinel in ready:
                        yield from _drain(w)
                    if not w.process.is_alive():
                        yield from _drain(w)  # what it sent before it ended
                        workers.remove(w)
                        w.stop(kill=True)
                        yield from _crashed(w, iso, queue, describe_exit(w.process.exitcode))
                    elif w.task is not None and iso.hard_timeout and time.monotonic() - w.since > iso.hard_timeout:
                        workers.remove(w)
                        w.stop(kill=True)
                        yield from _crashed(w, iso, queue, f"ran past its time budget and did not stop "
                                                           f"({iso.hard_timeout:g} s without a result); its process "
                                                           f"was killed")
            finished = True
        finally:
            if not finished:
                for w in workers:
                    w.stop(kill=True)
                workers.clear()


def _drain(w: _Worker) -> Iterator[Any]:
    """Every message the worker has sent, in order."""
    while not w.conn.closed and w.conn.poll():
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            w.conn.close()
            return
        w.since = time.monotonic()
        kind = message[0]
        if kind == "ready":
            w.ready = True
        elif kind == "item":
            w.done += 1
            yield message[1]
        elif kind == "done":
            w.task = None
        elif kind == "error":  # a user's mistake (missing dataset files) stays one line; a bug keeps its traceback
            err, text = message[1], message[2]
            if not isinstance(err, UserError):
                err.add_note(f"in a measure worker:\n{text}")
            raise err


def _crashed(w: _Worker, iso: Isolation, queue, how: str) -> Iterator[Any]:
    """The worker ended while it held ``w.task``: the item in flight failed with ``how``; the rest goes back to the
    front of the queue. A worker that ended before it was ready is the run's error, not a measure's; one that ended
    idle lost nothing."""
    if not w.ready:
        raise WorkerError(f"a measure worker {how} before it was ready (while loading plugins or the measures)")
    task = w.task
    w.task = None
    if task is None or w.done >= len(task.items):  # idle, or every item reported: nothing was lost
        return
    item, rest = task.items[w.done], task.items[w.done + 1:]
    name = iso.measure_of(item)
    iso.crashes[name] += 1
    iso.last_crash[name] = how
    yield iso.failed(item, f"the measure {how}")
    if rest:
        queue.appendleft(Task(task.fn, task.common, tuple(rest)))


def _skip_banned(queue, iso: Isolation) -> Iterator[Any]:
    """Record as failed, without running them, the queued items of measures that crashed ``MAX_CRASHES`` times."""
    banned = {name for name, n in iso.crashes.items() if n >= MAX_CRASHES}
    if not banned:
        return
    for i, task in enumerate(list(queue)):
        keep = tuple(item for item in task.items if iso.measure_of(item) not in banned)
        if len(keep) == len(task.items):
            continue
        for item in task.items:
            name = iso.measure_of(item)
            if name in banned:
                yield iso.failed(item, f"not run: the measure ended its worker process {iso.crashes[name]} times in "
                                       f"this run (last: {iso.last_crash[name]})")
        queue[i] = Task(task.fn, task.common, keep)
    for task in [t for t in queue if not t.items]:
        queue.remove(task)
