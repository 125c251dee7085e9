"""What a typed prompt must pass before it is generated.

Empty prompts, prompts longer than `MAX_PROMPT_CHARS` and prompts with a blocked word are
refused with a message; a prompt longer than the text encoder reads (but within the
cap) is accepted (and stored verbatim) with a note that says how much of it the model
never sees.

The blocklist is matched against what the text encoder reads, not the raw text: the
prompt NFKC-normalised and case-folded (fullwidth `ｒｅｄ` is `red`), then split into
words as CLIP's tokenizer splits them (`encoder_words`: `a_red_circle` is `a _ red _
circle`, `red2` is `red 2`). A longer word that contains a blocked one (`tired`) is a
word of its own to the encoder, and is not refused.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cli.errors import PageError

# About what the longest-reading text encoder served here reads (FLUX's T5: 512 tokens, at
# about four characters a token); every CLIP encoder reads far less (77 tokens). Beyond it
# a prompt only costs: tokenizing, storing (a caption per image and per vote), exporting.
MAX_PROMPT_CHARS = 2000

# CLIP's tokenizer's own word split (its pre-tokenizer pattern, `re` spelling): the
# contractions, a run of letters, one digit, or a run of anything else but spaces.
_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")


def normalise(text: str) -> str:
    """`text` as the blocklist compares it: NFKC (fullwidth and compatibility forms read
    as the plain letters) and case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def encoder_words(text: str) -> list[str]:
    """The words a CLIP tokenizer makes of `text` (normalised): each is one or more tokens
    to the text encoder, which never reads a word across these boundaries."""
    return _WORD.findall(normalise(text))


def _is_word(token: str) -> bool:
    return token[0].isalnum()


def _contains(words: list[str], entry: list[str]) -> bool:
    """Whether `entry` is a run of `words`. An entry of letters and digits alone is looked
    for among the prompt's letters and digits alone, so `red panda` finds `red_panda`."""
    if entry and all(_is_word(token) for token in entry):
        words = [token for token in words if _is_word(token)]
    size = len(entry)
    return size > 0 and any(words[i:i + size] == entry for i in range(len(words) - size + 1))


def check_length(prompt: str) -> None:
    """Refuse a prompt over `MAX_PROMPT_CHARS`, before anything reads it further."""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PageError(f"The prompt is {len(prompt):,} characters long: shorten it to at "
                            f"most {MAX_PROMPT_CHARS:,}.")


@dataclass(frozen=True)
class Blocklist:
    """Words and phrases that must not be generated: matched whole, in the normalised text
    or among the words the text encoder reads (`encoder_words`)."""

    entries: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: str | Path) -> Blocklist:
        """One word or phrase per line; blank lines and lines starting with # are ignored."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls(tuple(line.strip() for line in lines
                         if line.strip() and not line.lstrip().startswith("#")))

    def first_match(self, prompt: str) -> str | None:
        """The first entry the prompt holds, or None."""
        text, words = normalise(prompt), encoder_words(prompt)
        for entry in self.entries:
            if (re.search(rf"(?<!\w){re.escape(normalise(entry))}(?!\w)", text)
                    or _contains(words, encoder_words(entry))):
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
    """Refuse an empty, overlong or blocked prompt; otherwise the note to show with it,
    if any."""
    if not prompt.strip():
        raise PageError("The prompt is empty: type what the images should show.")
    check_length(prompt)
    blocked = blocklist.first_match(prompt)
    if blocked is not None:
        raise PageError(f'The prompt contains the blocked term "{blocked}": '
                            "rephrase it without that term.")
    if count is None or limit is None:
        return None
    return truncation_note(count(prompt), limit)
