"""What a user can get wrong. Each of these errors is a mistake in the input (a hyperparameter, a name, a
file), not a bug: the command line prints its message as one line and exits with status 2.

A leaf module: it imports nothing of genbench.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input, reported as one line (exit status 2)."""


class HParamsError(UserError, ValueError):
    """An invalid hyperparameter or component name, raised before any training starts."""


class DatasetMissingError(UserError, FileNotFoundError):
    """A dataset's files are not where the config says, and downloading is off."""


class NothingToRankError(UserError):
    """No model of the zoo converged, so no measure can be ranked."""
