"""Typed errors. Callers catch these to skip-and-report instead of crashing."""

from __future__ import annotations


class ComposirError(Exception):
    """Base class of every error composir raises on purpose."""


class AnnotationError(ComposirError, ValueError):
    """A benchmark annotation file is missing or malformed.

    The message names the file, the entry (index or id) and the field.
    """

    def __init__(self, path: object, message: str, entry: object = None, field: str | None = None):
        where = str(path)
        if entry is not None:
            where += f", entry {entry}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.entry = entry
        self.field = field


class MediaError(ComposirError, OSError):
    """An image or video could not be read or decoded."""

    def __init__(self, path: object, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


class ConfigError(ComposirError, ValueError):
    """A configuration value is missing or invalid."""


class WorkInterrupted(ComposirError):
    """Ctrl-C during a long job; the message says where it stopped and how to resume."""


class TrainingDiverged(ComposirError):
    """The loss stopped being a finite number; the message names the step, the terms and the last checkpoint."""


class WeightsNotFound(ComposirError, OSError):
    """Pretrained weights that cannot be loaded (offline, unknown tag, missing file): the message names
    what was looked for and how to provide it."""
