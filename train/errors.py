"""The trainer's one error type: its message is the whole answer the user sees."""


class TrainError(Exception):
    """A run that cannot start or continue, with a one-line message naming the fix."""
