"""`python -m eval auto ...`: the automatic judge. The blind A/B app is not built yet.

    python -m eval auto --aligned runs/train/toy/final            # toy base, toy judge
    python -m eval auto --base M --aligned M2 --prompts parti.tsv --scorer pickscore
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from data.errors import DataError  # noqa: E402
from models.errors import ModelError  # noqa: E402

TOY = "toy"


def newest_trained_model(root: Path = Path("runs/train")) -> str | None:
    """The most recently written `final/` model under runs/train, if any."""
    finals = [p for p in root.glob("*/final") if p.is_dir()]
    return str(max(finals, key=lambda p: p.stat().st_mtime)) if finals else None


def default_prompts(base: str):
    from data.prompts import Prompt
    from models.toy.shapes import SHAPES, all_captions

    if base != TOY:
        raise DataError(f"--base {base} has no built-in prompts: give --prompts FILE "
                        "(one prompt per line, or a CSV/TSV with prompt and category columns)")
    return [Prompt(c, next(s for s in SHAPES if c.endswith(s))) for c in all_captions()]


def auto_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval auto",
        description="Score both models' images on the same prompts and seeds with a scorer "
                    "and tally aligned over base: win rates, Wilson and prompt-clustered "
                    "bootstrap intervals, sign test, mean scores. Writes report.md, "
                    "win_rate.png, scores.png and summary.json.")
    parser.add_argument("--base", default=TOY, help="the base model (default: toy)")
    parser.add_argument("--aligned", help="the aligned model (default: the newest "
                                          "runs/train/*/final)")
    parser.add_argument("--prompts", help="prompt set: one per line, or CSV/TSV with prompt "
                                          "and category columns (default for toy: the 18 "
                                          "toy captions, by shape)")
    parser.add_argument("--scorer", default="toy_judge",
                        help="toy_judge, pickscore, clip, aesthetic, hpsv2 or module:callable "
                             "(default: toy_judge)")
    parser.add_argument("--seeds", type=int, default=2,
                        help="images per prompt and model, seeds 0..N-1 (default: 2)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default: 20)")
    parser.add_argument("--guidance", type=float, default=7.5,
                        help="guidance scale (default: 7.5)")
    parser.add_argument("--tie-margin", type=float, default=0.0,
                        help="score difference at or below which a pair is a tie (default: 0)")
    parser.add_argument("--out", help="report folder (default: runs/eval/auto-<aligned name>)")
    parser.add_argument("--images", default="runs/eval/images",
                        help="image cache folder (default: runs/eval/images)")
    return parser


def auto(argv: list[str]) -> int:
    args = auto_parser().parse_args(argv)
    from data.prompts import read_prompt_set
    from eval.auto import compare
    from eval.images import Sampling
    from eval.report import write_auto_report
    from models.scorers import load_scorer

    aligned = args.aligned or newest_trained_model()
    if aligned is None:
        raise DataError("no aligned model: train one first (accelerate launch -m train toy) "
                        "or name it with --aligned")
    prompts = read_prompt_set(args.prompts) if args.prompts else default_prompts(args.base)
    out = Path(args.out or Path("runs/eval") / f"auto-{Path(aligned).parent.name}")
    result = compare(args.base, aligned, prompts, load_scorer(args.scorer), args.scorer,
                     Sampling(args.seeds, args.steps, args.guidance), args.tie_margin,
                     Path(args.images))
    command = "python -m eval auto " + shlex.join(argv)
    print(json.dumps(write_auto_report(result, out, command)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["auto"]:
        try:
            return auto(argv[1:])
        except (DataError, ModelError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print("python -m eval: not built yet (see the project's open issues)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
