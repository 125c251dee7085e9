"""The README's commands, as the docs test (tests/test_readme.py) and the toy-loop
benchmark (benchmarks/toy_loop.py) read them: one parser, so both see the same text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

_FENCE = re.compile(r"^\s*```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, its first line's number, its text."""

    language: str
    line: int
    text: str


@dataclass(frozen=True)
class Command:
    """One shell command of a bash block, continuation lines joined."""

    text: str
    line: int


def blocks(path: Path = README) -> list[Block]:
    found, language, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = _FENCE.match(line)
        if fence and language is None:
            language, start, lines = fence.group(1) or "text", number + 1, []
        elif fence:
            found.append(Block(language, start, _dedent(lines)))
            language = None
        elif language is not None:
            lines.append(line)
    if language is not None:
        raise ValueError(f"{path}:{start - 1}: a code block is never closed")
    return found


def commands(path: Path = README) -> list[Command]:
    """Every command of every bash block, in order; comment lines are not commands."""
    found = []
    for block in blocks(path):
        if block.language not in ("bash", "sh", "shell"):
            continue
        pending, first = "", 0
        for offset, line in enumerate(block.text.splitlines()):
            stripped = line.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if not pending:
                first = block.line + offset
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            found.append(Command(" ".join((pending + stripped).split()), first))
            pending = ""
    return found


def python_blocks(path: Path = README) -> list[Block]:
    return [block for block in blocks(path) if block.language == "python"]


def _dedent(lines: list[str]) -> str:
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(indents, default=0)
    return "\n".join(line[cut:] for line in lines)


def within_threads(text: str, threads: str | int | None) -> str:
    """`text` with a `--num_cpu_threads_per_process N` of its own lowered to `threads`:
    accelerate sets OMP_NUM_THREADS from that flag, over the caller's cap (the test
    workers' share of the cores, or toy_loop's --threads)."""
    if not threads:
        return text

    def lowered(match: re.Match) -> str:
        return f"--num_cpu_threads_per_process {min(int(match.group(1)), int(threads))}"

    return re.sub(r"--num_cpu_threads_per_process (\d+)", lowered, text)
