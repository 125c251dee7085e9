"""`python -m annotate feedback` and `python -m annotate pool`: pairs made headless.

Feedback is the paper's AI-feedback variant, and the quickest way to fill a store: a
model draws two images per prompt, a scorer (the toy judge, PickScore, or a user's
`module:callable`) prefers one, and the pair is recorded as a vote with source
`ai:<scorer>`, exactly as a person's vote would be. A pool is the same pairs without a
scorer: unlabelled pairs made ahead of time, for the page to show people without a wait.

Everything about a pair follows from the run's settings and its index, so a run is
reproducible and resumable: the pair's id is derived from a run key (model, prompts,
scorer, seed, variety, tie margin) plus the index, and a second run with the same
settings skips the indices already stored. Each batch is its own transaction, so an
interrupted run loses at most the batch in flight and never leaves half a pair.

Under `accelerate launch` every process makes every N-th batch of one plan
(models/launch.py); the main process stores its own batches and takes in the others'
(data/shards.py), so N processes store exactly the pairs one would.

Speed comes from batching: the pairs of one prompt are drawn in one pipeline call
(`--batch` pairs, twice as many images) and scored in one scorer call.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from annotate.config import FeedbackConfig, PoolConfig
from cli.entry import INTERRUPTED
from cli.errors import ModelError, UsageError
from cli.parser import save_config_beside
from data.pairs import decode_image, encode_jpeg
from data.prompts import read_prompts
from data.shards import Pair, add_pairs, clear_partial, shard_folder, take_in, write_shard
from data.store import PoolPair, Store, Vote
from data.store import pair_image_uid as image_uid
from models.generate import generate
from models.launch import ONE_PROCESS, Launch, this_launch
from models.loading import LoadedModel
from models.scorers import SCORE_BATCH, Scorer, checked_scores
from models.scorers import load_scorer as load_named_scorer
from models.threads import use_free_cores
from models.toy import TOY_NAME, built_in_prompts
from models.variety import PairVariety

# -- settings ------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackRun:
    """What one feedback or pool run makes: every pair follows from these and its index.

    `batch` only decides how many pairs share a pipeline call; it is not part of the
    run's identity, so a resumed run may use another batch size. `scorer` None: a pool
    (unlabelled pairs).
    """

    prompts: tuple[str, ...]
    model: str = TOY_NAME
    scorer: str | None = "toy_judge"
    pairs: int = 1000
    seed: int = 0
    variety: PairVariety = field(default_factory=PairVariety)
    per_prompt: int = 1
    tie_margin: float = 0.0
    batch: int = 16
    scorer_options: tuple[tuple[str, str], ...] = ()  # (name, value) for load_scorer
    score_batch: int = SCORE_BATCH  # images a scorer call takes; not part of the identity
    guards: tuple[str, ...] = ()  # scorers that may veto a label (a tie instead)
    guard_margin: float = 0.0

    def __post_init__(self) -> None:
        if not self.prompts:
            raise UsageError("no prompts: give --prompts FILE with one prompt per line")
        checks = [
            (self.pairs >= 1, "--pairs must be at least 1"),
            (self.per_prompt >= 1, "--per-prompt must be at least 1"),
            (self.batch >= 1, "--batch must be at least 1"),
            (self.score_batch >= 1, "--score-batch must be at least 1"),
            (self.tie_margin >= 0, "--tie-margin must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    @property
    def source(self) -> str:
        """The provenance recorded with each vote, and the annotator's name; a pool's name."""
        return f"ai:{self.scorer}" if self.scorer else f"pool-{self.key}"

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
        if self.variety.size is not None:  # the model's own size: the key it always had
            identity["size"] = self.variety.size
        if self.guards:  # likewise: a run without guards keeps the key it always had
            identity["guards"], identity["guard_margin"] = list(self.guards), self.guard_margin
        text = json.dumps(identity, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    @property
    def vote_prefix(self) -> str:
        """What every pair id of the run starts with."""
        return f"{'ai' if self.scorer else 'pool'}-{self.key}-"

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
    ids = store.vote_ids(prefix) if run.scorer else store.pool_ids(prefix)
    return {int(pair_id[len(prefix):]) for pair_id in ids}


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
    """What a run found and did; `summary()` is the command's closing line. Several
    processes' counts add up (`merged`); their seconds are the slowest process's."""

    pairs: int
    existing: int
    added: int = 0
    left: int = 0
    right: int = 0
    ties: int = 0
    generate_s: float = 0.0
    score_s: float = 0.0
    store_s: float = 0.0
    processes: int = 1
    interrupted: bool = False
    judge_s: float = 0.0  # merged counts: every process's score_s summed (per pair: / added)
    vetoed: int = 0  # pairs a guard scorer made ties

    @property
    def seconds(self) -> float:
        return self.generate_s + self.score_s + self.store_s

    def merged(self, others: list[Counts]) -> Counts:
        everyone = [self, *others]
        slowest = max(everyone, key=lambda c: c.seconds)
        return Counts(
            self.pairs, self.existing, *(sum(getattr(c, k) for c in everyone)
                                         for k in ("added", "left", "right", "ties")),
            slowest.generate_s, slowest.score_s, slowest.store_s, len(everyone),
            any(c.interrupted for c in everyone), sum(c.score_s for c in everyone),
            sum(c.vetoed for c in everyone))

    def summary(self) -> dict[str, object]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 2)
        out["pairs_per_min"] = round(60 * self.added / self.seconds, 1) if self.seconds else 0.0
        for key in ("generate_s", "score_s", "store_s"):
            out[key] = round(out[key], 2)
        judged = self.judge_s or self.score_s
        out["judge_ms_per_pair"] = round(1000 * judged / self.added, 1) if self.added else 0.0
        del out["judge_s"]
        return out


@dataclass(frozen=True)
class Labeller:
    """The scorer of a run, with the name its votes are recorded under."""

    scorer: Scorer
    name: str
    user_id: int
    batch: int = SCORE_BATCH
    guards: dict[str, Scorer] = field(default_factory=dict)
    guard_margin: float = 0.0

    def outcomes(self, prompt: str, images: list, tie_margin: float,
                 counts: Counts) -> list[str]:
        """Each pair's outcome by the scorer (images two by two), a tie where a guard
        scorer prefers the other image by more than `guard_margin`."""
        prompts = [prompt] * len(images)
        scores = checked_scores(self.scorer, self.name, prompts, images, self.batch)
        said = [outcome(scores[k], scores[k + 1], tie_margin)
                for k in range(0, len(images), 2)]
        for name, guard in self.guards.items():
            guarded = checked_scores(guard, name, prompts, images, self.batch)
            for pair, result in enumerate(said):
                gap = guarded[2 * pair] - guarded[2 * pair + 1]  # the guard's for image 0
                if (result == "left" and -gap > self.guard_margin) or (
                        result == "right" and gap > self.guard_margin):
                    said[pair] = "tie"
                    counts.vetoed += 1
        return said


def make_batch(run: FeedbackRun, model: LoadedModel, labeller: Labeller | None,
               indices: list[int], counts: Counts) -> list[Pair]:
    """Generate (and, with a labeller, score) the pairs `indices`, all of one prompt: a
    vote each, or a pool pair each without a labeller."""
    prompt = run.prompt(indices[0])
    draws = [run.draw(i) for i in indices]
    start = time.perf_counter()
    images = generate(
        model, prompt, [s for seeds, _ in draws for s in seeds],
        [g for _, scales in draws for g in scales], run.variety.steps, run.variety.size,
        run.variety.size,
    )
    jpgs = [encode_jpeg(im.image) for im in images]
    counts.generate_s += time.perf_counter() - start

    ids = [run.vote_id(index) for index in indices]
    records = [tuple(images[2 * k + s].record(image_uid(pair_id, s), jpgs[2 * k + s])
                     for s in (0, 1)) for k, pair_id in enumerate(ids)]
    if labeller is None:
        return [(PoolPair(pair_id, run.source, prompt, pair[0].image_uid, pair[1].image_uid),
                 pair) for pair_id, pair in zip(ids, records, strict=True)]

    start = time.perf_counter()
    # Score what is stored (the JPEG), so a label always describes the stored pair.
    outcomes = labeller.outcomes(prompt, [decode_image(j) for j in jpgs], run.tie_margin,
                                 counts)
    counts.score_s += time.perf_counter() - start
    return [(Vote(vote_id=vote_id, caption=prompt, image_0_uid=pair[0].image_uid,
                  image_1_uid=pair[1].image_uid, outcome=outcomes[k],
                  shown_left=0, user_id=labeller.user_id, source=run.source), pair)
            for k, (vote_id, pair) in enumerate(zip(ids, records, strict=True))]


def tally(pairs: list[Pair], counts: Counts) -> None:
    outcomes = [pair.outcome for pair, _ in pairs if isinstance(pair, Vote)]
    counts.added += len(pairs)
    counts.ties += outcomes.count("tie")
    counts.left += outcomes.count("left")
    counts.right += outcomes.count("right")


def collect(
    run: FeedbackRun,
    store: Store | None,
    scorer: Scorer | None,
    load_model: Callable[[], LoadedModel],
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    launch: Launch = ONE_PROCESS,
    guards: dict[str, Scorer] | None = None,
) -> Counts:
    """Add the run's missing pairs to `store`; the counts of what was found and added
    (in the main process: every process's). `guards`: the run's guard scorers by name.

    `store` is the main process's (None in the others, which never open it); `scorer`
    None makes a pool. `load_model` is called only when something is missing, so a
    finished run returns at once. Ctrl-C stops at once (the batch in flight is lost, the
    ones before are kept) and the counts say `interrupted`.
    """
    from tqdm import tqdm

    plan = None
    if launch.main:
        shards = shard_folder(store.path, run.key)
        clear_partial(shards)
        take_in(store, shards)  # what processes of a killed run left
        done = existing_indices(store, run)
        missing = [i for i in range(run.pairs) if i not in done]
        user_id = store.user_id(run.source) if scorer is not None and missing else None
        plan = (missing, user_id, str(shards))
    missing, user_id, folder = launch.broadcast(plan)
    shards = Path(folder)
    counts = Counts(pairs=run.pairs, existing=run.pairs - len(missing))
    if announce and launch.main:
        processes = f" on {launch.count} processes" if launch.count > 1 else ""
        announce(
            f"{run.source}: {counts.existing} of {run.pairs} pairs already in {store.path}"
            f" (run {run.key}); adding {len(missing)}{processes}"
        )
    if not missing:
        return counts
    labeller = None if scorer is None else Labeller(scorer, run.scorer, user_id, run.score_batch,
                                                    guards or {}, run.guard_margin)
    model = load_model()
    mine = launch.share(plan_batches(run, missing))
    bar = tqdm(total=sum(map(len, mine)), unit="pair", disable=not (progress and launch.main),
               file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    try:
        for indices in mine:
            pairs = make_batch(run, model, labeller, indices, counts)
            start = time.perf_counter()
            if launch.main:
                add_pairs(store, pairs)  # one commit for the batch: a commit costs more than a pair
                take_in(store, shards)
            else:
                write_shard(shards, f"{run.key}-{indices[0]:08d}", pairs)
            counts.store_s += time.perf_counter() - start
            tally(pairs, counts)
            bar.update(len(pairs))
    except KeyboardInterrupt:
        counts.interrupted = True  # every process of a launch hears Ctrl-C: no collective
        return counts
    finally:
        bar.close()
    everyone = launch.gather(counts)
    launch.wait()
    if launch.main:
        take_in(store, shards)
        return counts.merged(everyone[1:])
    return counts


# -- command line --------------------------------------------------------------


def run_from_config(config: PoolConfig) -> FeedbackRun:
    """The run a feedback config (a FeedbackConfig) or a pool config describes."""
    prompts = read_prompts(config.prompts) if config.prompts else default_prompts(config.model)
    labelled = isinstance(config, FeedbackConfig)
    return FeedbackRun(
        prompts=tuple(prompts), model=config.model, scorer=config.scorer if labelled else None,
        pairs=config.pairs, seed=config.seed, variety=config.variety(),
        per_prompt=config.per_prompt, tie_margin=config.tie_margin if labelled else 0.0,
        batch=config.batch,
        scorer_options=tuple(config.scorer_options().items()) if labelled else (),
        score_batch=(SCORE_BATCH if not labelled or config.score_batch is None
                     else config.score_batch),
        guards=tuple(config.guard_scorers) if labelled else (),
        guard_margin=config.guard_margin if labelled else 0.0,
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


def make_pairs(config: PoolConfig, command: str) -> int:
    """`python -m annotate feedback` or `pool`, this process's share of a launch: 0 when
    done, 130 when interrupted (what was added is kept). The main process alone opens the
    store and prints the summary."""
    from models.loading import default_device_and_dtype, load

    run = run_from_config(config)
    launch = this_launch()
    if (chosen := use_free_cores(config.threads, how="--threads N")) and launch.main:
        print(chosen, file=sys.stderr)
    try:
        device = launch.device or default_device_and_dtype()[0]
        scorer = load_scorer(run, device) if run.scorer else None
        guards = {name: load_named_scorer(name, device=device) for name in run.guards}
        with Store(config.db) if launch.main else contextlib.nullcontext() as store:
            if launch.main:
                save_config_beside(config, config.db, command)
            counts = collect(
                run, store, scorer, lambda: load(run.model, device=launch.device),
                progress=not config.no_progress,
                announce=lambda line: print(line, file=sys.stderr), launch=launch,
                guards=guards,
            )
    except KeyboardInterrupt:
        print("interrupted before any pair was made", file=sys.stderr)
        raise
    if not launch.main:
        return INTERRUPTED if counts.interrupted else 0
    summary = {"source": run.source, "db": str(config.db), "run": run.key, **counts.summary()}
    if run.scorer is None:  # a pool: nothing judged
        summary.pop("judge_ms_per_pair")
    print(json.dumps(summary))
    if config.summary is not None and not counts.interrupted:
        config.summary.write_text(json.dumps(summary, indent=1))
    if counts.interrupted:
        print(f"interrupted: {counts.added} pairs added; run the same command to continue",
              file=sys.stderr)
        return INTERRUPTED
    return 0
