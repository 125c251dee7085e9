"""Screenshots of both pages at real size, with a pair on screen, for docs/.

    python scripts/screenshots.py [--aligned MODEL] [--board LEADERBOARD_JSON]
        [--campaign STORE] [--out docs]

A 1280x900 window at device scale 1, headless chromium (as the tests drive it): the
annotate page on the toy model after "Prompt from the set" and Generate, and the blind
page comparing toy with `--aligned` (default: toy itself); with `--board`, also the blind
page over that board's models after one vote (eval_board_page.png); with `--campaign`, the
campaign page of that store, copied first (campaign_page.png, 1280 px wide, whole page).
Everything it writes besides the PNGs goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from playwright.sync_api import sync_playwright  # noqa: E402

VIEWPORT = {"width": 1280, "height": 900}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LOADED = """selector => [...document.querySelectorAll(selector)]
  .filter(i => i.complete && i.naturalWidth).length === 2"""


def annotate_page(browser, folder: Path, out: Path) -> None:
    from annotate.config import PageConfig
    from annotate.serve import open_app

    server = open_app(PageConfig(db=folder / "prefs.duckdb", seed=0, buffer=0))
    try:
        server.demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
        page.goto(server.demo.local_url)
        page.locator("#name textarea").fill("ann")
        page.locator("#from-set").click()
        page.wait_for_function("() => document.querySelector('#prompt textarea').value")
        page.locator("#generate").click()
        page.wait_for_function(LOADED, arg="#left-image img, #right-image img",
                               timeout=300_000)
        page.wait_for_function("() => !document.querySelector('#vote-left').disabled")
        page.wait_for_timeout(500)  # the buttons' fade-in, once armed
        page.screenshot(path=out)
    finally:
        server.demo.close()
        server.close()


def campaign_page(browser, folder: Path, store: Path, out: Path) -> None:
    from annotate.config import PageConfig
    from annotate.serve import open_app

    db = folder / "campaign.duckdb"
    shutil.copy(store, db)
    server = open_app(PageConfig(db=db, buffer=0))
    try:
        server.demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
        page.goto(server.demo.local_url + "campaign")
        page.get_by_text("Krippendorff's alpha").wait_for(timeout=60_000)
        page.wait_for_timeout(1500)  # the charts draw
        page.screenshot(path=out, full_page=True)
    finally:
        server.demo.close()
        server.close()


def eval_page(browser, folder: Path, models: list[str], out: Path, board: Path | None = None
              ) -> None:
    from eval.__main__ import default_prompts
    from eval.app import build_app, launch_options
    from eval.blind import BlindEval
    from eval.config import Sampling
    from eval.votes import VoteStore

    votes = VoteStore(folder / "votes.duckdb")
    prompts = default_prompts("toy")[:2]
    names = ratings = None
    if board:
        from eval.leaderboard import read_board

        models, names, ratings = read_board(board)
    blind = BlindEval.prepare(models, prompts, Sampling(seeds=1), votes, folder / "images",
                              names=names, ratings=ratings)
    try:
        demo = build_app(blind)
        demo.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", None))
        blind.start()  # the images, made in the background as the command makes them
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
        page.goto(demo.local_url)
        page.wait_for_function(LOADED, arg="#eval-image-a img, #eval-image-b img",
                               timeout=300_000)
        if board:  # the reveal and the votes per matchup, after one vote
            page.fill("#eval-voter input, #eval-voter textarea", "ann")
            page.wait_for_timeout(800)
            page.locator("#eval-vote-a").click()
            page.wait_for_function("() => document.querySelector('#eval-tally').innerText"
                                   ".includes(': 1.')", timeout=60_000)
            page.wait_for_timeout(500)
        page.screenshot(path=out)
        demo.close()
    finally:
        blind.close()
        votes.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aligned", default="toy", help="the blind page's aligned model")
    parser.add_argument("--board", type=Path, help="a leaderboard.json: also the board page")
    parser.add_argument("--campaign", type=Path, help="a store: also its campaign page")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs")
    parser.add_argument("--only-campaign", action="store_true",
                        help="with --campaign: that page alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                             args=ARGS)
        if args.campaign:
            campaign_page(browser, Path(temp), args.campaign, args.out / "campaign_page.png")
        if not (args.campaign and args.only_campaign):
            annotate_page(browser, Path(temp), args.out / "annotate_page.png")
            eval_page(browser, Path(temp), ["toy", args.aligned], args.out / "eval_page.png")
        if args.board and not args.only_campaign:
            eval_page(browser, Path(temp) / "board", [], args.out / "eval_board_page.png",
                      args.board)
        browser.close()
    print(f"wrote the pages' screenshots to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
