"""`accelerate launch -m train PRESET_OR_CONFIG [--key value ...]` (or `python -m train`);
`python -m train judge [RECIPE] ...` fits a judge on votes (train/judge.py)."""

import json
import os
import signal
import sys
import threading
import time

# transformers warns on import that torchvision is absent; this project never needs it.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from cli.errors import DoesNotFit, UserError, report_user_error
from train.config import from_command_line  # noqa: E402
from train.errors import timed_out, timeout_line  # noqa: E402

_stops: list[int] = []  # the stop signals this process has received, in order


def _stop(signum: int, frame) -> None:
    """Ctrl+C, or SIGTERM: one KeyboardInterrupt. Later signals (the SIGTERM that
    `accelerate launch` sends right after a Ctrl+C) are only counted."""
    _stops.append(signum)
    if len(_stops) == 1:
        _await_launcher()
        raise KeyboardInterrupt


def _await_launcher(seconds: float = 2.0) -> None:
    """Under `accelerate launch`, wait (briefly) for the launcher's own SIGTERM before
    writing anything more. The launcher copies this process's stderr through a pipe and
    drops the chunk it holds when its own Ctrl+C arrives: what this process writes in
    that instant (the progress bar's last line, where to continue from) is lost. The
    launcher sends SIGTERM once a thread is draining the pipe (and kills this process
    5 s later)."""
    if "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return
    deadline = time.monotonic() + seconds
    while len(_stops) == 1 and time.monotonic() < deadline:
        time.sleep(0.01)


def _interrupted(output_dir: str | None, argv: list[str]) -> int:
    """Say (once, from the main process) where a stopped run can continue from."""
    if os.environ.get("RANK", "0") == "0":
        if output_dir is None:
            print("interrupted", file=sys.stderr)
        else:
            from pathlib import Path

            from train.checkpoints import interrupted_line

            print(interrupted_line(Path(output_dir), argv), file=sys.stderr, flush=True)
    return 130


def _failed(error: UserError) -> int:
    # every process of a launch meets the same error: one of them says it
    return 1 if os.environ.get("RANK", "0") != "0" else report_user_error(error)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    if (threading.current_thread() is threading.main_thread()
            and handlers[signal.SIGINT] is signal.default_int_handler):
        _stops.clear()
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
    try:
        return _main(argv)
    finally:
        if threading.current_thread() is threading.main_thread():
            for number, handler in handlers.items():
                signal.signal(number, handler)


def _judge(argv: list[str]) -> int:
    """`python -m train judge ...` (train/judge.py)."""
    from train.judge import from_command_line as judge_config
    from train.judge import train_judge

    config = None
    try:
        config = judge_config(argv)
        summary = train_judge(config)
    except UserError as error:
        return _failed(error)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            print("interrupted: the same command continues from its last checkpoint"
                  if config else "interrupted", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0


def _main(argv: list[str]) -> int:
    if argv[:1] == ["judge"]:
        return _judge(argv[1:])
    from train.config import ONLINE_OBJECTIVES

    config = None
    try:
        config = from_command_line(argv)
        if config.dry_run and config.objective in ONLINE_OBJECTIVES:
            from train.online import plan as online_plan
            from train.plan import launched_processes

            print(online_plan(config, launched_processes()))
            return 0
        if config.dry_run:
            from train.plan import launched_processes, plan

            try:
                print(plan(config, launched_processes()))
            except DoesNotFit as refused:  # the figures, then the one line
                print(refused.text, flush=True)
                raise
            return 0
        if config.objective in ONLINE_OBJECTIVES:
            from train.online import OnlineRun as Run
        else:
            from train.trainer import Run
        run = Run(config)
        summary = run.train()
    except UserError as error:
        return _failed(error)
    except RuntimeError as error:
        if not timed_out(error):
            raise
        # on a line of its own: another process's progress bar may be mid-line
        print(f"\n{timeout_line(config.process_group_timeout)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return _interrupted(config and config.output_dir, argv)
    if run.main:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
