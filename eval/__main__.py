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

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from cli.errors import UserError, report_user_error  # noqa: E402
from data.errors import DataError  # noqa: E402
from data.pages import PORT_HELP, launch_page, pick_port, read_logins  # noqa: E402
from data.store import QUESTIONS  # noqa: E402
from eval.votes import DEFAULT_VOTES  # noqa: E402
from models.threads import use_free_cores  # noqa: E402
from models.toy import TOY_NAME, TOY_NAMES  # noqa: E402


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
    from models.errors import ModelError
    from models.loading import check

    try:
        check(name)
    except ModelError as error:
        raise ModelError(f"{flag}: {error}") from None


def default_prompts(base: str):
    from data.prompts import Prompt
    from models.toy.shapes import all_captions, parse_caption

    if base not in TOY_NAMES:
        raise DataError(f"--base {base} has no built-in prompts: give --prompts FILE "
                        "(one prompt per line, or a CSV/TSV with prompt and category columns)")
    return [Prompt(c, parse_caption(c)[1]) for c in all_captions()]


def _sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=2,
                        help="images per prompt and model, seeds 0..N-1 (default: 2)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default: 20)")
    parser.add_argument("--guidance", type=float, default=7.5,
                        help="guidance scale (default: 7.5)")


def _images_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", default="runs/eval/images",
                        help="image cache folder, shared by the blind page, eval auto and the "
                             "leaderboard (default: runs/eval/images)")


def _tie_margin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tie-margin", type=float, default=0.0,
                        help="score difference at or below which two images tie (default: 0)")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=TOY_NAME, help="the base model (default: toy)")
    parser.add_argument("--aligned", help="the aligned model (default: the newest "
                                          "runs/train/*/final)")
    parser.add_argument("--prompts", help="prompt set: one per line, or CSV/TSV with prompt "
                                          "and category columns (default for toy: the 18 "
                                          "toy captions, by shape)")


def run_name(aligned: str) -> str:
    """A report folder's name for a model: the run's name for runs/train/<run>/final and
    for the step keep_best kept, runs/train/<run>/best (as eval auto's folder is named)."""
    path = Path(aligned)
    return path.parent.name if path.name in ("final", "best") and path.parent.name else path.name


def _models(args: argparse.Namespace) -> tuple[str, str]:
    """(base, aligned), both checked loadable before any work (a wrong name fails at once)."""
    aligned = args.aligned or newest_trained_model()
    if aligned is None:
        raise DataError("no aligned model: train one first (accelerate launch -m train toy) "
                        "or name it with --aligned")
    for flag, name in (("--base", args.base), ("--aligned", aligned)):
        check_model(flag, name)
    return args.base, aligned


def blind_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description="The blind A/B page: the same prompt and seed through both models, sides "
                    "shuffled; people vote A better, B better, tie or both bad, and the "
                    "models are named only after the vote. Votes go to --db. Also: "
                    "'python -m eval report' (tallies of the votes), 'python -m eval auto' "
                    "(a scorer instead of people); each has --help.")
    _model_flags(parser)
    parser.add_argument("--board", help="a leaderboard.json (python -m eval leaderboard): "
                                        "compare its models, each pair drawn from the "
                                        "closest-rated matchup with the fewest votes, "
                                        "instead of --base and --aligned")
    _sampling_flags(parser)
    parser.add_argument("--db", default=str(DEFAULT_VOTES),
                        help=f"the eval's votes file, not the annotate store (default: "
                             f"{DEFAULT_VOTES})")
    parser.add_argument("--voter", help="your name, recorded with every vote (default: the "
                                        "page asks)")
    parser.add_argument("--question", default="preference", choices=list(QUESTIONS),
                        help="what the page asks: the general preference (default), or the "
                             "paper's visual appeal or prompt alignment; each vote records it")
    parser.add_argument("--auth", metavar="FILE",
                        help="require a login: one user:password per line (as python -m "
                             "annotate --auth); the voter then comes from the login only")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1, this machine only; "
                             "0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, help=PORT_HELP)
    _images_flag(parser)
    return parser


def blind(argv: list[str]) -> int:
    args = blind_parser().parse_args(argv)
    from data.prompts import read_prompt_set

    if args.board:
        from eval.leaderboard import read_board

        if args.aligned:
            raise DataError("give --board (its models) or --aligned, not both")
        models, names, ratings = read_board(Path(args.board))
        for model in models:
            check_model("--board", model)
    else:
        models, names, ratings = list(_models(args)), None, None
    prompts = read_prompt_set(args.prompts) if args.prompts else \
        default_prompts(next((m for m in models if m in TOY_NAMES), models[0]))
    if args.auth and args.voter:
        raise DataError("give --auth (each voter is their login) or --voter, not both")
    logins = read_logins(Path(args.auth)) if args.auth else None
    port = pick_port(args.host, args.port)  # before any file: a taken port creates nothing
    if (chosen := use_free_cores()):
        print(chosen, file=sys.stderr)
    from eval.app import build_app, launch_options
    from eval.blind import BlindEval
    from eval.images import Sampling
    from eval.votes import VoteStore

    votes = VoteStore(args.db)  # first, so a locked file fails before any image is made
    blind_eval = BlindEval.prepare(models, prompts,
                                   Sampling(args.seeds, args.steps, args.guidance), votes,
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


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval report",
        description="Tally the blind page's votes, aligned over base: win rate, decisive win "
                    "rate, tie and both-bad rates, Wilson 95%, sign test, prompt-clustered "
                    "bootstrap, side-A (left) win rate; per prompt category. Writes report.md, "
                    "win_rate.png and summary.json.")
    parser.add_argument("--db", default=str(DEFAULT_VOTES),
                        help=f"the eval's votes file (default: {DEFAULT_VOTES})")
    parser.add_argument("--base", help="only votes with this base model")
    parser.add_argument("--aligned", help="only votes with this aligned model (default: the "
                                          "comparison voted on last)")
    parser.add_argument("--out", help="report folder (default: runs/eval/human-<aligned name>)")
    parser.add_argument("--question", default="preference", choices=list(QUESTIONS),
                        help="which question's votes to tally (default: preference)")
    return parser


def report(argv: list[str]) -> int:
    args = report_parser().parse_args(argv)
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
    command = "python -m eval report " + shlex.join(argv)
    with report_folder(out):
        summary = write_human_report(votes, out, command, others=comparisons[1:])
    print(json.dumps(summary))
    return 0


def auto_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval auto",
        description="Score both models' images on the same prompts and seeds with a scorer "
                    "and tally aligned over base: win rates, Wilson and prompt-clustered "
                    "bootstrap intervals, sign test, mean scores. Writes report.md, "
                    "win_rate.png, scores.png and summary.json.")
    _model_flags(parser)
    parser.add_argument("--scorer", default="toy_judge",
                        help="toy_judge, pickscore, clip, aesthetic, hpsv2 or module:callable "
                             "(default: toy_judge)")
    parser.add_argument("--also", nargs="+", default=[], metavar="SCORER",
                        help="more scorers reported beside --scorer on the same images (for "
                             "a prompt-blind preference such as aesthetic, a prompt-following "
                             "one such as toy_judge or clip)")
    _sampling_flags(parser)
    _tie_margin_flag(parser)
    parser.add_argument("--out", help="report folder (default: runs/eval/auto-<aligned name>)")
    _images_flag(parser)
    return parser


def auto(argv: list[str]) -> int:
    args = auto_parser().parse_args(argv)
    from data.prompts import read_prompt_set
    from eval.auto import compare
    from eval.images import Sampling
    from eval.report import report_folder, write_auto_report
    from models.scorers import load_scorer

    prompts = read_prompt_set(args.prompts) if args.prompts else default_prompts(args.base)
    base, aligned = _models(args)
    if (chosen := use_free_cores()):
        print(chosen, file=sys.stderr)
    out = Path(args.out or Path("runs/eval") / f"auto-{Path(aligned).parent.name}")
    sampling = Sampling(args.seeds, args.steps, args.guidance)
    scorers = {name: load_scorer(name) for name in [args.scorer, *args.also]}  # all, first
    result, *also = [compare(base, aligned, prompts, scorer, name, sampling, args.tie_margin,
                             Path(args.images)) for name, scorer in scorers.items()]
    command = "python -m eval auto " + shlex.join(argv)
    with report_folder(out):
        print(json.dumps(write_auto_report(result, out, command, also)))
    return 0


def leaderboard_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval leaderboard",
        description="Rank any number of models from pairwise comparisons on the same prompts "
                    "and seeds: every pair of models judged by a scorer, and by the blind "
                    "page's votes where they exist (a board each). Bradley-Terry ratings "
                    "with prompt-bootstrap intervals and the win-rate matrix. Writes "
                    "leaderboard.md, leaderboard-<judge>.png and leaderboard.json.")
    parser.add_argument("--models", nargs="+",
                        help="the models, the first one the anchor (default: toy, then every "
                             "runs/train/*/final, oldest first)")
    parser.add_argument("--names", nargs="+", help="a short name per model (default: the run "
                                                   "folder's name, or the model's)")
    parser.add_argument("--prompts", help="prompt set: one per line, or CSV/TSV with prompt "
                                          "and category columns (default for toy: the 18 "
                                          "toy captions)")
    parser.add_argument("--scorer", default="toy_judge",
                        help="the automatic judge: toy_judge, pickscore, clip, aesthetic, "
                             "hpsv2 or module:callable (default: toy_judge)")
    parser.add_argument("--votes", default=str(DEFAULT_VOTES),
                        help=f"blind votes to rank by as well, when the file exists (default: "
                             f"{DEFAULT_VOTES})")
    _sampling_flags(parser)
    _tie_margin_flag(parser)
    parser.add_argument("--prior", type=float, default=1.0,
                        help="virtual ties per pair of models, so an unbeaten model has a "
                             "finite rating (default: 1; 0: the plain maximum likelihood)")
    parser.add_argument("--out", default="runs/eval/leaderboard",
                        help="report folder (default: runs/eval/leaderboard)")
    _images_flag(parser)
    return parser


def leaderboard(argv: list[str]) -> int:
    args = leaderboard_parser().parse_args(argv)
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
    from eval.images import Sampling, images_for
    from eval.leaderboard import fit, scored_matches, vote_matches, write_boards
    from eval.report import report_folder
    from models.scorers import load_scorer

    sampling = Sampling(args.seeds, args.steps, args.guidance)
    texts = [p.text for p in prompts]
    keys = [(t, s) for t in texts for s in range(sampling.seeds)]
    scorer = load_scorer(args.scorer)
    scores = {}
    for model, name in zip(models, names, strict=True):
        paths = images_for(model, texts, sampling, Path(args.images))
        scores[model] = score_images(scorer, args.scorer, [t for t, _ in keys],
                                     [paths[k] for k in keys], name)
    boards = [fit(scored_matches(models, texts, sampling.seeds, scores, args.tie_margin),
                  models, f"{args.scorer} (tie margin {args.tie_margin:g})", args.prior)]
    if Path(args.votes).exists():
        from eval.votes import VoteStore

        with VoteStore(args.votes, read_only=True) as store:
            voted = vote_matches(store.votes(question="preference"), models)
        if voted:
            try:
                boards.append(fit(voted, models, "people (blind votes)", args.prior))
            except DataError as error:  # votes that do not link every model: say, go on
                print(f"note: no people's board: {error}", file=sys.stderr)
    command = "python -m eval leaderboard " + shlex.join(argv)
    with report_folder(Path(args.out)) as out:
        print(json.dumps(write_boards(boards, names, out, command)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = {"auto": auto, "report": report,
               "leaderboard": leaderboard}.get(argv[0] if argv else "")
    try:
        return command(argv[1:]) if command else blind(argv)
    except UserError as error:
        return report_user_error(error)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
