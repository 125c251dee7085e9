"""A CLIP tokenizer written locally, so nothing is downloaded.

The vocabulary is CLIP's byte-level base (two specials, 256 byte symbols and their
end-of-word forms: 514 tokens), so any text tokenizes. Words given in `words` get BPE
merges that make each of them one token; without merges every word splits into
characters and a short caption overflows a short `model_max_length`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")  # ids 0 and 1


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _write(directory: Path, vocab: dict[str, int], merges: list[str], max_length: int) -> None:
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"})
    )


def write_clip_tokenizer(
    directory: str | Path, words: Sequence[str] = (), model_max_length: int = 16
) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json; load with CLIPTokenizer."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab[symbol] = len(vocab)
    merges: list[str] = []
    _write(directory, vocab, merges, model_max_length)
    for word in words:
        # Merge the pieces the current merges leave, left to right. New merges rank
        # last, so the words already made whole stay whole.
        pieces = CLIPTokenizer.from_pretrained(directory).tokenize(word)
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
        _write(directory, vocab, merges, model_max_length)
    return directory
