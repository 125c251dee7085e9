"""Every error a user can fix, in one small tree, and the one way a command prints one.

A `UserError`'s message names the problem and the fix; `cli.entry.run_main` prints it as
`error: <message>` on one stderr line, exit status 1 (a page shows it instead). Anything
else is a bug and keeps its traceback.

    UserError
    ├── UsageError            a flag, config file or setting the command cannot take
    ├── DataError             a store, shard or file problem
    │   ├── ShardError        a parquet shard that cannot be imported as it is
    │   ├── UpgradeNeededError  a store opened read-only with migrations still to apply
    │   ├── StoreWriteError   a write the store could not commit; nothing of it is kept
    │   │   └── DiskFullError   ... because the disk is full
    │   └── DailyCapReached   a vote past its annotator's daily cap; nothing stored
    ├── ModelError            a model that cannot be loaded or used as asked
    ├── TrainError            a training run that cannot start or continue
    │   ├── DoesNotFit        a plan whose cache cannot fit its disk (`text`: the figures)
    │   └── DamagedCache      a cache folder that cannot be read as it was written
    └── PageError             what a page tells the person using it
        └── NotCounted        a request the page did not take; their pair stays on screen
"""

from __future__ import annotations

import sys
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; the message is the whole answer."""


class UsageError(UserError):
    """A flag, config file or setting the command cannot take as given."""


class DataError(UserError):
    """A store, shard or file problem the user can fix."""


class ShardError(DataError):
    """A parquet shard that cannot be imported as it is."""


class UpgradeNeededError(DataError):
    """A file opened read-only has migrations still to apply (a read-write open does)."""


class StoreWriteError(DataError):
    """The store could not commit a write (a full disk, a read-only file); nothing of
    that write is kept, and the store can be written again once the cause is fixed."""


class DiskFullError(StoreWriteError):
    """A write failed because the disk holding the store is full; nothing was half-written."""


class DailyCapReached(DataError):
    """A vote past its annotator's daily cap (`Store.record_vote`); nothing was stored."""


class ModelError(UserError):
    """A model that cannot be loaded or used as asked."""


class TrainError(UserError):
    """A run that cannot start or continue."""


class DoesNotFit(TrainError):
    """A plan whose cache cannot fit the disk it names: `text` is what the dry run prints
    before it refuses in one line (the cache's lines, then the whole plan)."""

    def __init__(self, message: str, text: str):
        super().__init__(message)
        self.text = text


class DamagedCache(TrainError):
    """A cache folder that cannot be read as it was written (a truncated or missing file):
    the trainer rebuilds it; its message, for anyone else, says how."""

    def __init__(self, directory: Path, reason: str):
        super().__init__(f"cache {directory} is damaged ({reason}): delete that folder and "
                         "the next run rebuilds it")
        self.directory, self.reason = directory, reason


class PageError(UserError):
    """Something the person using a page must do differently (a prompt refused, a name
    missing, a pair that could not be made); the page shows the message."""


class NotCounted(PageError):
    """A request the page did not take, while the person's pair stays on screen: a vote
    for a pair no longer shown, one cast too soon, one the disk refused, or a generator
    too busy; nothing was stored."""


def report_warning(message: str) -> None:
    """Print `warning: <message>` as one line on stderr: something the user should know
    that did not stop the command."""
    print("warning: " + " ".join(message.split()), file=sys.stderr, flush=True)


def report_user_error(error: UserError) -> int:
    """Print `error: <message>` as one line on stderr; the exit status, 1."""
    print("error: " + " ".join(str(error).split()), file=sys.stderr)
    return 1
