"""Write tests/slow.txt from the log of a full run with `--durations=0`.

    PYTEST_ADDOPTS=--durations=0 bash scripts/test.sh > run.log
    python scripts/slow_tests.py run.log

A test is slow when its setup, call and teardown took over SECONDS together (a module's
shared fixture counts for the test that built it). tests/conftest.py marks those `slow`,
so `pytest -m "not slow"` is the quick loop and CI still runs everything.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

SECONDS = 5.0
_LINE = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(tests/\S+)$")
HEADER = ("# Tests that took over 5 s in the last full run measured (scripts/slow_tests.py writes\n"
          "# this file from a pytest --durations=0 log); tests/conftest.py marks them slow.\n")


def slow_tests(log: str, seconds: float = SECONDS) -> list[str]:
    """The node ids (without `tests/`) whose phases in `log` add up to over `seconds`."""
    total: dict[str, float] = defaultdict(float)
    for line in log.splitlines():
        if match := _LINE.match(line.strip()):
            total[match[3]] += float(match[1])
    return sorted(node.removeprefix("tests/") for node, took in total.items() if took > seconds)


def main(argv: list[str]) -> int:
    found = slow_tests(Path(argv[0]).read_text(errors="replace"))
    out = Path(__file__).resolve().parents[1] / "tests" / "slow.txt"
    out.write_text(HEADER + "".join(f"{node}\n" for node in found))
    print(f"{len(found)} slow tests written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
