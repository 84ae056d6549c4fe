"""Errors the backends raise; adapters turn them into 4xx/5xx answers."""


class BackendError(Exception):
    """Base class; the message is meant for the person who has to fix it."""


class ModelNotFoundError(BackendError):
    """A model reference points at nothing we can load."""


class ModelRefRefused(BackendError):
    """A model reference from an untrusted place (a label config) names a file outside
    MODEL_DIR; the message says how to allow it (ALLOW_CUSTOM_MODEL_PATH)."""


class ModelLoadError(BackendError):
    """The weights exist (or were named) but could not be loaded."""


class ModelTaskError(BackendError):
    """The model cannot produce what was asked (e.g. polygons from a detect model)."""


class UnknownTaskError(BackendError, ValueError):
    """A model task name that is not one of `labelpilot.backends.tasks.TASKS`."""
