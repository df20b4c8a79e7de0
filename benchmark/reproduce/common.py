"""Shared pieces of the paper reproductions (``genbench reproduce pnas|prl|nmi|mlst``)."""
from __future__ import annotations

from contextlib import contextmanager

import torch


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
