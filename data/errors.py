"""Errors that reach a user as one line.

Every failure a user can fix (a locked file, a bad shard, a wrong path) is raised as a
`DataError` whose message names the problem and the fix. The command-line entry points
print `str(error)` on stderr and exit non-zero; nothing else is shown.
"""


class DataError(Exception):
    """A problem the user can fix; the message is the whole answer."""


class StoreLockedError(DataError):
    """Another process holds the DuckDB file open for writing."""


class ShardError(DataError):
    """A parquet shard that cannot be imported as it is."""


class StoreWriteError(DataError):
    """The store could not commit a write (a full disk, a read-only file); nothing of
    that write is kept, and the store can be written again once the cause is fixed."""
