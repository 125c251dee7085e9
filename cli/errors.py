"""Errors that reach a user as one line, and the one way a command prints them.

Every failure a user can fix (a locked file, a bad shard, a wrong path, a bad flag) is
raised as a `UserError` subclass whose message names the problem and the fix: `UsageError`
here for flags and config files, `DataError` in data/errors.py, `ModelError` in
models/errors.py, and each app's own (`TrainError`, `FeedbackError`, `ServeError`, ...).
`cli.entry.run_main` turns one into `error: <message>` on one stderr line and exit status
1. Anything else is a bug and keeps its traceback.
"""

import sys


class UserError(Exception):
    """A problem the user can fix; the message is the whole answer."""


class UsageError(UserError):
    """A flag, config file or setting the command cannot take as given."""


def report_warning(message: str) -> None:
    """Print `warning: <message>` as one line on stderr: something the user should know
    that did not stop the command."""
    print("warning: " + " ".join(message.split()), file=sys.stderr, flush=True)


def report_user_error(error: UserError) -> int:
    """Print `error: <message>` as one line on stderr; the exit status, 1."""
    print("error: " + " ".join(str(error).split()), file=sys.stderr)
    return 1
