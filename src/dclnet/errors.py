"""User-facing errors.

Every problem with a user's input (a path, a file, a config key, a checkpoint) is raised as a
:class:`DclnetError` whose message is one line naming the offending thing and the fix. The
command-line entry point prints such errors without a traceback.
"""

from __future__ import annotations


class DclnetError(Exception):
    """A problem with the user's input, reported as one clear line."""


class DataError(DclnetError):
    """A data set, image, list file or cache is missing, malformed or unreadable."""


class ConfigError(DclnetError):
    """A configuration key or value is invalid."""


class CheckpointError(DclnetError):
    """A checkpoint is missing, corrupt or does not match the model."""


class TrainingError(DclnetError):
    """Training cannot go on as configured (a run folder in use, a diverged loss)."""


class NonFiniteLossError(TrainingError, FloatingPointError):
    """The training loss became NaN or infinite (still a :class:`FloatingPointError`)."""


class OutputError(DclnetError):
    """An output file or folder cannot be written (a directory or file in the way, a full disk)."""
