"""The trainer's one error type: its message is the whole answer the user sees."""

from data.errors import UserError


class TrainError(UserError):
    """A run that cannot start or continue, with a one-line message naming the fix."""
