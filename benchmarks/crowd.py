"""A simulated crowd on the annotate page, and what leaving its flagged annotators out of
training is worth.

    python benchmarks/crowd.py --out runs/crowd                  # crowd, flags, two DPO runs
    python benchmarks/crowd.py --out runs/crowd-small --votes 20 --steps 4 --no-train

Twelve annotators log in to one `python -m annotate` server (toy model, prompt-set
mode, a share of pairs shown to three annotators, gold pairs mixed in) and vote through
gradio_client, each from its own thread:
- nine honest ones prefer the image the toy judge scores higher, call a tie when the two
  scores are within `--tie-margin` (as the README's AI feedback does: a person cannot
  tell two equally good images apart), and flip a share `--honest-noise` of their
  decisive votes, as a person errs; they look at each pair `--look` seconds;
- two vote left or right at random, one always votes "left"; these three look only
  `--quick-look` seconds, as a spammer does.
Then `data.quality` computes agreement and flags (its default rule), and, unless
--no-train, the toy preset trains on the same store once per `--variants` (VARIANTS: every
vote a pair, the flagged left out, several votes on a pair as their majority or as their
share: soft labels), and `models.toy.evaluate` measures each model's adherence on 400
held-out prompt/seed pairs and `python -m eval auto` its decisive win rate over the base.
Prints one JSON object (also RUN/result.json).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pages.shared import free_port  # noqa: E402

HONEST, RANDOM, LEFT = "honest", "random", "left"
CROWD = [(f"honest-{i:02d}", HONEST) for i in range(1, 10)] + [
    ("random-1", RANDOM), ("random-2", RANDOM), ("lefty", LEFT)]
PASSWORD = "crowd"


@dataclass
class Annotator:
    name: str
    kind: str
    look_s: float
    noise: float
    tie_margin: float
    rng: random.Random


def write_gold(folder: Path, pairs: int = 6, seeds: int = 12, steps: int = 20,
               gap: float = 0.6) -> Path:
    """Gold pairs of the toy model that leave no doubt: per caption, the image the judge
    likes most against the one it likes least of a few seeds, where their scores differ
    by `gap` or more (a gold pair nobody could tell apart would score people on luck).
    Scored as the page shows them, after the store's JPEG round trip, which can turn a
    32 px square into something else."""
    import torch

    from data.pairs import decode_image, encode_jpeg
    from models.loading import load
    from models.toy.judge import score
    from models.toy.shapes import all_captions

    model = load("toy")
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for caption in all_captions():
        images = model.pipeline([caption] * seeds, num_inference_steps=steps,
                                generator=[torch.Generator().manual_seed(s)
                                           for s in range(seeds)]).images
        images = [decode_image(encode_jpeg(image)) for image in images]
        scores = score([caption] * seeds, images).tolist()
        best, worst = scores.index(max(scores)), scores.index(min(scores))
        if scores[best] - scores[worst] < gap:
            continue
        k = len(lines)
        images[best].save(folder / f"{k:02d}-better.png")
        images[worst].save(folder / f"{k:02d}-worse.png")
        lines.append(json.dumps({"prompt": caption, "better": f"{k:02d}-better.png",
                                 "worse": f"{k:02d}-worse.png"}))
        if len(lines) == pairs:
            break
    if not lines:
        raise SystemExit("no caption gave a clear gold pair: more --steps?")
    path = folder / "gold.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def native(path: str):
    """A page image back at the toy model's size (the page enlarges by whole pixels)."""
    from PIL import Image

    from models.toy.shapes import IMAGE_SIZE

    image = Image.open(path).convert("RGB")
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST)


def choose(annotator: Annotator, prompt: str, left: str, right: str) -> str:
    if annotator.kind == LEFT:
        return "left"
    if annotator.kind == RANDOM:
        return annotator.rng.choice(["left", "right"])
    from models.toy.judge import score

    s_left, s_right = score([prompt, prompt], [native(left), native(right)]).tolist()
    if abs(s_left - s_right) <= annotator.tie_margin:
        return "tie"
    choice = "left" if s_left > s_right else "right"
    if annotator.rng.random() < annotator.noise:
        choice = "right" if choice == "left" else "left"
    return choice


RETRIES: list[str] = []


def call(client, *args, api_name: str, tries: int = 5):
    """`client.predict`, again after a dropped connection, each resend noted in
    `RETRIES` (a lost answer is a fault a person at the page would see); a vote names its
    showing, so sending it twice stores it once."""
    for attempt in range(tries):
        try:
            return client.predict(*args, api_name=api_name)
        except Exception as error:
            RETRIES.append(f"{api_name} {args}: {error!r}")
            if attempt == tries - 1:
                raise
            time.sleep(1.0)


def kept(value) -> bool:
    """Whether the page left an output as it was (`gr.skip()` reaches a client as an
    update dict): a refused request, or a resent vote that was stored the first time."""
    return isinstance(value, dict)


def annotate(url: str, annotator: Annotator, votes: int, errors: list[str]) -> None:
    from gradio_client import Client

    def generate():
        return call(client, "", "", "auto", api_name="/generate")

    client = None
    try:
        client = Client(url, auth=(annotator.name, PASSWORD), verbose=False,
                        httpx_kwargs={"timeout": 300})
        shown = generate()
        cast = 0
        while cast < votes:
            left, right, prompt, showing_id = shown[:4]
            if kept(showing_id) or not showing_id:  # refused, or no pair made (busy): again
                time.sleep(0.5)
                shown = generate()
                continue
            time.sleep(annotator.look_s)
            outcome = choose(annotator, prompt, left, right)
            after = call(client, "", "auto", showing_id, api_name=f"/vote_{outcome}")
            if kept(after[3]) and not kept(after[5]):  # refused: the note says why
                errors.append(f"{annotator.name}: {after[5]}")
                if len(errors) > 50:
                    return
                time.sleep(0.5)
                continue
            cast += 1
            # a resent vote stored the first time: the pair after it went with that answer
            shown = generate() if kept(after[3]) else after
    except Exception as error:  # reported with the annotator
        errors.append(f"{annotator.name}: {error!r}")
    finally:
        if client is not None:
            client.close()  # its heartbeat thread, before the server goes


def simulate(out: Path, votes: int, steps: int = 20, overlap: int = 3,
             overlap_share: float = 0.5, gold_rate: float = 0.1, look: float = 1.2,
             quick_look: float = 0.6, honest_noise: float = 0.1, tie_margin: float = 0.1,
             seed: int = 0) -> dict:
    """Run the crowd on a fresh store in `out`; the store's path, timings and errors."""
    from annotate.config import PageConfig
    from annotate.serve import open_app

    out.mkdir(parents=True, exist_ok=True)
    db = out / "crowd.duckdb"
    if db.exists():
        raise SystemExit(f"{db} exists: give a new --out")
    logins = out / "logins.txt"
    logins.write_text("".join(f"{name}:{PASSWORD}\n" for name, _ in CROWD))
    gold = write_gold(out / "gold", steps=steps)
    server = open_app(PageConfig(
        db=db, auth=logins, gold=gold, gold_rate=gold_rate, steps=steps,
        seed=seed, queue=len(CROWD) + 4, overlap=overlap, overlap_share=overlap_share))
    port = free_port()
    server.demo.launch(server_name="127.0.0.1", server_port=port, auth=server.logins,
                       prevent_thread_lock=True, quiet=True)
    rng = random.Random(seed)
    crowd = [Annotator(name, kind, look if kind == HONEST else quick_look,
                       honest_noise if kind == HONEST else 0.0, tie_margin,
                       random.Random(rng.random()))
             for name, kind in CROWD]
    errors: list[str] = []
    start = time.perf_counter()
    try:
        threads = [threading.Thread(target=annotate, args=(server.demo.local_url, a, votes,
                                                           errors)) for a in crowd]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.close(timeout=30)  # the worker ends rather than outlive the server
    return {"db": str(db), "crowd_s": round(time.perf_counter() - start, 1),
            "pairs_made": server.worker.made, "errors": errors[:5], "retries": RETRIES[:20]}


def quality(db: Path) -> dict:
    from data.quality import store_quality
    from data.store import Store

    with Store(db, read_only=True) as store:
        crowd = store_quality(store)
        votes = store.cursor().execute(
            "SELECT count(*) FILTER (question = 'preference'), "
            "count(DISTINCT (image_0_uid, image_1_uid)) FROM rankings "
            "WHERE NOT is_gold").fetchone()
    bad = {name for name, kind in CROWD if kind != HONEST}
    flagged = {a.name for a in crowd.flagged}
    return {
        "alpha": crowd.alpha, "agreement": crowd.agreement,
        "overlap_pairs": crowd.overlap_pairs, "train_votes": votes[0], "train_pairs": votes[1],
        "flagged": {a.name: list(a.flags) for a in crowd.flagged},
        "flagged_correctly": flagged == bad,
        "annotators": {a.name: {"votes": a.votes, "agreement": a.agreement,
                                "gold": a.gold_accuracy, "left_rate": a.left_rate,
                                "median_look_s": (a.median_dwell_ms or 0) / 1000}
                       for a in crowd.annotators},
    }


# What the trainer is given per variant, on the same store, pairs and steps.
VARIANTS = {
    "all_votes": ["--pair_votes", "each"],
    "without_flagged": ["--drop_flagged", "true"],
    "majority": ["--pair_votes", "majority"],
    "share": ["--pair_votes", "share"],
}


JUDGE_SEEDS = 23  # eval auto's seeds per caption: 18 x 23 = 414 pairs, as benchmarks/toy_loop.py


def train_and_measure(db: Path, out: Path, pairs: int, train_args: list[str],
                      variants: list[str] = ("all_votes", "without_flagged"),
                      judge_seeds: int = JUDGE_SEEDS) -> dict:
    """The toy preset once per variant; adherence of each, and its decisive win rate over
    the base by the toy judge (eval auto, 18 captions x `judge_seeds` same-seed pairs)
    with its Wilson interval."""
    python = sys.executable
    launch = [python, "-m", "accelerate.commands.launch", "-q", "--config_file",
              str(ROOT / "docs/accelerate/one_process.yaml")]
    result = {}

    def adherence(model: str) -> float:
        done = subprocess.run([python, "-m", "models.toy.evaluate", "--model", model,
                               "--pairs", str(pairs), "--judge-images", "0"],
                              cwd=ROOT, check=True, capture_output=True, text=True)
        return json.loads(done.stdout[done.stdout.index("{"):])["adherence"]["both"]

    def win_rate(model: str, name: str) -> dict:
        done = subprocess.run([python, "-m", "eval", "auto", "--aligned", model, "--out",
                               str(out / f"auto-{name}"), "--images", str(out / "images"),
                               "--seeds", str(judge_seeds)],
                              cwd=ROOT, check=True, capture_output=True, text=True)
        tally = json.loads(done.stdout[done.stdout.index("{"):])
        return {"wins": tally["wins"], "losses": tally["losses"], "ties": tally["ties"],
                "decisive_win_rate": tally["decisive_win_rate"],
                "decisive_wilson": tally["decisive_wilson"]}

    result["adherence_base"] = adherence("toy")
    for name in variants:
        folder = out / f"train-{name}"
        start = time.perf_counter()
        subprocess.run([*launch, "-m", "train", "toy", "--data", str(db), "--output_dir",
                        str(folder), "--cache_dir", str(out / "cache"), *VARIANTS[name],
                        *train_args], cwd=ROOT, check=True, capture_output=True, text=True)
        result[f"train_{name}_s"] = round(time.perf_counter() - start, 1)
        result[f"adherence_{name}"] = adherence(str(folder / "final"))
        result[f"judged_{name}"] = win_rate(str(folder / "final"), name)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/crowd"))
    parser.add_argument("--votes", type=int, default=125, help="votes per annotator")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps of the page")
    parser.add_argument("--honest-noise", type=float, default=0.1)
    parser.add_argument("--tie-margin", type=float, default=0.1)
    parser.add_argument("--look", type=float, default=1.2)
    parser.add_argument("--quick-look", type=float, default=0.6)
    parser.add_argument("--pairs", type=int, default=400, help="adherence prompt/seed pairs")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--db", type=Path, help="train on this crowd store (made by an "
                        "earlier run) instead of running the crowd")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=["all_votes", "without_flagged"])
    parser.add_argument("--judge-seeds", type=int, default=JUDGE_SEEDS,
                        help="eval auto's seeds per caption (pairs: 18 x this)")
    parser.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                        help="more trainer flags, last (for a smoke run: --max_steps 2 ...)")
    args = parser.parse_args()
    if args.db:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {"db": str(args.db)}
    else:
        result = simulate(args.out, args.votes, steps=args.steps, look=args.look,
                          quick_look=args.quick_look, honest_noise=args.honest_noise,
                          tie_margin=args.tie_margin)
    result.update(quality(Path(result["db"])))
    if not args.no_train:
        result.update(train_and_measure(Path(result["db"]), args.out, args.pairs,
                                        args.train_args, args.variants, args.judge_seeds))
    text = json.dumps(result, indent=2)
    (args.out / "result.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
    from annotate.serve import leave

    leave(0)  # the page's threads may still be in torch code
