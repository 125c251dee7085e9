"""The data layer's errors: a store, shard or file problem the user can fix (the rule
for every user error is in cli/errors.py)."""

from cli.errors import UserError


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
