"""The automatic judge: the same tallies as the blind app, from a scorer instead of people.

Every prompt and seed gives one pair (base image, aligned image, same seed). The scorer
decides it: the higher score wins; scores within `tie_margin` of each other are a tie.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.prompts import Prompt
from eval.config import Sampling
from eval.images import DEFAULT_ROOT, images_for, open_image
from eval.stats import Interval, Judgement
from models.scorers import SCORE_BATCH, checked_scores


@dataclass
class AutoResult:
    base: str
    aligned: str
    scorer: str
    sampling: Sampling
    tie_margin: float
    prompts: list[Prompt]  # one entry per pair, in pair order
    seeds: list[int]
    base_scores: np.ndarray
    aligned_scores: np.ndarray
    votes: list[Judgement] = field(default_factory=list)
    judge_s: float = 0.0  # the scorer's seconds on both models' images, loading them included


def mean_interval(scores: np.ndarray) -> tuple[float, Interval]:
    """The mean and its normal-approximation 95% interval."""
    mean = float(np.mean(scores))
    half = 1.96 * float(np.std(scores, ddof=1)) / math.sqrt(len(scores)) \
        if len(scores) > 1 else float("inf")
    return mean, Interval(mean - half, mean + half)


def score_images(scorer, name: str, prompts: list[str], paths: list[Path],
                 label: str, batch: int | None = None) -> np.ndarray:
    """The scorer's checked scores of one model's images (`label`), `batch` a call."""
    batch = SCORE_BATCH if batch is None else batch
    scores = []
    for start in tqdm(range(0, len(paths), batch), desc=f"scoring {label}", unit="batch"):
        images = [open_image(p) for p in paths[start:start + batch]]
        scores += checked_scores(scorer, name, prompts[start:start + batch], images, batch)
    return np.asarray(scores)


def outcome(base_score: float, aligned_score: float, tie_margin: float) -> str:
    if abs(aligned_score - base_score) <= tie_margin:
        return "tie"
    return "aligned" if aligned_score > base_score else "base"


def compare(base: str, aligned: str, prompts: list[Prompt], scorer, scorer_name: str,
            sampling: Sampling | None = None, tie_margin: float = 0.0,
            root: Path = DEFAULT_ROOT, score_batch: int | None = None) -> AutoResult:
    """Generate (or reuse) both models' images and let the scorer judge every pair."""
    sampling = sampling or Sampling()
    texts = [p.text for p in prompts]
    base_paths = images_for(base, texts, sampling, root)
    aligned_paths = images_for(aligned, texts, sampling, root)
    pairs = [(p, s) for p in prompts for s in range(sampling.seeds)]
    pair_texts = [p.text for p, _ in pairs]
    start = time.perf_counter()
    base_scores = score_images(scorer, scorer_name, pair_texts,
                               [base_paths[(p.text, s)] for p, s in pairs], "base", score_batch)
    aligned_scores = score_images(scorer, scorer_name, pair_texts,
                                  [aligned_paths[(p.text, s)] for p, s in pairs], "aligned",
                                  score_batch)
    judge_s = time.perf_counter() - start
    votes = [Judgement(prompt.text, outcome(b, a, tie_margin), category=prompt.category)
             for (prompt, _), b, a in zip(pairs, base_scores, aligned_scores, strict=True)]
    return AutoResult(base, aligned, scorer_name, sampling, tie_margin,
                      [p for p, _ in pairs], [s for _, s in pairs], base_scores,
                      aligned_scores, votes, judge_s)
