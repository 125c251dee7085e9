"""Speed of the automatic judge's two stages on the toy model.

    python benchmarks/eval_auto.py             # 18 toy captions x 8 seeds, 20 steps

- generation: images per second of `eval.images.images_for` into a fresh cache folder
  (one batched pipeline call per prompt), and the time to find them all again (reuse);
- scoring: images per second of the toy judge through `eval.auto`'s batched scoring.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from eval.auto import score_images  # noqa: E402
from eval.config import Sampling  # noqa: E402
from eval.images import images_for  # noqa: E402
from models.scorers import load_scorer  # noqa: E402
from models.toy import TOY_NAME  # noqa: E402
from models.toy.shapes import all_captions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    prompts = all_captions()
    sampling = Sampling(seeds=args.seeds, steps=args.steps)
    from models.loading import load

    load(TOY_NAME)  # import and first-load costs stay out of the timing
    start = time.perf_counter()
    paths = images_for(TOY_NAME, prompts, sampling, root)
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    images_for(TOY_NAME, prompts, sampling, root)
    reuse_s = time.perf_counter() - start
    ordered = list(paths.values())
    texts = [prompt for prompt, _ in paths]
    scorer = load_scorer("toy_judge")
    start = time.perf_counter()
    score_images(scorer, "toy_judge", texts, ordered, TOY_NAME)
    score_s = time.perf_counter() - start
    print(json.dumps({
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "images": len(paths), "steps": args.steps,
        "generate_images_per_s": round(len(paths) / generate_s, 1),
        "reuse_s": round(reuse_s, 3),
        "judge_images_per_s": round(len(paths) / score_s, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
