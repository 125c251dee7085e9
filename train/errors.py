"""What a process that waited too long for the others says (the trainer's user errors are
in cli/errors.py: `TrainError` and its kinds)."""


class Phase:
    """What the run is doing now (`Phase.now`), named in the one line a process that
    waited too long for the others gets."""

    now = "starting"


def timed_out(error: BaseException) -> bool:
    """Whether `error` is a collective that waited past the process-group timeout."""
    return isinstance(error, RuntimeError) and "timed out" in str(error).lower()


def timeout_line(seconds: int) -> str:
    return (f"a process waited more than process_group_timeout ({seconds:,} s) for the others "
            f"while {Phase.now}: if one of them stopped, its own message says why; if they "
            "were all still busy, raise --process_group_timeout")
