"""Errors that reach a user as one line, and the one way a command prints them.

Every failure a user can fix (a locked file, a bad shard, a wrong path, a bad flag) is
raised as a `UserError` subclass whose message names the problem and the fix: `DataError`
here, `ModelError` in models/errors.py, and each app's own (`TrainError`, `FeedbackError`,
`ServeError`, `GoldFileError`, ...). Every command-line `main` catches `UserError` alone
and returns `report_user_error(error)`: `error: <message>` on one stderr line, exit status
1. Anything else is a bug and keeps its traceback.
"""

import sys


class UserError(Exception):
    """A problem the user can fix; the message is the whole answer."""


class DataError(UserError):
    """A store, shard or file problem the user can fix."""


class StoreLockedError(DataError):
    """Another process holds the DuckDB file open for writing."""


class UpgradeNeededError(DataError):
    """A file opened read-only has migrations still to apply (a read-write open does)."""


class ShardError(DataError):
    """A parquet shard that cannot be imported as it is."""


class StoreWriteError(DataError):
    """The store could not commit a write (a full disk, a read-only file); nothing of
    that write is kept, and the store can be written again once the cause is fixed."""


class DiskFullError(StoreWriteError):
    """A write failed because the disk holding the store is full; nothing was half-written."""


def report_warning(message: str) -> None:
    """Print `warning: <message>` as one line on stderr: something the user should know
    that did not stop the command."""
    print("warning: " + " ".join(message.split()), file=sys.stderr, flush=True)


def report_user_error(error: UserError) -> int:
    """Print `error: <message>` as one line on stderr; the exit status, 1."""
    print("error: " + " ".join(str(error).split()), file=sys.stderr)
    return 1
