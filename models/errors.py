"""Errors that reach a user as one line (see data/errors.py for the same rule)."""


class ModelError(Exception):
    """A model that cannot be loaded or used as asked; the message names the fix."""
