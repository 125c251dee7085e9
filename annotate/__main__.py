"""`python -m annotate`: the preference-collection page (annotate/serve.py).

`python -m annotate feedback ...` labels generated pairs with a scorer instead
(annotate/feedback.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch a subcommand; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["feedback"]:
        from annotate.feedback import main as feedback

        return feedback(argv[1:])
    from annotate.serve import main as serve

    return serve(argv)


if __name__ == "__main__":
    code = main()
    if sys.argv[1:2] == ["feedback"]:
        sys.exit(code)
    # The server is closed (its store too), but its daemon threads may still be inside
    # C++ code (the worker in a sampler step). Interpreter teardown would unwind them
    # there, which glibc reports as "FATAL: exception not rethrown" and an abort; leave
    # without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
