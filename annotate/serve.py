"""`python -m annotate`: start the collection page on one model (or two to compare)."""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from annotate.gold import read_gold
from annotate.rounds import MIN_DISPLAY_MS, Collector, Settings
from annotate.screening import MAX_PROMPT_CHARS, Blocklist, token_counter
from annotate.worker import PairWorker, PromptSet
from cli.errors import UserError, report_user_error
from data.pages import PORT_HELP, PageImages, launch_page, pick_port, read_logins, server_options
from data.prompts import read_prompts
from data.store import DEFAULT_DB, QUESTIONS, Store
from models.generate import PairVariety
from models.threads import use_free_cores
from models.toy import TOY_NAME, TOY_NAMES
from models.toy.shapes import all_captions


class ServeError(UserError):
    """A flag or file the server cannot start with; the message names the fix."""


@dataclass
class AppConfig:
    models: list[str] = field(default_factory=lambda: [TOY_NAME])
    db: Path = DEFAULT_DB
    prompts: Path | None = None
    auth: Path | None = None
    gold: Path | None = None
    gold_rate: float = 0.05
    daily_cap: int | None = None
    blocklist: Path | None = None
    variety: PairVariety = field(default_factory=PairVariety)
    buffer: int = 3
    seed: int | None = None
    queue: int = 8
    min_display_ms: int = MIN_DISPLAY_MS
    overlap: int = 1
    overlap_share: float = 0.0
    questions: int = 1
    owners: list[str] = field(default_factory=list)


@dataclass
class Server:
    """What a running page holds; `close()` stops the worker and closes the store."""

    demo: object
    worker: PairWorker
    store: Store
    logins: list[tuple[str, str]] | None
    images: PageImages
    models: list[str] = field(default_factory=list)  # what the page serves, in words

    def close(self, timeout: float = 1.0) -> None:
        """Stop within about `timeout` seconds whatever the worker is doing.

        The worker stops at its next sampler step (or is left, a daemon thread holding
        no store state, when a step takes longer); the HTTP server gets the same time to
        finish its answers; then the store is closed. Every vote that was acknowledged
        was committed before its answer left, so none is lost.
        """
        deadline = time.monotonic() + timeout
        self.worker.stop(timeout=timeout / 2)
        server = getattr(self.demo, "server", None)
        closing = threading.Thread(target=self.demo.close, kwargs={"verbose": False},
                                   daemon=True)
        closing.start()
        closing.join(timeout=max(0.0, deadline - time.monotonic()))
        if server is not None:
            server.should_exit = True
        self.store.close()
        self.images.close()


def open_app(config: AppConfig) -> Server:
    """Load the models, open the store, start the worker, and build the page."""
    from diffusers.utils import logging as diffusers_logging

    from annotate.app import build
    from models.generate import generate_pair
    from models.loading import load

    diffusers_logging.set_verbosity_error()  # the page itself notes truncated prompts
    diffusers_logging.disable_progress_bar()

    if not 1 <= len(config.models) <= 2:
        raise ServeError("give one --model, or two to compare them")
    if not 0 <= config.gold_rate <= 1:
        raise ServeError("--gold-rate is a share of rounds between 0 and 1")
    if config.queue < 1:
        raise ServeError("--queue must be at least 1")
    if config.min_display_ms < 0:
        raise ServeError("--min-display-ms must be 0 or more")
    if config.overlap < 1:
        raise ServeError("--overlap is the annotators per shared pair: 1 or more")
    if not 0 <= config.overlap_share <= 1:
        raise ServeError("--overlap-share is a share of the prompt set's pairs between 0 and 1")
    logins = read_logins(config.auth) if config.auth else None
    users = {user for user, _ in logins or []}
    unknown = [o for o in config.owners if o not in users]
    if config.owners and not logins:
        raise ServeError("--owner names a login: give --auth too (without it the campaign "
                         "page is open to everyone who can reach the server)")
    if unknown:
        raise ServeError(f"--owner {unknown[0]} is not a login in {config.auth}")
    owners = frozenset(config.owners or ([logins[0][0]] if logins else []))
    gold = read_gold(config.gold) if config.gold else []
    blocklist = Blocklist.read(config.blocklist) if config.blocklist else Blocklist()
    if config.prompts:
        prompts = read_prompts(config.prompts)
        longest = max(prompts, key=len)
        if len(longest) > MAX_PROMPT_CHARS:
            raise ServeError(f"{config.prompts} holds a prompt of {len(longest):,} characters: "
                             f"shorten it to at most {MAX_PROMPT_CHARS:,}")
    else:
        prompts = all_captions() if config.models[0] in TOY_NAMES else None
    loaded = [load(name) for name in config.models]
    rng = random.Random(config.seed)
    target = loaded[0] if len(loaded) == 1 else loaded

    def make_pair(prompt, on_step):
        return generate_pair(target, prompt, config.variety, rng, on_step=on_step)

    prompt_set = PromptSet(prompts) if prompts else None
    worker = PairWorker(make_pair, prompt_set, buffer_size=config.buffer,
                        max_waiting=config.queue)
    store = Store(config.db)
    settings = Settings(config.gold_rate, config.daily_cap, blocklist, config.min_display_ms,
                        config.overlap, config.overlap_share,
                        tuple(QUESTIONS) if config.questions == 3 else ("preference",))
    collector = Collector(
        store, worker, settings, gold,
        token_counter(loaded[0].pipeline.tokenizer), random.Random(config.seed),
    )
    images = PageImages("annotate-shown-", keep_s=600)
    demo = build(collector, images, prompts, auth=logins is not None, cap=config.daily_cap,
                 owners=owners)
    worker.start()
    served = [m.name + ("" if m.round is None else f" (round {m.round})") for m in loaded]
    return Server(demo, worker, store, logins, images, served)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ServeError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m annotate",
        description="The preference-collection page: two images per prompt, the annotator "
        "picks one, and each vote is stored in the Pick-a-Pic format. "
        "`python -m annotate feedback --help`: the headless AI-feedback command.",
    )
    parser.add_argument("--model", action="append", metavar="NAME",
                        help="model: toy, a Hub id, a local pipeline or LoRA folder, or a "
                        "`python -m rounds` run folder (its newest round's model); give it "
                        "twice to compare two models (default: toy)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, metavar="PATH",
                        help="store file (%(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (%(default)s; 0.0.0.0 opens it to the "
                        "network: use --auth then)")
    parser.add_argument("--port", type=int, help=PORT_HELP)
    parser.add_argument("--prompts", type=Path, metavar="FILE",
                        help="prompt set for Auto mode and 'Prompt from the set': one per "
                        "line, or CSV/TSV with a prompt column (default for toy: its 18 "
                        "captions)")
    parser.add_argument("--auth", type=Path, metavar="FILE",
                        help="require a login: one user:password per line; the user id "
                        "then comes from the login only")
    parser.add_argument("--gold", type=Path, metavar="FILE",
                        help="gold pairs, JSON Lines {prompt, better, worse} (docs/ANNOTATE.md)")
    parser.add_argument("--gold-rate", type=float, default=0.05, metavar="R",
                        help="share of rounds that show a gold pair (%(default)s)")
    parser.add_argument("--daily-cap", type=int, metavar="N",
                        help="votes per annotator per day (UTC); no cap by default")
    parser.add_argument("--blocklist", type=Path, metavar="FILE",
                        help="words or phrases that must not be generated, one per line")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (%(default)s)")
    guidance = parser.add_mutually_exclusive_group()
    guidance.add_argument("--guidance", type=float, default=7.5, metavar="G",
                          help="guidance scale of both images (%(default)s)")
    guidance.add_argument("--guidance-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                          help="draw each image's guidance from LOW..HIGH (Pick-a-Pic: 3 12)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="seed of the pair seeds and sides, for a reproducible session")
    parser.add_argument("--buffer", type=int, default=3, metavar="N",
                        help="pairs made ahead per prompt source (%(default)s; 0: none)")
    parser.add_argument("--queue", type=int, default=8, metavar="N",
                        help="people who may wait for a pair at once; more are told the "
                        "generator is busy and to try again (%(default)s)")
    parser.add_argument("--overlap", type=int, default=1, metavar="K",
                        help="show each shared pair to K different annotators (%(default)s: "
                        "no sharing); see --overlap-share")
    parser.add_argument("--overlap-share", type=float, default=0.0, metavar="S",
                        help="share of the prompt set's new pairs that are shared (0..1; "
                        "%(default)s); a prompt-set round offers a shared pair that still "
                        "needs votes first")
    parser.add_argument("--questions", type=int, choices=(1, 3), default=1,
                        help="ask the general preference alone (1, default) or also visual "
                        "appeal and prompt alignment (3), the paper's three questions")
    parser.add_argument("--owner", action="append", metavar="USER", default=[],
                        help="a login that may see the campaign page (/campaign); give it "
                        "again for more (default with --auth: the first login in the file)")
    parser.add_argument("--min-display-ms", type=int, default=MIN_DISPLAY_MS, metavar="MS",
                        help="a pair is shown this long before its vote buttons work and a "
                        "vote on it counts (%(default)s)")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[AppConfig, str, int | None]:
    variety = PairVariety(
        guidance=args.guidance,
        guidance_range=tuple(args.guidance_range) if args.guidance_range else None,
        steps=args.steps,
    )
    config = AppConfig(
        models=args.model or [TOY_NAME], db=args.db, prompts=args.prompts, auth=args.auth,
        gold=args.gold, gold_rate=args.gold_rate, daily_cap=args.daily_cap,
        blocklist=args.blocklist, variety=variety, buffer=args.buffer, seed=args.seed,
        queue=args.queue, min_display_ms=args.min_display_ms, overlap=args.overlap,
        overlap_share=args.overlap_share, questions=args.questions, owners=args.owner,
    )
    return config, args.host, args.port


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl+C or SIGTERM; 1 with one line on stderr when it cannot start."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # stop as Ctrl+C does, store closed
    try:
        config, host, asked = config_from_args(build_parser().parse_args(argv))
        port = pick_port(host, asked)  # before the store exists: a taken port creates nothing
        if (chosen := use_free_cores()):
            print(chosen, file=sys.stderr)
        server = open_app(config)
    except (UserError, OSError) as error:
        return report_user_error(error)
    except KeyboardInterrupt:
        return 130
    try:
        launch_page(lambda free: server.demo.launch(
            server_name=host, server_port=free, auth=server.logins, prevent_thread_lock=True,
            quiet=True, **server_options()), host, port, asked=asked is not None)
        print(f"annotate: open {server.demo.local_url} to label {' and '.join(server.models)}"
              f" (Ctrl+C stops; votes are in {config.db})", flush=True)
        while server.demo.is_running:  # not block_thread: Ctrl+C must not wait on it
            time.sleep(0.1)
    except UserError as error:
        return report_user_error(error)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
