"""Vote-to-next-pair latency of the annotate page, as a person in a browser sees it.

Serves `python -m annotate` on the toy model (20 steps, its defaults) and drives headless
chromium pages that behave like annotators: look at the pair for --think seconds, press
a vote key, and wait until both new images are shown. Latency is from the key press to
the moment both new images have loaded. Runs each combination of annotators (1 and 8 by
default) and buffer (3 pairs per source, and none), each annotator on its own prompt,
and prints the figures as JSON.

    python benchmarks/annotate_latency.py [--votes 20] [--think 2.0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.async_api import async_playwright  # noqa: E402

from annotate.config import PageConfig
from annotate.serve import leave, open_app  # noqa: E402
from models.toy.shapes import all_captions  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOWN = """(before) => {
  const imgs = [...document.querySelectorAll('#left-image img, #right-image img')];
  return imgs.length === 2 && imgs[0].getAttribute('src') !== before
    && imgs.every((img) => img.complete && img.naturalWidth > 0)
    && !document.querySelector('#vote-left').disabled;
}"""
PROMPTS = all_captions()  # prompts the toy reads whole: its own captions


async def annotator(browser, url: str, k: int, votes: int, think: float) -> list[float]:
    page = await browser.new_page()
    await page.goto(url)
    await page.locator("#name textarea").fill(f"bench-{k}")
    await page.locator("#prompt textarea").fill(PROMPTS[k % len(PROMPTS)])
    await page.locator("#generate").click()
    await page.wait_for_function(SHOWN, arg="", timeout=120_000)
    latencies = []
    for v in range(votes):
        await asyncio.sleep(think)
        before = await page.locator("#left-image img").get_attribute("src")
        start = time.perf_counter()
        await page.keyboard.press("ArrowLeft" if v % 2 else "ArrowRight")
        await page.wait_for_function(SHOWN, arg=before, timeout=120_000, polling=5)
        latencies.append((time.perf_counter() - start) * 1000)
    await page.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(url: str, annotators: int, votes: int, think: float) -> list[float]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=ARGS)
        runs = await asyncio.gather(*(annotator(browser, url, k, votes, think)
                                      for k in range(annotators)))
        await browser.close()
    return [latency for run in runs for latency in run]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--buffers", type=int, nargs="+", default=[3, 0])
    parser.add_argument("--votes", type=int, default=20, help="votes per annotator")
    parser.add_argument("--think", type=float, default=2.0,
                        help="seconds an annotator looks before voting")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    results = []
    for buffer in args.buffers:
        for annotators in args.annotators:
            with tempfile.TemporaryDirectory() as folder:
                server = open_app(PageConfig(db=Path(folder) / "prefs.duckdb", buffer=buffer,
                                            steps=args.steps, seed=0))
                server.demo.launch(server_name="127.0.0.1", prevent_thread_lock=True,
                                   quiet=True)
                try:
                    start = time.perf_counter()
                    latencies = asyncio.run(measure(server.demo.local_url, annotators,
                                                    args.votes, args.think))
                    seconds = time.perf_counter() - start
                finally:
                    with contextlib.redirect_stdout(sys.stderr):  # Gradio's "Closing ..."
                        server.demo.close()
                    made = server.worker.made
                    server.close()
            results.append({
                "annotators": annotators, "buffer": buffer, "votes": len(latencies),
                "p50_ms": round(statistics.median(latencies), 1),
                "p95_ms": round(percentile(latencies, 0.95), 1),
                "max_ms": round(max(latencies), 1),
                "pairs_made": made, "seconds": round(seconds, 1),
            })
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({
        "benchmark": "annotate_latency", "model": "toy", "steps": args.steps,
        "think_s": args.think, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
    leave(0)
