"""Fixtures of the zoo's tests."""
from __future__ import annotations

import pytest

from benchmark.zoo import shift


def _clear_shift_caches() -> None:
    for cached in (shift.shifted_pool, shift.shifted_tests, shift._pool_digest):
        cached.cache_clear()


@pytest.fixture
def shift_cache(monkeypatch, tmp_path):
    """Shifted test sets built afresh under tmp_path (``$GENBENCH_CACHE``), with none kept in memory from another
    test, before or after."""
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path))
    _clear_shift_caches()
    yield
    _clear_shift_caches()
