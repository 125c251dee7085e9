"""`python -m annotate`: start the collection page on one model (or two to compare)."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field

from annotate.config import PageConfig
from annotate.gold import read_gold
from annotate.pool import PoolQueue
from annotate.screening import MAX_PROMPT_CHARS, Blocklist, token_counter
from annotate.showings import HOLD_S, Collector, Settings
from annotate.worker import PairWorker, PromptSet
from cli.errors import UsageError
from cli.parser import save_config_beside
from data.prompts import read_prompts
from data.store import QUESTIONS, Store
from models.threads import use_free_cores
from models.toy import built_in_prompts
from pages.shared import PageImages, launch_page, pick_port, read_logins, server_options


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


def leave(code: int) -> None:
    """Exit now, after a closed page, without interpreter teardown.

    The server is closed (its store too), but its daemon threads may still be inside C++
    code (the worker in a sampler step, a Gradio handler in torch). Teardown would unwind
    them there, which glibc reports as "FATAL: exception not rethrown" and an abort after
    the command's output was already written.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def open_app(config: PageConfig) -> Server:
    """Load the models, open the store, start the worker, and build the page."""
    from diffusers.utils import logging as diffusers_logging

    from annotate.app import build
    from models.generate import generate_pair
    from models.loading import load

    diffusers_logging.set_verbosity_error()  # the page itself notes truncated prompts
    diffusers_logging.disable_progress_bar()

    logins = read_logins(config.auth) if config.auth else None
    users = {user for user, _ in logins or []}
    unknown = [o for o in config.owner or [] if o not in users]
    if unknown:
        raise UsageError(f"--owner {unknown[0]} is not a login in {config.auth}")
    owners = frozenset(config.owner or ([logins[0][0]] if logins else []))
    gold = read_gold(config.gold) if config.gold else []
    blocklist = Blocklist.read(config.blocklist) if config.blocklist else Blocklist()
    if config.prompts:
        prompts = read_prompts(config.prompts)
        longest = max(prompts, key=len)
        if len(longest) > MAX_PROMPT_CHARS:
            raise UsageError(f"{config.prompts} holds a prompt of {len(longest):,} characters: "
                             f"shorten it to at most {MAX_PROMPT_CHARS:,}")
    else:
        built_in = built_in_prompts(config.models[0])
        prompts = [prompt.text for prompt in built_in] if built_in else None
    loaded = [load(name) for name in config.models]
    rng = random.Random(config.seed)
    target = loaded[0] if len(loaded) == 1 else loaded

    def make_pair(prompt, on_step):
        return generate_pair(target, prompt, config.variety(), rng, on_step=on_step)

    prompt_set = PromptSet(prompts) if prompts else None
    worker = PairWorker(make_pair, prompt_set, buffer_size=config.buffer,
                        max_waiting=config.queue)
    store = Store(config.db)
    save_config_beside(config, config.db, "annotate")
    settings = Settings(config.gold_rate, config.daily_cap, blocklist, config.min_display_ms,
                        config.overlap, config.overlap_share,
                        tuple(QUESTIONS) if config.questions == 3 else ("preference",))
    pool = None
    if config.pool:
        pool = PoolQueue(store, HOLD_S)
        if not pool.left():
            store.close()
            raise UsageError(f"--pool: {config.db} holds no pool pair still to vote on: make "
                             f"some first (python -m annotate pool --db {config.db} ...)")
    collector = Collector(
        store, worker, settings, gold,
        token_counter(loaded[0].pipeline.tokenizer), random.Random(config.seed), pool,
    )
    images = PageImages("annotate-shown-", keep_s=600)
    demo = build(collector, images, prompts, auth=logins is not None, cap=config.daily_cap,
                 owners=owners, mode="auto" if pool else "new")
    worker.start()
    served = [m.name + ("" if m.round is None else f" (round {m.round})") for m in loaded]
    return Server(demo, worker, store, logins, images, served)


def serve(config: PageConfig) -> int:
    """Serve until Ctrl+C or SIGTERM (then 0, the store closed); a page that cannot start
    is one line."""
    port = pick_port(config.host, config.port)  # before the store: a taken port makes nothing
    if (chosen := use_free_cores()):
        print(chosen, file=sys.stderr)
    try:
        server = open_app(config)
    except OSError as error:
        raise UsageError(str(error)) from None
    try:
        launch_page(lambda free: server.demo.launch(
            server_name=config.host, server_port=free, auth=server.logins,
            prevent_thread_lock=True, quiet=True, **server_options()),
            config.host, port, asked=config.port is not None)
        print(f"annotate: open {server.demo.local_url} to label {' and '.join(server.models)}"
              f" (Ctrl+C stops; votes are in {config.db})", flush=True)
        while server.demo.is_running:  # not block_thread: Ctrl+C must not wait on it
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
