"""`accelerate launch -m train PRESET_OR_CONFIG [--key value ...]` (or `python -m train`)."""

import json
import sys

from data.errors import DataError
from models.errors import ModelError
from train.config import from_command_line
from train.errors import TrainError


def main(argv: list[str] | None = None) -> int:
    try:
        config = from_command_line(argv)
        from train.trainer import Run

        summary = Run(config).train()
    except (TrainError, DataError, ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: continue with --resume latest", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
