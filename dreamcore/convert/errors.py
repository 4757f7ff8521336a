"""The one error type model loading and conversion raise for bad inputs."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model file, folder or hub id could not be used; the message names it and says what to do."""
