"""Prompt sets, shared by every command: one prompt a line, or a CSV with categories.

A text file holds one prompt a line (blank lines and lines starting with '#' skipped).
A CSV (named *.csv, or whose first line is a header with a `prompt` column) or a TSV
(named *.tsv, as PartiPrompts.tsv is) gives the `prompt` column and, when there is one,
the `category` column (PartiPrompts spells them `Prompt` and `Category`; case is
ignored), which eval reports tally separately.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from cli.errors import DataError


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str | None = None


def read_prompt_set(path: str | Path) -> list[Prompt]:
    """Every prompt of a file, in order, with its category when the file has one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"prompts file {path} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read prompts file {path}: {error}") from None
    lines = text.splitlines()
    header = next(csv.reader(lines[:1]), [])
    if path.suffix.lower() == ".tsv":
        prompts = _csv_prompts(path, lines, delimiter="\t")
    elif path.suffix.lower() == ".csv" or (len(header) > 1 and "prompt" in header):
        prompts = _csv_prompts(path, lines)
    else:
        prompts = [Prompt(s) for s in (line.strip() for line in lines)
                   if s and not s.startswith("#")]
    if not prompts:
        raise DataError(f"{path} holds no prompts")
    return prompts


def read_prompts(path: str | Path) -> list[str]:
    """The prompts' texts alone."""
    return [prompt.text for prompt in read_prompt_set(path)]


def _csv_prompts(path: Path, lines: list[str], delimiter: str = ",") -> list[Prompt]:
    reader = csv.DictReader(lines, delimiter=delimiter)
    columns = {name.lower(): name for name in reader.fieldnames or []}
    if "prompt" not in columns:
        raise DataError(
            f"{path} is a CSV without a 'prompt' column (its columns: "
            f"{', '.join(columns.values())})"
        )
    prompt_column, category_column = columns["prompt"], columns.get("category")
    prompts = []
    for row in reader:
        text = (row[prompt_column] or "").strip()
        if text:
            category = (row[category_column] or "").strip() if category_column else ""
            prompts.append(Prompt(text, category or None))
    return prompts
