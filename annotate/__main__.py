"""`python -m annotate`: the preference-collection page (annotate/serve.py).

`python -m annotate feedback ...` labels generated pairs with a scorer instead, and
`python -m annotate pool ...` makes unlabelled pairs ahead of time (annotate/feedback.py),
and `python -m annotate relabel ...` gives pairs that exist a scorer's soft label
(annotate/relabel.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from annotate.config import FeedbackConfig, PageConfig, PoolConfig, RelabelConfig  # noqa: E402
from cli.entry import run_main  # noqa: E402
from cli.parser import parse_command  # noqa: E402

COMMANDS = {"page": PageConfig, "feedback": FeedbackConfig, "pool": PoolConfig,
            "relabel": RelabelConfig}


def main(argv: Sequence[str] | None = None) -> int:
    """The page, `feedback` or `pool`; the exit status."""

    def command(argv: list[str]) -> int:
        name, config = parse_command(COMMANDS, argv, "python -m annotate", default="page")
        if name in ("feedback", "pool"):
            from annotate.feedback import make_pairs

            return make_pairs(config, name)
        if name == "relabel":
            from annotate.relabel import relabel

            return relabel(config)
        from annotate.serve import serve

        return serve(config)

    return run_main(command, argv)


if __name__ == "__main__":
    code = main()
    if sys.argv[1:2] in (["feedback"], ["pool"], ["relabel"]):
        sys.exit(code)
    from annotate.serve import leave

    leave(code)
