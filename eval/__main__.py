"""`python -m eval`: the blind A/B evaluation app, not built yet; this entry point says so and exits."""

import sys

if __name__ == "__main__":
    print("python -m eval: not built yet (see the project's open issues)", file=sys.stderr)
    sys.exit(2)
