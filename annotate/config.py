"""What `python -m annotate` (the page) and `python -m annotate feedback` take: a frozen
dataclass each, on top of the pair settings they share (`PairVariety`); flags,
`--config FILE` and the checks come from these fields (cli/parser.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cli.errors import UsageError
from cli.parser import setting
from data.store import DEFAULT_DB
from models.scorer_names import SCORER_HELP
from models.toy import TOY_NAME
from models.variety import PairVariety
from pages.shared import PORT_HELP

MIN_DISPLAY_MS = 500  # a pair is on screen this long before a vote on it counts

_STORE_HELP = "store file"


@dataclass(frozen=True)
class PageConfig(PairVariety):
    """The preference-collection page: two images per prompt, the annotator picks one,
    and each vote is stored in the Pick-a-Pic format. `python -m annotate feedback
    --help`: the headless AI-feedback command."""

    model: list[str] | None = setting(
        "model: toy, a Hub id, a local pipeline or LoRA folder, or a `python -m rounds` run "
        "folder (its newest round's model); give it twice to compare two models (default: "
        "toy)", None, repeat=True, metavar="NAME")
    db: Path = setting(_STORE_HELP, DEFAULT_DB, metavar="PATH")
    host: str = setting("address to serve on (0.0.0.0 opens it to the network: use --auth "
                        "then)", "127.0.0.1")
    port: int | None = setting(PORT_HELP, None)
    prompts: Path | None = setting(
        "prompt set for Auto mode and 'Prompt from the set': one per line, or CSV/TSV with a "
        "prompt column (default for toy: its 18 captions)", None, metavar="FILE")
    auth: Path | None = setting("require a login: one user:password per line; the user id "
                                "then comes from the login only", None, metavar="FILE")
    gold: Path | None = setting("gold pairs, JSON Lines {prompt, better, worse} "
                                "(docs/ANNOTATE.md)", None, metavar="FILE")
    gold_rate: float = setting("share of the pairs shown that are gold pairs", 0.05, metavar="R")
    daily_cap: int | None = setting("votes per annotator per day (UTC); no cap by default",
                                    None, metavar="N")
    blocklist: Path | None = setting("words or phrases that must not be generated, one per "
                                     "line", None, metavar="FILE")
    seed: int | None = setting("seed of the pair seeds and sides, for a reproducible session",
                               None, metavar="N")
    buffer: int = setting("pairs made ahead per prompt source (0: none)", 3, metavar="N")
    queue: int = setting("people who may wait for a pair at once; more are told the "
                         "generator is busy and to try again", 8, metavar="N")
    overlap: int = setting("show each shared pair to K different annotators (1: no "
                           "sharing); see --overlap-share", 1, metavar="K")
    overlap_share: float = setting(
        "share of the prompt set's new pairs that are shared (0..1); a shared pair that "
        "still needs votes is offered first", 0.0, metavar="S")
    questions: int = setting("ask the general preference alone (1) or also visual appeal and "
                             "prompt alignment (3), the paper's three questions", 1,
                             choices=[1, 3])
    owner: list[str] | None = setting(
        "a login that may see the campaign page (/campaign); give it again for more "
        "(default with --auth: the first login in the file)", None, repeat=True,
        metavar="USER")
    min_display_ms: int = setting("a pair is shown this long before its vote buttons work and "
                                  "a vote on it counts", MIN_DISPLAY_MS, metavar="MS")
    pool: bool = setting("show the prompt set's pairs (Auto mode, the default then) from the "
                         "store's pool, made ahead by `python -m annotate pool`, with no "
                         "wait; typed prompts are still generated", False)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (1 <= len(self.models) <= 2, "give one --model, or two to compare them"),
            (0 <= self.gold_rate <= 1, "--gold-rate is a share of the pairs shown: 0 to 1"),
            (self.buffer >= 0, "--buffer must be 0 or more"),
            (self.queue >= 1, "--queue must be at least 1"),
            (self.min_display_ms >= 0, "--min-display-ms must be 0 or more"),
            (self.overlap >= 1, "--overlap is the annotators per shared pair: 1 or more"),
            (0 <= self.overlap_share <= 1,
             "--overlap-share is a share of the prompt set's pairs between 0 and 1"),
            (not self.owner or self.auth is not None,
             "--owner names a login: give --auth too (without it the campaign page is open "
             "to everyone who can reach the server)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    @property
    def models(self) -> list[str]:
        return self.model or [TOY_NAME]


@dataclass(frozen=True)
class PoolConfig(PairVariety):
    """Generate unlabelled image pairs with a model into the preference store (a pool),
    for the page to show annotators without a wait. Under `accelerate launch` every
    process makes its share. Resumable: run the same command again to continue, or with a
    larger --pairs to add more."""

    model: str = setting("model name: toy, a Hub id, a local pipeline or LoRA folder",
                         TOY_NAME, metavar="NAME")
    prompts: Path | None = setting(
        "one prompt per line (blank and # lines skipped), or a CSV with a 'prompt' column; "
        "prompts cycle in order (default for the toy model: its 18 captions; required for "
        "other models)", None, metavar="FILE")
    pairs: int = setting("total pairs this run should hold; pairs already stored count",
                         1000, metavar="N")
    db: Path = setting(_STORE_HELP, DEFAULT_DB, metavar="PATH")
    seed: int = setting("seeds and guidance of pair i follow from this and i", 0, metavar="N")
    per_prompt: int = setting("pairs for each prompt before the next one", 1, metavar="K")
    batch: int = setting("pairs of one prompt per pipeline call, 2B images; only speed and "
                         "memory depend on it", 16, metavar="B")
    threads: int | None = setting(
        "CPU threads for torch (default: one per core that other work leaves free; more "
        "threads than free cores run several times slower)", None, metavar="N")
    no_progress: bool = setting("no progress bar", False)
    summary: Path | None = setting("also write the run's summary (the JSON line it prints) "
                                   "to this file", None, metavar="FILE")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be at least 1")


@dataclass(frozen=True, kw_only=True)
class ScorerSettings:
    """Which scorer judges, and on what weights: what `feedback` and `relabel` share
    (keyword-only, so a command's positional settings may follow them)."""

    scorer: str = setting(SCORER_HELP, "toy_judge", metavar="NAME")
    scorer_model: str | None = setting("weights for a CLIP-based scorer instead of its "
                                       "default", None, metavar="NAME_OR_PATH")
    scorer_processor: str | None = setting("processor for a CLIP-based scorer instead of its "
                                           "default", None, metavar="NAME_OR_PATH")
    scorer_weights: str | None = setting("the aesthetic predictor's weights file", None,
                                         metavar="FILE")
    score_batch: int | None = setting("images a scorer takes in one call on its device "
                                      "(default: 32); lower it when the scorer runs out of "
                                      "GPU memory", None, metavar="N")

    def scorer_options(self) -> dict[str, str]:
        """What `load_scorer` takes beside the scorer's name, as given."""
        given = {"model": self.scorer_model, "processor": self.scorer_processor,
                 "weights": self.scorer_weights}
        return {key: value for key, value in given.items() if value is not None}


@dataclass(frozen=True)
class FeedbackConfig(PoolConfig, ScorerSettings):
    """Generate image pairs with a model, let a scorer prefer one image of each pair, and
    record the pairs as votes (source ai:<scorer>) in the preference store. Under
    `accelerate launch` every process makes its share. Resumable: run the same command
    again to continue, or with a larger --pairs to add more."""

    tie_margin: float = setting("record a tie when the two scores differ by M or less "
                                "(docs/AI_FEEDBACK.md suggests a value per scorer)", 0.0,
                                metavar="M")
    guard_scorers: list[str] = setting(
        "scorers that may veto a label: where one of them prefers the other image by more "
        "than --guard-margin, the pair is recorded a tie, so a preference that ignores the "
        "prompt cannot teach the model to ignore it (toy: toy_judge)", factory=list,
        metavar="NAME")
    guard_margin: float = setting("how much a guard scorer must prefer the other image to "
                                  "veto the label, in its own units", 0.0, metavar="M")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.guard_margin < 0:
            raise UsageError("--guard-margin must be 0 or more")


SMPO_TEMPERATURE = 16.66  # SmPO's 0.1666 on PickScore's cosine; `pickscore` is 100x it


@dataclass(frozen=True)
class RelabelConfig(ScorerSettings):
    """Score both images of every pair of a manifest (JSONL, or an HPDv3 JSON file) and
    write a manifest whose `label` is the chance the scorer gives the preferred image,
    sigmoid(score gap / temperature) (SmPO's smoothed labels); train on it with
    `--pair_votes share` (and SmPO's loss: `--share_loss smpo`). A store or a parquet
    shard: `python -m data export OUT --format jsonl` first. Resumable: run the same
    command again to continue."""

    data: Path = setting("the manifest to score: a .jsonl file or an HPDv3 .json file",
                         positional=True, metavar="MANIFEST")
    out: Path = setting("the manifest to write (.jsonl); its image paths are relative to "
                        "its folder", positional=True, metavar="OUT")
    temperature: float | None = setting(
        "the score gap that gives a label of sigmoid(1) = 0.73 (default for pickscore: "
        f"{SMPO_TEMPERATURE}, SmPO's; required for other scorers)", None, metavar="T")
    threads: int | None = setting("threads that read and decode images (default: one per "
                                  "core)", None, metavar="N")
    no_progress: bool = setting("no progress bar", False)

    def __post_init__(self) -> None:
        if self.temperature is None and self.scorer != "pickscore":
            raise UsageError(f"give --temperature for scorer {self.scorer}: the score gap "
                             "that means a 73% preference in its units (SmPO's "
                             f"{SMPO_TEMPERATURE} is pickscore's)")
        checks = [
            (self.temperature is None or self.temperature > 0, "--temperature must be above 0"),
            (self.out.suffix == ".jsonl", f"--out {self.out}: name a .jsonl file"),
            (self.threads is None or self.threads >= 1, "--threads must be at least 1"),
            (self.score_batch is None or self.score_batch >= 1,
             "--score-batch must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    @property
    def scale(self) -> float:
        """The temperature in the scorer's units."""
        return SMPO_TEMPERATURE if self.temperature is None else self.temperature
