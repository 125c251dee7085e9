"""`python -m annotate feedback`: label generated pairs with a scorer, headless.

The paper's AI-feedback variant, and the quickest way to fill a store: a model draws
two images per prompt, a scorer (the toy judge, PickScore, or a user's
`module:callable`) prefers one, and the pair is recorded as a vote with source
`ai:<scorer>`, exactly as a person's vote would be.

Everything about a pair follows from the run's settings and its index, so a run is
reproducible and resumable: the vote id is derived from a run key (model, prompts,
scorer, seed, variety, tie margin) plus the index, and a second run with the same
settings skips the indices already stored. Each vote is its own transaction, so an
interrupted run loses at most the batch in flight and never leaves half a pair.

Speed comes from batching: the pairs of one prompt are drawn in one pipeline call
(`--batch` pairs, twice as many images) and scored in one scorer call.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property

from annotate.config import FeedbackConfig
from cli.entry import INTERRUPTED
from cli.errors import ModelError, UsageError
from cli.parser import save_config_beside
from data.pairs import decode_image, encode_jpeg
from data.prompts import read_prompts
from data.store import Store, Vote
from models.generate import generate
from models.loading import LoadedModel
from models.scorers import Scorer, checked_scores
from models.threads import use_free_cores
from models.toy import TOY_NAME, built_in_prompts
from models.variety import PairVariety

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "diffusion-dpo-loop/annotate/feedback")


# -- settings ------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackRun:
    """What one feedback run makes: every pair follows from these and its index.

    `batch` only decides how many pairs share a pipeline call; it is not part of the
    run's identity, so a resumed run may use another batch size.
    """

    prompts: tuple[str, ...]
    model: str = TOY_NAME
    scorer: str = "toy_judge"
    pairs: int = 1000
    seed: int = 0
    variety: PairVariety = field(default_factory=PairVariety)
    per_prompt: int = 1
    tie_margin: float = 0.0
    batch: int = 16
    scorer_options: tuple[tuple[str, str], ...] = ()  # (name, value) for load_scorer

    def __post_init__(self) -> None:
        if not self.prompts:
            raise UsageError("no prompts: give --prompts FILE with one prompt per line")
        checks = [
            (self.pairs >= 1, "--pairs must be at least 1"),
            (self.per_prompt >= 1, "--per-prompt must be at least 1"),
            (self.batch >= 1, "--batch must be at least 1"),
            (self.tie_margin >= 0, "--tie-margin must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    @property
    def source(self) -> str:
        """The provenance recorded with each vote, and the annotator's name."""
        return f"ai:{self.scorer}"

    @cached_property
    def key(self) -> str:
        """16 hex digits naming everything that decides a pair's images and label."""
        identity = {
            "model": self.model, "scorer": self.scorer,
            "scorer_options": list(self.scorer_options), "seed": self.seed,
            "guidance": self.variety.guidance,
            "guidance_range": list(self.variety.guidance_range or ()),
            "steps": self.variety.steps, "per_prompt": self.per_prompt,
            "tie_margin": self.tie_margin,
            "prompts": hashlib.sha256("\n".join(self.prompts).encode()).hexdigest(),
        }
        text = json.dumps(identity, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    @property
    def vote_prefix(self) -> str:
        return f"ai-{self.key}-"

    def vote_id(self, index: int) -> str:
        return f"{self.vote_prefix}{index:08d}"

    def prompt_index(self, index: int) -> int:
        """Prompts cycle in order, `per_prompt` pairs each."""
        return (index // self.per_prompt) % len(self.prompts)

    def prompt(self, index: int) -> str:
        return self.prompts[self.prompt_index(index)]

    def draw(self, index: int) -> tuple[list[int], list[float]]:
        """The pair's two seeds and guidance scales, from `seed` and the index alone."""
        digest = hashlib.blake2b(f"{self.seed}:{index}".encode(), digest_size=8).digest()
        return self.variety.draw(random.Random(int.from_bytes(digest, "big")))


def image_uid(vote_id: str, side: int) -> str:
    """A uuid fixed by the vote and side, so a replayed pair names the same images."""
    return str(uuid.uuid5(_UID_NAMESPACE, f"{vote_id}/{side}"))


# -- prompts -------------------------------------------------------------------


def default_prompts(model: str) -> list[str]:
    """The model's built-in prompts (the toy's captions); other models need a prompts file."""
    built_in = built_in_prompts(model)
    if built_in is None:
        raise UsageError(
            f"--model {model} has no built-in prompts: give --prompts FILE "
            "(one prompt per line, or a CSV with a 'prompt' column)"
        )
    return [prompt.text for prompt in built_in]


# -- planning ------------------------------------------------------------------


def existing_indices(store: Store, run: FeedbackRun) -> set[int]:
    """Indices of this run's pairs that the store already holds."""
    prefix = run.vote_prefix
    return {int(vote_id[len(prefix):]) for vote_id in store.vote_ids(prefix)}


def plan_batches(run: FeedbackRun, missing: Sequence[int]) -> list[list[int]]:
    """Missing pair indices in batches of one prompt each, at most `run.batch` long.

    Batches go round the prompts (every prompt's first batch, then every second), so
    an interrupted run has covered the prompts evenly.
    """
    by_prompt: dict[int, list[int]] = {}
    for index in missing:
        by_prompt.setdefault(run.prompt_index(index), []).append(index)
    chunked = [
        [ids[k:k + run.batch] for k in range(0, len(ids), run.batch)]
        for ids in by_prompt.values()
    ]
    return [batch for row in itertools.zip_longest(*chunked) for batch in row if batch]


def outcome(score_0: float, score_1: float, margin: float) -> str:
    """'left' (image 0, shown on the left, wins), 'right', or 'tie' within `margin`."""
    if abs(score_0 - score_1) <= margin:
        return "tie"
    return "left" if score_0 > score_1 else "right"


# -- one batch -----------------------------------------------------------------




@dataclass
class Counts:
    """What a run found and did; `summary()` is the command's closing line."""

    pairs: int
    existing: int
    added: int = 0
    left: int = 0
    right: int = 0
    ties: int = 0
    generate_s: float = 0.0
    score_s: float = 0.0
    store_s: float = 0.0
    interrupted: bool = False

    @property
    def seconds(self) -> float:
        return self.generate_s + self.score_s + self.store_s

    def summary(self) -> dict[str, object]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 2)
        out["pairs_per_min"] = round(60 * self.added / self.seconds, 1) if self.seconds else 0.0
        for key in ("generate_s", "score_s", "store_s"):
            out[key] = round(out[key], 2)
        return out


@dataclass(frozen=True)
class Labeller:
    """The scorer of a run, with the name its votes are recorded under."""

    scorer: Scorer
    name: str
    user_id: int


def run_batch(run: FeedbackRun, model: LoadedModel, labeller: Labeller, store: Store,
              indices: list[int], counts: Counts) -> None:
    """Generate, score and store the pairs `indices` (all of one prompt)."""
    prompt = run.prompt(indices[0])
    draws = [run.draw(i) for i in indices]
    start = time.perf_counter()
    images = generate(
        model, prompt, [s for seeds, _ in draws for s in seeds],
        [g for _, scales in draws for g in scales], run.variety.steps,
    )
    jpgs = [encode_jpeg(im.image) for im in images]
    counts.generate_s += time.perf_counter() - start

    start = time.perf_counter()
    # Score what is stored (the JPEG), so a label always describes the stored pair.
    scores = checked_scores(labeller.scorer, labeller.name, [prompt] * len(jpgs),
                            [decode_image(j) for j in jpgs])
    counts.score_s += time.perf_counter() - start

    start = time.perf_counter()
    votes, outcomes = [], []
    for k, index in enumerate(indices):
        vote_id = run.vote_id(index)
        pair = [images[2 * k + s].record(image_uid(vote_id, s), jpgs[2 * k + s])
                for s in (0, 1)]
        result = outcome(scores[2 * k], scores[2 * k + 1], run.tie_margin)
        votes.append((Vote(vote_id=vote_id, caption=prompt, image_0_uid=pair[0].image_uid,
                           image_1_uid=pair[1].image_uid, outcome=result, shown_left=0,
                           user_id=labeller.user_id, source=run.source), pair))
        outcomes.append(result)
    store.record_votes(votes)  # one commit for the batch: a commit costs more than a pair
    counts.added += len(outcomes)
    counts.ties += outcomes.count("tie")
    counts.left += outcomes.count("left")
    counts.right += outcomes.count("right")
    counts.store_s += time.perf_counter() - start


def collect(
    run: FeedbackRun,
    store: Store,
    scorer: Scorer,
    load_model: Callable[[], LoadedModel],
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> Counts:
    """Add the run's missing pairs to `store`; the counts of what was found and added.

    `load_model` is called only when something is missing, so a finished run returns
    at once. Ctrl-C stops at once (the batch in flight is rolled back, the ones before
    are committed) and the counts say `interrupted`.
    """
    from tqdm import tqdm

    done = existing_indices(store, run)
    missing = [i for i in range(run.pairs) if i not in done]
    counts = Counts(pairs=run.pairs, existing=run.pairs - len(missing))
    if announce:
        announce(
            f"{run.source}: {counts.existing} of {run.pairs} pairs already in {store.path}"
            f" (run {run.key}); adding {len(missing)}"
        )
    if not missing:
        return counts
    labeller = Labeller(scorer, run.scorer, store.user_id(run.source))
    model = load_model()
    bar = tqdm(total=len(missing), unit="pair", disable=not progress, file=sys.stderr,
               mininterval=1.0, dynamic_ncols=True)
    try:
        for indices in plan_batches(run, missing):
            before = counts.added
            try:
                run_batch(run, model, labeller, store, indices, counts)
            finally:
                bar.update(counts.added - before)
    except KeyboardInterrupt:
        counts.interrupted = True
    finally:
        bar.close()
    return counts


# -- command line --------------------------------------------------------------


def run_from_config(config: FeedbackConfig) -> FeedbackRun:
    prompts = read_prompts(config.prompts) if config.prompts else default_prompts(config.model)
    return FeedbackRun(
        prompts=tuple(prompts), model=config.model, scorer=config.scorer, pairs=config.pairs,
        seed=config.seed, variety=config.variety(), per_prompt=config.per_prompt,
        tie_margin=config.tie_margin, batch=config.batch,
        scorer_options=tuple(config.scorer_options().items()),
    )


def load_scorer(run: FeedbackRun, device: str) -> Scorer:
    """The run's scorer; any failure to build it is one ModelError line."""
    from models.scorers import load_scorer as load

    try:
        return load(run.scorer, device=device, **dict(run.scorer_options))
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"cannot load scorer {run.scorer}: {type(error).__name__}: "
                         f"{error}") from None


def feedback(config: FeedbackConfig) -> int:
    """The command: 0 when done, 130 when interrupted (what was added is kept)."""
    from models.loading import default_device_and_dtype, load

    run = run_from_config(config)
    if (chosen := use_free_cores(config.threads, how="--threads N")):
        print(chosen, file=sys.stderr)
    device = default_device_and_dtype()[0]
    try:
        scorer = load_scorer(run, device)
        with Store(config.db) as store:
            save_config_beside(config, config.db, "feedback")
            counts = collect(
                run, store, scorer, lambda: load(run.model), progress=not config.no_progress,
                announce=lambda line: print(line, file=sys.stderr),
            )
    except KeyboardInterrupt:
        print("interrupted before any pair was made", file=sys.stderr)
        raise
    summary = {"source": run.source, "db": str(config.db), "run": run.key, **counts.summary()}
    print(json.dumps(summary))
    if config.summary is not None and not counts.interrupted:
        config.summary.write_text(json.dumps(summary, indent=1))
    if counts.interrupted:
        print(f"interrupted: {counts.added} pairs added; run the same command to continue",
              file=sys.stderr)
        return INTERRUPTED
    return 0
