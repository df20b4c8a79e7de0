"""The isolated worker pool on its own, with small generator tasks: results arrive in order, a crash fails exactly
the item in flight and the rest is computed by a fresh worker, a measure that crashes MAX_CRASHES times is not
started again, a user's mistake in a worker stays a one-line error, and the workers persist between runs."""
from __future__ import annotations

import os

import pytest

from benchmark.errors import UserError
from benchmark.measuring import isolation


def _square(common, items):
    """(item, item² + common, pid) per item; item -1 ends its process with status 7, -2 raises a UserError."""
    for item in items:
        if item == -1:
            os._exit(7)
        if item == -2:
            raise UserError("the files of dataset x are missing")
        yield item, item * item + common, os.getpid()


ISO = dict(measure_of=lambda item: "crasher" if item == -1 else "square", failed=lambda item, why: (item, why, None))


def test_results_in_order_and_workers_kept_between_runs():
    with isolation.Pool(2) as pool:
        first = list(pool.run([isolation.Task(_square, 1, (1, 2, 3)), isolation.Task(_square, 0, (4,))],
                              isolation.Isolation(**ISO)))
        pids = {p for *_, p in first}
        second = list(pool.run([isolation.Task(_square, 0, (5, 6))], isolation.Isolation(**ISO)))
    assert [(i, v) for i, v, _ in first if i in (1, 2, 3)] == [(1, 2), (2, 5), (3, 10)]  # in the task's order
    assert (4, 16) in [(i, v) for i, v, _ in first]
    assert [(i, v) for i, v, _ in second] == [(5, 25), (6, 36)]
    assert {p for *_, p in second} <= pids and os.getpid() not in pids  # the same worker processes, not this one


def test_a_crash_fails_the_item_in_flight_and_a_fresh_worker_does_the_rest():
    iso = isolation.Isolation(**ISO)
    with isolation.Pool(1) as pool:
        out = list(pool.run([isolation.Task(_square, 0, (1, -1, 2, 3))], iso))
    assert out[0][:2] == (1, 1) and out[1] == (-1, "the measure ended its process with status 7", None)
    assert [(i, v) for i, v, _ in out[2:]] == [(2, 4), (3, 9)]
    assert out[0][2] != out[2][2]  # computed by another process after the crash
    assert iso.crashes == {"crasher": 1}


def test_a_measure_that_keeps_crashing_is_not_started_again():
    iso = isolation.Isolation(**ISO)
    tasks = [isolation.Task(_square, 0, (-1, k)) for k in range(1, 6)]
    with isolation.Pool(1) as pool:
        out = list(pool.run(tasks, iso))
    failed = [why for item, why, _ in out if item == -1]
    assert failed[:isolation.MAX_CRASHES] == ["the measure ended its process with status 7"] * isolation.MAX_CRASHES
    assert all(why.startswith("not run: the measure ended its worker process 3 times") for why in failed[3:])
    assert len(failed) == 5 and iso.crashes["crasher"] == isolation.MAX_CRASHES
    assert sorted(item for item, *_ in out if item != -1) == [1, 2, 3, 4, 5]


def test_a_users_mistake_in_a_worker_is_raised_as_it_is():
    with isolation.Pool(1) as pool, pytest.raises(UserError) as err:
        list(pool.run([isolation.Task(_square, 0, (1, -2))], isolation.Isolation(**ISO)))
    assert str(err.value) == "the files of dataset x are missing" and not getattr(err.value, "__notes__", None)


def test_in_process_computes_the_same():
    with isolation.Pool(1, isolate=False) as pool:
        out = list(pool.run([isolation.Task(_square, 2, (1, 2))], isolation.Isolation(**ISO)))
    assert out == [(1, 3, os.getpid()), (2, 6, os.getpid())]
