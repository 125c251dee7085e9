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

import argparse
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
from pathlib import Path
from typing import NoReturn

from cli.errors import UserError, report_user_error
from data.pairs import decode_image, encode_jpeg
from data.prompts import read_prompts
from data.store import DEFAULT_DB, Store, Vote
from models.errors import ModelError
from models.generate import PairVariety, generate
from models.loading import LoadedModel
from models.scorers import Scorer, checked_scores
from models.threads import use_free_cores
from models.toy import TOY_NAME, TOY_NAMES

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "diffusion-dpo-loop/annotate/feedback")


class FeedbackError(UserError):
    """A setting the user can fix; the message is the whole answer."""


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
            raise FeedbackError("no prompts: give --prompts FILE with one prompt per line")
        checks = [
            (self.pairs >= 1, "--pairs must be at least 1"),
            (self.per_prompt >= 1, "--per-prompt must be at least 1"),
            (self.batch >= 1, "--batch must be at least 1"),
            (self.variety.steps >= 1, "--steps must be at least 1"),
            (self.tie_margin >= 0, "--tie-margin must be 0 or more"),
        ]
        if self.variety.guidance_range is not None:
            low, high = self.variety.guidance_range
            checks.append(
                (1 < low <= high, "--guidance-range LOW HIGH needs 1 < LOW <= HIGH")
            )
        for ok, message in checks:
            if not ok:
                raise FeedbackError(message)

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
    """The toy captions for the toy model; other models need a prompts file."""
    if model not in TOY_NAMES:
        raise FeedbackError(
            f"--model {model} has no built-in prompts: give --prompts FILE "
            "(one prompt per line, or a CSV with a 'prompt' column)"
        )
    from models.toy.shapes import all_captions

    return all_captions()


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


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is a FeedbackError: one line on stderr, exit status 1."""

    def error(self, message: str) -> NoReturn:
        raise FeedbackError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m annotate feedback",
        description="Generate image pairs with a model, let a scorer prefer one image of "
        "each pair, and record the pairs as votes (source ai:<scorer>) in the preference "
        "store. Resumable: run the same command again to continue, or with a larger "
        "--pairs to add more.",
    )
    parser.add_argument("--model", default=TOY_NAME, metavar="NAME",
                        help="model name: toy, a Hub id, a local pipeline or LoRA folder "
                        "(%(default)s)")
    parser.add_argument("--prompts", type=Path, metavar="FILE",
                        help="one prompt per line (blank and # lines skipped), or a CSV "
                        "with a 'prompt' column; prompts cycle in order (default for the "
                        "toy model: its 18 captions; required for other models)")
    parser.add_argument("--scorer", default="toy_judge", metavar="NAME",
                        help="toy_judge, pickscore, clip, aesthetic, hpsv2, or "
                        "module:callable for your own score(prompts, images) (%(default)s)")
    parser.add_argument("--scorer-model", metavar="NAME_OR_PATH",
                        help="weights for a CLIP-based scorer instead of its default")
    parser.add_argument("--scorer-processor", metavar="NAME_OR_PATH",
                        help="processor for a CLIP-based scorer instead of its default")
    parser.add_argument("--scorer-weights", metavar="FILE",
                        help="the aesthetic predictor's weights file")
    parser.add_argument("--pairs", type=int, default=1000, metavar="N",
                        help="total pairs this run should hold; pairs already stored "
                        "count (%(default)s)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, metavar="PATH",
                        help="store file (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seeds and guidance of pair i follow from this and i "
                        "(%(default)s)")
    guidance = parser.add_mutually_exclusive_group()
    guidance.add_argument("--guidance", type=float, default=7.5, metavar="G",
                          help="guidance scale of both images (%(default)s)")
    guidance.add_argument("--guidance-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                          help="draw each image's guidance uniformly from LOW..HIGH "
                          "(Pick-a-Pic drew 3..12)")
    parser.add_argument("--steps", type=int, default=20, metavar="N",
                        help="sampling steps (%(default)s)")
    parser.add_argument("--per-prompt", type=int, default=1, metavar="K",
                        help="pairs for each prompt before the next one (%(default)s)")
    parser.add_argument("--tie-margin", type=float, default=0.0, metavar="M",
                        help="record a tie when the two scores differ by M or less "
                        "(%(default)s; docs/AI_FEEDBACK.md suggests a value per scorer)")
    parser.add_argument("--batch", type=int, default=16, metavar="B",
                        help="pairs of one prompt per pipeline call, 2B images; only "
                        "speed and memory depend on it (%(default)s)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: one per core that other work "
                        "leaves free; more threads than free cores run several times slower)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_from_args(args: argparse.Namespace) -> FeedbackRun:
    prompts = read_prompts(args.prompts) if args.prompts else default_prompts(args.model)
    options = {"model": args.scorer_model, "processor": args.scorer_processor,
               "weights": args.scorer_weights}
    variety = PairVariety(
        guidance=args.guidance,
        guidance_range=tuple(args.guidance_range) if args.guidance_range else None,
        steps=args.steps,
    )
    return FeedbackRun(
        prompts=tuple(prompts), model=args.model, scorer=args.scorer, pairs=args.pairs,
        seed=args.seed, variety=variety, per_prompt=args.per_prompt,
        tie_margin=args.tie_margin, batch=args.batch,
        scorer_options=tuple((k, v) for k, v in options.items() if v is not None),
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


def main(argv: Sequence[str] | None = None) -> int:
    """The subcommand: 0 when done, 1 with one line on stderr, 130 when interrupted."""
    try:
        args = build_parser().parse_args(argv)
        from models.loading import default_device_and_dtype, load

        run = run_from_args(args)
        if args.threads is not None and args.threads < 1:
            raise FeedbackError("--threads must be at least 1")
        if (chosen := use_free_cores(args.threads, how="--threads N")):
            print(chosen, file=sys.stderr)
        device = default_device_and_dtype()[0]
        scorer = load_scorer(run, device)
        with Store(args.db) as store:
            counts = collect(
                run, store, scorer, lambda: load(run.model), progress=not args.no_progress,
                announce=lambda line: print(line, file=sys.stderr),
            )
    except UserError as error:
        return report_user_error(error)
    except KeyboardInterrupt:
        print("interrupted before any pair was made", file=sys.stderr)
        return 130
    summary = {"source": run.source, "db": str(args.db), "run": run.key, **counts.summary()}
    print(json.dumps(summary))
    if counts.interrupted:
        print(f"interrupted: {counts.added} pairs added; run the same command to continue",
              file=sys.stderr)
        return 130
    return 0
