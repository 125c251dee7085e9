"""`python -m eval`: the blind A/B page; `eval auto`: the automatic judge; `eval report`.

    python -m eval                                                 # toy against the newest run
    python -m eval --base M --aligned M2 --prompts parti.tsv --voter ann
    python -m eval report                                          # tallies of the votes
    python -m eval auto --aligned runs/train/toy/final            # toy base, toy judge
    python -m eval auto --base M --aligned M2 --prompts parti.tsv --scorer pickscore
    python -m eval leaderboard                                     # toy and every run, ranked
    python -m eval leaderboard --models M M2 M3 --prompts parti.tsv --scorer pickscore
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from cli.entry import run_main  # noqa: E402
from cli.errors import DataError
from cli.parser import (  # noqa: E402
    CONFIG_FILE,
    command_line,
    parse_command,
    save_config,
    save_config_beside,
)
from eval.config import (  # noqa: E402
    COMMANDS,
    AgreementConfig,
    AutoConfig,
    BlindConfig,
    LeaderboardConfig,
    ReportConfig,
)
from models.threads import use_free_cores  # noqa: E402
from models.toy import TOY_NAME, TOY_NAMES, built_in_prompts  # noqa: E402
from pages.shared import launch_page, pick_port, read_logins  # noqa: E402


def trained_models(root: Path = Path("runs/train")) -> list[str]:
    """Every `final/` model under runs/train, the oldest written first."""
    finals = [p for p in root.glob("*/final") if p.is_dir()]
    return [str(p) for p in sorted(finals, key=lambda p: p.stat().st_mtime)]


def newest_trained_model(root: Path = Path("runs/train")) -> str | None:
    """The most recently written `final/` model under runs/train, if any."""
    finals = trained_models(root)
    return finals[-1] if finals else None


def check_model(flag: str, name: str) -> None:
    """A model name that does not load fails at once, naming the flag that gave it."""
    from cli.errors import ModelError
    from models.loading import check

    try:
        check(name)
    except ModelError as error:
        raise ModelError(f"{flag}: {error}") from None


def default_prompts(base: str):
    """The base model's built-in prompts (the toy's captions, by shape)."""
    built_in = built_in_prompts(base)
    if built_in is None:
        raise DataError(f"--base {base} has no built-in prompts: give --prompts FILE "
                        "(one prompt per line, or a CSV/TSV with prompt and category columns)")
    return built_in


def run_name(aligned: str) -> str:
    """A report folder's name for a model: the run's name for runs/train/<run>/final and
    for the step keep_best kept, runs/train/<run>/best (as eval auto's folder is named)."""
    path = Path(aligned)
    return path.parent.name if path.name in ("final", "best") and path.parent.name else path.name


def _models(args: BlindConfig | AutoConfig) -> tuple[str, str]:
    """(base, aligned), both checked loadable before any work (a wrong name fails at once)."""
    aligned = args.aligned or newest_trained_model()
    if aligned is None:
        raise DataError("no aligned model: train one first (accelerate launch -m train toy) "
                        "or name it with --aligned")
    for flag, name in (("--base", args.base), ("--aligned", aligned)):
        check_model(flag, name)
    return args.base, aligned


def blind(args: BlindConfig) -> int:
    from data.prompts import read_prompt_set

    if args.board:
        from eval.leaderboard import read_board

        models, names, ratings = read_board(Path(args.board))
        for model in models:
            check_model("--board", model)
    else:
        models, names, ratings = list(_models(args)), None, None
    prompts = read_prompt_set(args.prompts) if args.prompts else \
        default_prompts(next((m for m in models if m in TOY_NAMES), models[0]))
    logins = read_logins(Path(args.auth)) if args.auth else None
    port = pick_port(args.host, args.port)  # before any file: a taken port creates nothing
    if (chosen := use_free_cores()):
        print(chosen, file=sys.stderr)
    from eval.app import build_app, launch_options
    from eval.blind import BlindEval
    from eval.votes import VoteStore

    votes = VoteStore(args.db)  # first, so a locked file fails before any image is made
    save_config_beside(args, args.db, "blind")
    blind_eval = BlindEval.prepare(models, prompts,
                                   args.sampling(), votes,
                                   Path(args.images), names=names, ratings=ratings,
                                   question=args.question)
    try:
        demo = build_app(blind_eval, args.voter, auth=logins is not None)
        launch_page(lambda free: demo.launch(prevent_thread_lock=True, quiet=True, auth=logins,
                                             **launch_options(args.host, free)),
                    args.host, port, asked=args.port is not None)
        # the page is up before any image is made: it shows the progress and deals each
        # pair once both its images exist
        what = f"{len(models)} models, " if args.board else ""
        print(f"blind eval of {what}{len(blind_eval.items)} pairs at {demo.local_url} "
              f"(votes: {args.db}; images are made in the background, the page shows how "
              "far; Ctrl+C stops)", flush=True)
        blind_eval.start(on_failure=lambda message: print(f"error: {message}",
                                                          file=sys.stderr, flush=True))
        demo.block_thread()
    finally:
        blind_eval.close()
        votes.close()
    return 0


def report(args: ReportConfig) -> int:
    from eval.votes import VoteStore

    with VoteStore(args.db, read_only=True) as store:
        comparisons = [c for c in store.comparisons()
                       if args.base in (None, c[0]) and args.aligned in (None, c[1])]
        if not comparisons:
            which = "" if args.base is None and args.aligned is None else " for these models"
            raise DataError(f"no votes yet{which} in {args.db}: vote first (python -m eval)")
        base, aligned, _ = comparisons[0]
        votes = store.votes(base, aligned, args.question)
        if not votes:
            raise DataError(f"no votes on the {args.question} question for {aligned} in "
                            f"{args.db}: give the --question the page asked")
    from eval.report import report_folder, write_human_report  # matplotlib: once there are votes

    out = Path(args.out or Path("runs/eval") / f"human-{run_name(aligned)}")
    command = command_line("python -m eval report", args)
    with report_folder(out):
        summary = write_human_report(votes, out, command, others=comparisons[1:])
        save_config(args, out / CONFIG_FILE)
    print(json.dumps(summary))
    return 0


def auto(args: AutoConfig) -> int:
    from data.prompts import read_prompt_set
    from eval.auto import compare
    from eval.images import images_for
    from eval.report import report_folder, write_auto_report
    from models.launch import this_launch
    from models.loading import default_device_and_dtype
    from models.scorers import load_scorer

    prompts = read_prompt_set(args.prompts) if args.prompts else default_prompts(args.base)
    base, aligned = _models(args)
    launch = this_launch()
    if (chosen := use_free_cores()) and launch.main:
        print(chosen, file=sys.stderr)
    out = Path(args.out or Path("runs/eval") / f"auto-{Path(aligned).parent.name}")
    sampling = args.sampling()
    if launch.count > 1:  # every process makes its share of the images; the main one judges
        for model in (base, aligned):
            images_for(model, [p.text for p in prompts], sampling, Path(args.images),
                       launch=launch)
        launch.wait()
        if not launch.main:
            return 0
    device = default_device_and_dtype()[0]  # the GPU where there is one: scoring is batched
    scorers = {name: load_scorer(name, device=device)
               for name in [args.scorer, *args.also]}  # all, first
    result, *also = [compare(base, aligned, prompts, scorer, name, sampling, args.tie_margin,
                             Path(args.images), args.score_batch)
                     for name, scorer in scorers.items()]
    command = command_line("python -m eval auto", args)
    with report_folder(out):
        summary = write_auto_report(result, out, command, also)
        save_config(args, out / CONFIG_FILE)
    print(json.dumps(summary))
    return 0


def leaderboard(args: LeaderboardConfig) -> int:
    from data.prompts import read_prompt_set

    models = args.models or [TOY_NAME, *trained_models()]
    if len(models) < 2:
        raise DataError("a leaderboard needs two models or more: train one (accelerate launch "
                        "-m train toy) or name them with --models")
    names = args.names or [run_name(m) for m in models]
    if len(names) != len(models):
        raise DataError(f"--names gives {len(names)} names for {len(models)} models: one each")
    if len(set(names)) != len(names):
        raise DataError("two models share a name on the board: give --names")
    for model in models:
        check_model("--models", model)
    prompts = read_prompt_set(args.prompts) if args.prompts else default_prompts(models[0])
    from eval.auto import score_images
    from eval.images import images_for
    from eval.leaderboard import fit, scored_matches, vote_matches, write_boards
    from eval.report import report_folder
    from models.loading import default_device_and_dtype
    from models.scorers import load_scorer

    sampling = args.sampling()
    texts = [p.text for p in prompts]
    keys = [(t, s) for t in texts for s in range(sampling.seeds)]
    scorer = load_scorer(args.scorer, device=default_device_and_dtype()[0])
    scores = {}
    for model, name in zip(models, names, strict=True):
        paths = images_for(model, texts, sampling, Path(args.images))
        scores[model] = score_images(scorer, args.scorer, [t for t, _ in keys],
                                     [paths[k] for k in keys], name, args.score_batch)
    boards = [fit(scored_matches(models, texts, sampling.seeds, scores, args.tie_margin),
                  models, f"{args.scorer} (tie margin {args.tie_margin:g})", args.prior)]
    if Path(args.votes).exists():
        from eval.votes import VoteStore

        with VoteStore(args.votes, read_only=True) as store:
            voted = vote_matches(store.votes(question="preference"), models)
        if voted:
            try:
                boards.append(fit(voted, models, "people (blind votes)", args.prior,
                                  min_matches=args.min_matches,
                                  preliminary_below=args.preliminary_below))
            except DataError as error:  # votes that do not link every model: say, go on
                print(f"note: no people's board: {error}", file=sys.stderr)
    command = command_line("python -m eval leaderboard", args)
    with report_folder(Path(args.out)) as out:
        summary = write_boards(boards, names, out, command)
        save_config(args, out / CONFIG_FILE)
    print(json.dumps(summary))
    return 0


def agreement(args: AgreementConfig) -> int:
    from eval.agreement import agreement as measure
    from eval.agreement import people_pairs, table, trained_pairs
    from models.loading import default_device_and_dtype
    from models.scorers import SCORE_BATCH, load_scorer

    if not Path(args.db).exists():
        raise DataError(f"{args.db} does not exist: give --db the preference store")
    excluded = trained_pairs(args.scorers)
    pairs = people_pairs(args.db, excluded, args.max_pairs, args.seed)
    device = default_device_and_dtype()[0]
    scorers = {name: load_scorer(name, device=device) for name in args.scorers}
    results = measure(pairs, scorers, args.score_batch or SCORE_BATCH)
    print(table(results), file=sys.stderr)
    print(json.dumps({"db": args.db, "votes": len(pairs), "judges_trained_on": len(excluded),
                      "scorers": [{"scorer": r.scorer, "agreement": r.rate,
                                   "agreed": r.agreed, "votes": r.pairs,
                                   "wilson": r.interval and [r.interval.low, r.interval.high]}
                                  for r in results]}))
    return 0


RUNS = {"blind": blind, "report": report, "auto": auto, "leaderboard": leaderboard,
        "agreement": agreement}


def main(argv: list[str] | None = None) -> int:
    def command(argv: list[str]) -> int:
        name, config = parse_command(COMMANDS, argv, "python -m eval", default="blind")
        return RUNS[name](config)

    return run_main(command, argv)


if __name__ == "__main__":
    sys.exit(main())
