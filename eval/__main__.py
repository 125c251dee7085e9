"""`python -m eval`: the blind A/B evaluation app.

Not built yet: this entry point says so and exits with status 2.
"""

import sys

if __name__ == "__main__":
    print("python -m eval: not built yet (see the project's open issues)", file=sys.stderr)
    sys.exit(2)
