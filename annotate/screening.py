"""What a typed prompt must pass before it is generated.

Empty prompts and prompts with a blocked word are refused with a message; a prompt
longer than the text encoder reads is accepted (and stored verbatim) with a note that
says how much of it the model never sees.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data.errors import UserError


class PromptRefused(UserError):
    """The prompt cannot be generated; the message says why and what to do."""


@dataclass(frozen=True)
class Blocklist:
    """Words and phrases that must not be generated, matched whole and case-insensitively."""

    entries: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: str | Path) -> Blocklist:
        """One word or phrase per line; blank lines and lines starting with # are ignored."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls(tuple(line.strip() for line in lines
                         if line.strip() and not line.lstrip().startswith("#")))

    def first_match(self, prompt: str) -> str | None:
        for entry in self.entries:
            if re.search(rf"(?<!\w){re.escape(entry)}(?!\w)", prompt, re.IGNORECASE):
                return entry
        return None


def token_counter(tokenizer) -> tuple[Callable[[str], int], int]:
    """(count(prompt), limit) for a diffusers pipeline's CLIP tokenizer.

    The count includes the start and end tokens, as the limit does. It counts with its
    own copy of the tokenizer: a fast tokenizer keeps its truncation setting between
    calls, so counting on a session's thread with the pipeline's own tokenizer could
    switch truncation off under a generation on the worker's thread.
    """
    tokenizer = copy.deepcopy(tokenizer)
    return (lambda text: len(tokenizer(text, truncation=False, verbose=False).input_ids),
            int(tokenizer.model_max_length))


def truncation_note(count: int, limit: int) -> str | None:
    """A note for a prompt of `count` tokens when the text encoder reads `limit`."""
    if count <= limit:
        return None
    return (f"The model reads the first {limit - 2} tokens of a prompt (its text encoder's "
            f"limit); the last {count - limit} tokens of this one are not seen. "
            "The full prompt is stored.")


def screen(prompt: str, blocklist: Blocklist, count: Callable[[str], int] | None = None,
           limit: int | None = None) -> str | None:
    """Refuse an empty or blocked prompt; otherwise the note to show with it, if any."""
    if not prompt.strip():
        raise PromptRefused("The prompt is empty: type what the images should show.")
    blocked = blocklist.first_match(prompt)
    if blocked is not None:
        raise PromptRefused(f'The prompt contains the blocked term "{blocked}": '
                            "rephrase it without that term.")
    if count is None or limit is None:
        return None
    return truncation_note(count(prompt), limit)
