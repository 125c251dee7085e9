"""CLIP and T5 tokenizers written locally, so nothing is downloaded.

The CLIP vocabulary is CLIP's byte-level base (two specials, 256 byte symbols and their
end-of-word forms: 514 tokens), so any text tokenizes. Words given in `words` get BPE
merges that make each of them one token; without merges every word splits into
characters and a short caption overflows a short `model_max_length`.

The T5 one (for SD3- and FLUX-style pipelines) is a SentencePiece-style unigram model:
T5's three specials, the printable ASCII characters with and without the word-start
mark, and each of `words` as one piece; anything else is `<unk>`.
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


def write_t5_tokenizer(
    directory: str | Path, words: Sequence[str] = (), model_max_length: int = 512
) -> Path:
    """Write tokenizer.json and tokenizer_config.json; load with AutoTokenizer."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -3.5) for c in chars]
    pieces += [("\u2581" + w, -1.0) for w in dict.fromkeys(words)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>",
                    pad_token="<pad>", extra_ids=0,
                    model_max_length=model_max_length).save_pretrained(directory)
    return directory



QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>", "<think>", "</think>")
# Qwen's chat format, user/system/assistant turns; Qwen3's `enable_thinking=False` adds an
# empty thinking block after the generation prompt, as Qwen3's own template does.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def write_qwen_tokenizer(directory: str | Path, model_max_length: int = 512) -> Path:
    """Write a byte-level Qwen2 tokenizer with Qwen's chat specials and template (the
    text encoders of Qwen-Image, Z-Image and FLUX.2 [klein] read prompts through it);
    load with Qwen2TokenizerFast or AutoTokenizer. Every character is a token or a few
    byte tokens: no merges."""
    from transformers import Qwen2TokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: i for i, symbol in enumerate(_bytes_to_unicode().values())}
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], model_max_length=model_max_length)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS[1:])})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory
