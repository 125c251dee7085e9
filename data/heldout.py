"""Held-out pairs chosen by prompt, so that a held-out score measures what a model does on
prompts it never trained on (or by annotator: on people it never heard from).

Drawn uniformly, held-out pairs share their prompt with training pairs (Pick-a-Pic v2
has about 14 pairs a prompt: all 500 of 500 would), and their accuracy then measures
memory of the prompt as much as a learnt preference. Here whole prompts are held out.
Prompts are compared as a person reads them: case, and runs of spaces, do not count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def prompt_key(caption: str) -> str:
    """What makes two captions one prompt: the words, whatever their case and spacing."""
    return " ".join(caption.casefold().split())


def by_prompt(captions: Sequence[str], count: int, seed: int | Sequence[int]) -> np.ndarray:
    """Sorted indices of at most `count` of `captions`' pairs, whole prompts only: prompts
    in an order drawn from `seed`, each taken where all its pairs still fit under `count`.
    None where every prompt has more pairs than `count`."""
    return _whole_groups([prompt_key(caption) for caption in captions], count, seed)


def by_annotator(user_ids: Sequence[int], count: int, seed: int | Sequence[int]) -> np.ndarray:
    """As `by_prompt`, whole annotators: held-out accuracy then says how well a model
    predicts people whose votes it never saw."""
    return _whole_groups(list(user_ids), count, seed)


def _whole_groups(keys: Sequence, count: int, seed: int | Sequence[int]) -> np.ndarray:
    groups: dict = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    members = list(groups.values())
    held: list[int] = []
    for chosen in np.random.default_rng(seed).permutation(len(members)):
        if len(held) >= count:
            break
        if len(held) + len(members[chosen]) <= count:
            held += members[chosen]
    return np.array(sorted(held), dtype=np.int64)


def without_prompts_of(captions: Sequence[str], others: Sequence[str]) -> np.ndarray:
    """Indices of `captions` whose prompt is none of `others`'."""
    seen = {prompt_key(caption) for caption in others}
    return np.array([i for i, caption in enumerate(captions) if prompt_key(caption) not in seen],
                    dtype=np.int64)
