"""`python -m annotate`: the preference-collection app.

`python -m annotate feedback ...` labels generated pairs with a scorer (annotate/feedback.py).
The web app is not built yet: anything else says so and exits with status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch a subcommand; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["feedback"]:
        from annotate.feedback import main as feedback

        return feedback(argv[1:])
    print("python -m annotate: not built yet (see the project's open issues)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
