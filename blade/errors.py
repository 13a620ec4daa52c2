"""Exceptions the suite raises for bad input.

Every message names the file, row or config key at fault and says how to fix it; the CLI prints
the message without a traceback and exits with status 2.
"""


class BladeError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class ConfigError(BladeError, ValueError):
    """A config key is unknown, missing or of the wrong type."""


class DataError(BladeError, ValueError):
    """An input data file is missing or malformed."""


class TrainingError(BladeError, RuntimeError):
    """Training diverged (e.g. a non-finite loss): the run stops with the step and what to try."""
