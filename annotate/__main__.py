"""`python -m annotate`: the preference-collection app.

Not built yet: this entry point says so and exits with status 2.
"""

import sys

if __name__ == "__main__":
    print("python -m annotate: not built yet (see the project's open issues)", file=sys.stderr)
    sys.exit(2)
