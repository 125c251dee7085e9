"""Errors that reach a user as one line (the rule is in data/errors.py)."""

from cli.errors import UserError


class ModelError(UserError):
    """A model that cannot be loaded or used as asked; the message names the fix."""
