"""What `python -m eval`, `eval report`, `eval auto` and `eval leaderboard` take: one frozen
dataclass per command (flags, `--config FILE` and checks from cli/parser.py)."""

from __future__ import annotations

from dataclasses import dataclass

from cli.errors import UsageError
from cli.parser import setting
from data.store import DEFAULT_DB, QUESTIONS
from eval.votes import DEFAULT_VOTES
from models.scorer_names import SCORER_HELP
from models.toy import TOY_NAME
from pages.shared import PORT_HELP

_PROMPTS_HELP = ("prompt set: one per line, or CSV/TSV with prompt and category columns "
                 "(default for toy: the 18 toy captions, by shape)")
_SCORE_BATCH_HELP = ("images a scorer takes in one call on its device (default: 32); lower "
                     "it when the scorer runs out of GPU memory")
_TIE_MARGIN_HELP = "score difference at or below which two images tie"


def _check_score_batch(score_batch: int | None) -> None:
    if score_batch is not None and score_batch < 1:
        raise UsageError("--score-batch must be at least 1")


@dataclass(frozen=True)
class Sampling:
    """How each model's images are made (eval/images.py keys its cache by it)."""

    seeds: int = setting("images per prompt and model, seeds 0..N-1", 2)
    steps: int = setting("sampler steps", 20)
    guidance: float = setting("guidance scale", 7.5)
    size: int | None = setting("image side in pixels, a multiple of 16 (default: the "
                               "model's own)", None, metavar="PX")

    def __post_init__(self):
        if self.seeds < 1 or self.steps < 1:
            raise UsageError("--seeds and --steps must be at least 1")
        if self.size is not None and (self.size < 16 or self.size % 16):
            raise UsageError(f"--size {self.size}: give a multiple of 16, e.g. 512 or 1024")


@dataclass(frozen=True)
class Sampled(Sampling):
    """A command that makes images: how, and where they are kept."""

    images: str = setting("image cache folder, shared by the blind page, eval auto and the "
                          "leaderboard", "runs/eval/images")

    def sampling(self) -> Sampling:
        return Sampling(self.seeds, self.steps, self.guidance, self.size)


@dataclass(frozen=True)
class Compared:
    """The two models compared, and on which prompts."""

    base: str = setting("the base model", TOY_NAME)
    aligned: str | None = setting("the aligned model (default: the newest "
                                  "runs/train/*/final)", None)
    prompts: str | None = setting(_PROMPTS_HELP, None)


@dataclass(frozen=True)
class BlindConfig(Sampled, Compared):
    """The blind A/B page: the same prompt and seed through both models, sides shuffled;
    people vote A better, B better, tie or both bad, and the models are named only after
    the vote. Votes go to --db. Also: 'python -m eval report' (tallies of the votes),
    'python -m eval auto' (a scorer instead of people), 'python -m eval leaderboard';
    each has --help."""

    board: str | None = setting("a leaderboard.json (python -m eval leaderboard): compare "
                                "its models, each pair drawn from the closest-rated matchup "
                                "with the fewest votes, instead of --base and --aligned", None)
    db: str = setting("the eval's votes file, not the annotate store", str(DEFAULT_VOTES))
    voter: str | None = setting("your name, recorded with every vote (default: the page "
                                "asks)", None)
    question: str = setting("what the page asks: the general preference, or the paper's "
                            "visual appeal or prompt alignment; each vote records it",
                            "preference", choices=list(QUESTIONS))
    auth: str | None = setting("require a login: one user:password per line (as python -m "
                               "annotate --auth); the voter then comes from the login only",
                               None, metavar="FILE")
    host: str = setting("address to serve on: this machine only; 0.0.0.0 for the network",
                        "127.0.0.1")
    port: int | None = setting(PORT_HELP, None)

    def __post_init__(self):
        super().__post_init__()
        if self.board and self.aligned:
            raise UsageError("give --board (its models) or --aligned, not both")
        if self.auth and self.voter:
            raise UsageError("give --auth (each voter is their login) or --voter, not both")


@dataclass(frozen=True)
class ReportConfig:
    """Tally the blind page's votes, aligned over base: win rate, decisive win rate, tie
    and both-bad rates, Wilson 95%, sign test, prompt-clustered bootstrap, side-A (left)
    win rate; per prompt category. Writes report.md, win_rate.png and summary.json."""

    db: str = setting("the eval's votes file", str(DEFAULT_VOTES))
    base: str | None = setting("only votes with this base model", None)
    aligned: str | None = setting("only votes with this aligned model (default: the "
                                  "comparison voted on last)", None)
    out: str | None = setting("report folder (default: runs/eval/human-<aligned name>)", None)
    question: str = setting("which question's votes to tally", "preference",
                            choices=list(QUESTIONS))


@dataclass(frozen=True)
class AutoConfig(Sampled, Compared):
    """Score both models' images on the same prompts and seeds with a scorer and tally
    aligned over base: win rates, Wilson and prompt-clustered bootstrap intervals, sign
    test, mean scores. Writes report.md, win_rate.png, scores.png and summary.json."""

    scorer: str = setting(SCORER_HELP, "toy_judge")
    also: list[str] = setting("more scorers reported beside --scorer on the same images (for "
                              "a prompt-blind preference such as aesthetic, a prompt-following "
                              "one such as toy_judge or clip)", factory=list, metavar="SCORER")
    tie_margin: float = setting(_TIE_MARGIN_HELP, 0.0)
    score_batch: int | None = setting(_SCORE_BATCH_HELP, None, metavar="N")
    out: str | None = setting("report folder (default: runs/eval/auto-<aligned name>)", None)

    def __post_init__(self):
        super().__post_init__()
        _check_score_batch(self.score_batch)


@dataclass(frozen=True)
class LeaderboardConfig(Sampled):
    """Rank any number of models from pairwise comparisons on the same prompts and seeds:
    every pair of models judged by a scorer, and by the blind page's votes where they
    exist (a board each). Bradley-Terry ratings with prompt-bootstrap intervals and the
    win-rate matrix. Writes leaderboard.md, leaderboard-<judge>.png and leaderboard.json."""

    models: list[str] | None = setting("the models, the first one the anchor (default: toy, "
                                       "then every runs/train/*/final, oldest first)", None)
    names: list[str] | None = setting("a short name per model (default: the run folder's "
                                      "name, or the model's)", None)
    prompts: str | None = setting(_PROMPTS_HELP, None)
    scorer: str = setting("the automatic judge: " + SCORER_HELP, "toy_judge")
    votes: str = setting("blind votes to rank by as well, when the file exists",
                         str(DEFAULT_VOTES))
    tie_margin: float = setting(_TIE_MARGIN_HELP, 0.0)
    score_batch: int | None = setting(_SCORE_BATCH_HELP, None, metavar="N")
    prior: float = setting("virtual ties per pair of models, so an unbeaten model has a "
                           "finite rating (0: the plain maximum likelihood)", 1.0)
    min_matches: int = setting("the people's board: votes a model needs to be ranked "
                               "(fewer: listed below, unranked)", 10, metavar="N")
    preliminary_below: int = setting("the people's board: a ranked model with fewer votes is "
                                     "marked preliminary", 50, metavar="N")
    out: str = setting("report folder", "runs/eval/leaderboard")

    def __post_init__(self):
        super().__post_init__()
        _check_score_batch(self.score_batch)
        if self.min_matches < 0 or self.preliminary_below < 0:
            raise UsageError("--min-matches and --preliminary-below must be at least 0")


@dataclass(frozen=True)
class AgreementConfig:
    """How often each scorer agrees with people's decisive votes in the preference store
    (not ai:* feedback), leaving out every pair a named judge trained on: agreement with
    its Wilson 95% interval, best first. What to read before letting a scorer (or your
    own judge, python -m train judge) label pairs in people's place."""

    db: str = setting("the preference store (python -m annotate's)", str(DEFAULT_DB),
                      metavar="PATH")
    scorers: list[str] = setting("the scorers to measure: " + SCORER_HELP,
                                 factory=lambda: ["toy_judge"], metavar="SCORER")
    max_pairs: int = setting("measure on at most N votes, drawn with --seed", 5000,
                             metavar="N")
    seed: int = setting("seed of that draw", 0)
    score_batch: int | None = setting(_SCORE_BATCH_HELP, None, metavar="N")

    def __post_init__(self):
        _check_score_batch(self.score_batch)
        if self.max_pairs < 1 or not self.scorers:
            raise UsageError("give at least one scorer and --max-pairs of 1 or more")


COMMANDS = {"blind": BlindConfig, "report": ReportConfig, "auto": AutoConfig,
            "leaderboard": LeaderboardConfig, "agreement": AgreementConfig}
