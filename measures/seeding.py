"""Seeds for named random streams: every random choice in genbench draws from a generator derived here.

A stream is named by a base seed and a tag (``(model seed, "init")``, ``(dataset seed, "labels")``,
``(measures seed, "hessian.top_eig")``), so streams are independent of one another and of the order in which
they are used. A leaf module: it imports nothing of genbench.
"""
from __future__ import annotations

import hashlib

import torch


def _digest(seed: int, tag: str) -> bytes:
    return hashlib.sha256(f"{seed}/{tag}".encode()).digest()


def derive_seed(seed: int, tag: str) -> int:
    """A stable 63-bit seed for the stream ``tag`` of ``seed`` (a valid ``torch.Generator`` seed)."""
    return int.from_bytes(_digest(seed, tag)[:8], "little") >> 1


def derive_seed32(seed: int, tag: str) -> int:
    """A stable 32-bit seed for the stream ``tag`` of ``seed`` (for numpy and scikit-learn)."""
    return int.from_bytes(_digest(seed, tag)[:4], "little")


def generator(seed: int, tag: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed`."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, tag))
