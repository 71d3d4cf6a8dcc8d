"""Typed exceptions: every user-facing failure is one of these, with a one-line message."""


class GroupViTError(Exception):
    """Base class of every error this package raises on bad input."""


class ConfigError(GroupViTError, ValueError):
    """A configuration value or preset name is invalid."""


class WeightsError(GroupViTError):
    """A checkpoint is missing, corrupt, of an unknown format, or does not fit the model."""


class InputError(GroupViTError, ValueError):
    """An image, text or tensor argument has the wrong type, shape or content."""


class DivergenceError(GroupViTError, FloatingPointError):
    """Training produced a non-finite loss (the message names the step); no update was applied."""


class ExportError(GroupViTError):
    """A model cannot be exported, or an exported folder is missing, incomplete or of another version."""


class TimeLimitError(GroupViTError, TimeoutError):
    """A request ran past its time limit and was stopped (the message names the limit)."""


class StorageError(GroupViTError, OSError):
    """A write failed for lack of space or permission, or its folder vanished; the message names the folder, the
    space where known, and what was kept (:mod:`groupvit.fileio`)."""
