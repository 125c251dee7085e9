"""`accelerate launch -m train PRESET_OR_CONFIG [--key value ...]` (or `python -m train`)."""

import json
import os
import sys

# transformers warns on import that torchvision is absent; this project never needs it.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from data.errors import UserError, report_user_error  # noqa: E402
from train.config import from_command_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    try:
        config, dry_run = from_command_line(argv)
        if dry_run:
            from train.plan import launched_processes, plan

            print(plan(config, launched_processes()))
            return 0
        from train.trainer import Run

        run = Run(config)
    except UserError as error:
        # every process of a launch meets the same setup error: one of them says it
        return 1 if os.environ.get("RANK", "0") != "0" else report_user_error(error)
    except KeyboardInterrupt:
        print("interrupted: continue with --resume latest", file=sys.stderr)
        return 130
    try:
        summary = run.train()
    except UserError as error:
        return report_user_error(error)
    except KeyboardInterrupt:
        print("interrupted: continue with --resume latest", file=sys.stderr)
        return 130
    if run.main:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
