"""The one wrapper every command's `main` runs in: the user sees one line, never a traceback
for something they can fix, and a stop is a stop."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Sequence

from cli.errors import UserError, report_user_error

INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl+C


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_main(command: Callable[[list[str]], int | None],
             argv: Sequence[str] | None = None) -> int:
    """Run `command(argv)` and return its exit status: 0 (or what it returns), 1 with
    `error: <message>` on one stderr line for a `UserError`, 130 for Ctrl+C or SIGTERM
    (which stops the command as Ctrl+C does, so its `finally` blocks close what it opened)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return command(argv) or 0
    except UserError as error:
        return report_user_error(error)
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
