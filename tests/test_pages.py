"""What a person sees on the two pages, and what both share (pages/shared.py): small images
enlarged to fill their frame without blur, refusals as a line of text rather than error
badges, one port rule for both commands, and bounded names."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from PIL import Image

from cli.errors import DataError
from data.pairs import decode_image
from data.prompts import Prompt
from eval.app import build_app, launch_options
from eval.blind import BlindEval
from eval.config import Sampling
from eval.votes import VoteStore
from pages.shared import (
    FIRST_PORT,
    FRAME_PX,
    MAX_NAME,
    PageImages,
    check_name,
    enlarge,
    launch_page,
    pick_port,
    port_free,
    scale_for,
)
from tests.helpers import serving

# -- plain functions ---------------------------------------------------------------------


def noise(size: int, seed: int = 0) -> np.ndarray:
    """An image whose every pixel differs from its neighbours: blur would show."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_a_small_image_is_enlarged_by_an_integer_factor_pixel_for_pixel():
    small = noise(32)
    assert scale_for(32, 32) == FRAME_PX // 32 == 12
    big = enlarge(small)
    assert big.shape == (384, 384, 3)
    assert np.array_equal(big[::12, ::12], small)  # each block is its source pixel...
    for dy in range(12):
        for dx in range(12):
            assert np.array_equal(big[dy::12, dx::12], small)  # ...all of it
    picture = enlarge(Image.fromarray(small))
    assert picture.size == (384, 384) and np.array_equal(np.asarray(picture), big)
    wide = enlarge(noise(64)[:32])  # 64 wide, 32 tall: the larger side sets the factor
    assert wide.shape == (6 * 32, 6 * 64, 3)


def test_an_image_as_large_as_the_frame_is_sent_as_it_is():
    for size in (FRAME_PX, 512, 1024):
        image = Image.fromarray(noise(8)).resize((size, size))
        assert enlarge(image) is image
    assert scale_for(300, 300) == 1 and scale_for(200, 200) == 2


def test_names_are_bounded_and_refuse_control_characters():
    assert check_name("  ann  ") == "ann"
    assert check_name("a" * MAX_NAME) == "a" * MAX_NAME
    assert check_name("Zoë 李 O'Neil-Smith") == "Zoë 李 O'Neil-Smith"
    assert check_name("\u0645\u06cc\u200c\u0631\u0648\u0645") == "می\u200cروم"  # ZWNJ
    refused = {
        "": "Type your name first",
        "   ": "Type your name first",
        "a" * (MAX_NAME + 1): f"{MAX_NAME + 1} characters long: use at most {MAX_NAME}",
        "ann\nbob": "control character (U+000A)",
        "ann\tbob": "control character (U+0009)",
        "ann\x00": "control character (U+0000)",
        "\x1b[31mred": "control character (U+001B)",
        "ann\u202egnp.exe": "control character (U+202E)",  # a right-to-left override
    }
    for name, message in refused.items():
        with pytest.raises(DataError, match=re.escape(message)) as caught:
            check_name(name)
        assert "\n" not in str(caught.value)


def test_names_are_letters_digits_spaces_and_a_little_punctuation():
    """Markup in a name would reach every page that shows it: refused at entry, with the
    rule in one line; names in any script still work."""
    for name in ("Zoë 李 O'Neil-Smith", "anne_b.2", "José María", "Ｔａｒｏ", "हिन्दी",
                 "O’Brien", "می‌روم"):
        assert check_name(name) == name
    for name, char in (("![t](http://127.0.0.1:1/x.png)", "!"), ("<img src=x>", "<"),
                       ("[x](y)", "["), ("a*b", "*"), ("ann@example.org", "@"),
                       ("`code`", "`"), ("a&amp;b", "&"), ("50%", "%")):
        with pytest.raises(DataError, match=re.escape(f'"{char}"')) as caught:
            check_name(name)
        message = str(caught.value)
        assert "letters, digits, spaces and - _ . '" in message and "\n" not in message


@contextmanager
def listening(port: int = 0):
    """A socket listening on 127.0.0.1:`port` (0: any free port); yields the port.
    If `port` is taken already, something else listens there: it is busy either way."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        port = holder.getsockname()[1]
    except OSError:
        assert port and not port_free("127.0.0.1", port)
    try:
        yield port
    finally:
        holder.close()


def test_one_port_rule_the_given_port_or_the_next_free_one():
    with listening() as busy:
        assert not port_free("127.0.0.1", busy)
        with pytest.raises(DataError, match=rf"port {busy} is in use.*--port"):
            pick_port("127.0.0.1", busy)
    with listening(FIRST_PORT):
        chosen = pick_port("127.0.0.1", None)
        assert chosen > FIRST_PORT and port_free("127.0.0.1", chosen)
    with pytest.raises(DataError, match="--port"):
        pick_port("127.0.0.1", 70000)
    with pytest.raises(DataError, match="--host"):
        pick_port("no-such-host.invalid", None)


@pytest.mark.parametrize("asked", [False, True])
def test_a_port_taken_between_the_pick_and_the_start(asked):
    """Another server binds the port after `pick_port` chose it and before the page
    starts: a chosen port gives way to the next free one; an asked-for one is one line."""
    import gradio as gr

    with gr.Blocks() as demo:
        gr.Markdown("a page")
    port, holders = pick_port("127.0.0.1", None), []

    def launch(free: int) -> None:
        if not holders:  # the other server, first
            holders.append(socket.create_server(("127.0.0.1", free)))
        demo.launch(server_name="127.0.0.1", server_port=free, prevent_thread_lock=True,
                    quiet=True)

    try:
        if asked:
            with pytest.raises(DataError, match=rf"port {port} .* taken .*--port"):
                launch_page(launch, "127.0.0.1", port, asked=True)
            return
        served = launch_page(launch, "127.0.0.1", port, asked=False)
        assert served != port
        assert httpx.get(f"http://127.0.0.1:{served}/", timeout=30).status_code == 200
    finally:
        demo.close()
        holders[0].close()


# -- the commands ------------------------------------------------------------------------


def run(args: list[str], cwd, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("command", [["annotate"], ["eval", "--aligned", "toy"]])
def test_a_taken_port_is_one_line_naming_port_and_creates_nothing(command, tmp_path):
    with listening() as busy:
        out = run([*command, "--port", str(busy)], tmp_path)
    assert out.returncode == 1, out
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    assert f"port {busy} is in use" in out.stderr and "--port" in out.stderr
    assert "server_port" not in out.stderr and "GRADIO_SERVER_PORT" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # no store, no votes file, no image cache


def served_url(process: subprocess.Popen, log) -> str:
    """The URL a page command prints, read from its first line of output."""
    line = process.stdout.readline()
    match = re.search(r"(http://\S+?)/? ", line + " ")
    assert match, f"no URL in {line!r}; stderr: {log.read_text()[-2000:]}"
    return match.group(1)


@pytest.mark.parametrize("command", [
    ["annotate", "--buffer", "0"],
    ["eval", "--aligned", "toy", "--prompts", "prompts.txt", "--seeds", "1", "--steps", "1",
     "--images", "images"],
])
def test_without_port_a_page_takes_the_next_free_one_when_7860_is_taken(command, tmp_path):
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    log = tmp_path / "stderr.txt"
    with listening(FIRST_PORT), log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", *command], cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            url = served_url(process, log)
            port = int(url.rsplit(":", 1)[1].strip("/"))
            assert port != FIRST_PORT
            assert httpx.get(url, timeout=30).status_code == 200
        finally:
            process.terminate()
            process.wait(timeout=60)


# -- the pages in a browser --------------------------------------------------------------

# The size the browser draws an <img>'s picture at, inside its box, by CSS object-fit.
RENDERED = """element => {
  const box = element.getBoundingClientRect();
  const frame = element.closest('.block').getBoundingClientRect();
  const w = element.naturalWidth, h = element.naturalHeight;
  const fit = getComputedStyle(element).objectFit;
  let scale = {fill: null, none: 1, contain: Math.min(box.width / w, box.height / h),
               cover: Math.max(box.width / w, box.height / h)}[fit];
  if (fit === 'scale-down') scale = Math.min(1, box.width / w, box.height / h);
  const size = scale === null ? [box.width, box.height] : [w * scale, h * scale];
  return {width: size[0], height: size[1], frameWidth: frame.width,
          frameHeight: frame.height, natural: [w, h], fit: fit,
          rendering: getComputedStyle(element).imageRendering};
}"""


def shown_sharp_and_filling(page, selector: str, size: int = 32) -> np.ndarray:
    """The served pixels of the `size`-pixel image at `selector`, checked as a person
    sees them: drawn at least 8 times its size, filling 90% of its frame's limiting side;
    served as square blocks of one colour each; drawn without new (interpolated) colours.
    """
    img = page.locator(selector)
    shown = img.evaluate(RENDERED)
    fill = max(shown["width"] / shown["frameWidth"], shown["height"] / shown["frameHeight"])
    assert fill >= 0.9 and min(shown["width"], shown["height"]) >= 8 * size, shown
    served = Image.open(io.BytesIO(page.request.get(img.get_attribute("src")).body()))
    served = np.asarray(served.convert("RGB"))
    factor = served.shape[0] // size
    assert factor >= 8 and served.shape[:2] == (size * factor, size * factor), served.shape
    blocks = served[::factor, ::factor]
    assert np.array_equal(served, blocks.repeat(factor, 0).repeat(factor, 1))
    on_screen = np.asarray(Image.open(io.BytesIO(img.screenshot())).convert("RGB"))
    colours = {tuple(c) for c in on_screen.reshape(-1, 3)}
    assert len(colours) <= len({tuple(c) for c in blocks.reshape(-1, 3)}) + 2, len(colours)
    return blocks


def no_error_badge(page, *selectors: str) -> None:
    for selector in selectors:
        assert page.locator(f"{selector} .error").count() == 0
        assert "Error" not in page.inner_text(selector)


@pytest.fixture(scope="module")
def annotate_app(tmp_path_factory):
    from annotate.config import PageConfig
    from annotate.serve import open_app

    folder = tmp_path_factory.mktemp("pages-annotate")
    server = open_app(PageConfig(db=folder / "prefs.duckdb", steps=2,
                                seed=0, buffer=0))
    with serving(server.demo) as url:
        yield server, url
    server.close()


def test_annotate_a_missing_name_is_a_line_of_text_not_error_badges(browser, annotate_app):
    _, url = annotate_app
    page = browser.new_page()
    page.goto(url)
    page.locator("#prompt textarea").fill("a red circle")
    page.locator("#generate").click()
    page.get_by_text("Type your name first").wait_for(timeout=30_000)
    assert page.locator("#note").get_by_text("Type your name first").is_visible()
    time.sleep(0.5)  # an error status would have arrived with the answer
    no_error_badge(page, "#left-image", "#right-image")
    assert page.locator("#left-image img, #right-image img").count() == 0
    assert page.locator("#vote-left").is_disabled()
    page.locator("#name textarea").fill("x" * (MAX_NAME + 1))
    page.locator("#generate").click()
    page.get_by_text(f"use at most {MAX_NAME}").wait_for(timeout=30_000)
    no_error_badge(page, "#left-image", "#right-image")
    page.close()


def test_annotate_shows_the_32px_pair_filling_its_frames_sharp(browser, annotate_app):
    server, url = annotate_app
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.locator("#name textarea").fill("pages")
    page.locator("#prompt textarea").fill("a red circle")
    page.locator("#generate").click()
    page.wait_for_function(LOADED, arg="#left-image img, #right-image img", timeout=120_000)
    shown = [shown_sharp_and_filling(page, f"#{side}-image img") for side in ("left", "right")]
    no_error_badge(page, "#left-image", "#right-image")
    page.locator("#vote-left").click()
    page.wait_for_function("() => document.querySelector('#tally').innerText"
                           ".includes('today: 1')", timeout=60_000)
    [ranking] = server.store.rankings("user_id = ?", [server.store.user_id("pages")])
    uids = (ranking.image_0_uid, ranking.image_1_uid)
    jpgs = server.store.image_jpgs(list(uids))
    for side, blocks in enumerate(shown):  # the store keeps each image as generated
        jpg = jpgs[uids[ranking.shown_left if side == 0 else 1 - ranking.shown_left]]
        stored = decode_image(jpg)
        assert jpg[:2] == b"\xff\xd8" and stored.size == (32, 32)
        assert np.abs(np.asarray(stored, float) - blocks).mean() < 8  # JPEG's loss only
    page.close()


LOADED = """selector => [...document.querySelectorAll(selector)]
  .filter(i => i.complete && i.naturalWidth).length === 2"""


@pytest.fixture()
def eval_page(tmp_path):
    """The blind page over hand-made 32x32 images (noise, so blur would show)."""
    prompts = [Prompt("a red circle", "circle")]
    images = {}
    for k, model in enumerate(("base-m", "aligned-m")):
        (tmp_path / model).mkdir()
        path = tmp_path / model / "0.png"
        Image.fromarray(noise(32, seed=k)).save(path)
        images[model] = {("a red circle", 0): path}
    votes = VoteStore(tmp_path / "votes.duckdb")
    blind = BlindEval(["base-m", "aligned-m"], prompts, Sampling(seeds=1), images, votes)
    options = {k: v for k, v in launch_options("127.0.0.1", None).items()
               if k not in ("server_name", "server_port")}
    with serving(build_app(blind), **options) as url:
        yield url, blind, images
    votes.close()


def test_eval_shows_the_32px_pair_filling_its_frames_sharp(browser, eval_page):
    url, _, images = eval_page
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_function(LOADED, arg="#eval-image-a img, #eval-image-b img", timeout=60_000)
    sources = [np.asarray(Image.open(paths[("a red circle", 0)]))
               for paths in images.values()]
    shown = [shown_sharp_and_filling(page, f"#eval-image-{side} img") for side in "ab"]
    assert sorted(s.tobytes() for s in shown) == sorted(s.tobytes() for s in sources)
    page.close()


def test_eval_a_bad_voter_name_is_refused_in_one_line_and_stores_nothing(browser, eval_page):
    url, blind, _ = eval_page
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("() => document.querySelector('#eval-vote-a')?.disabled === false",
                           timeout=60_000)
    page.fill("#eval-voter input, #eval-voter textarea", "v" * (MAX_NAME + 1))
    page.click("#eval-vote-a")
    page.get_by_text(f"use at most {MAX_NAME}").wait_for(timeout=30_000)
    assert blind.votes.votes() == []
    assert page.inner_text("#eval-reveal").strip() == ""
    page.close()


def test_page_image_files_are_fresh_unmarked_and_an_old_one_goes_as_new_ones_come():
    """A long campaign's page writes two files a vote: disk use stays that of the last
    `keep_s` seconds."""
    import os

    images = PageImages("test-shown-", keep_s=1.0)
    try:
        old = images.write(Image.new("RGB", (8, 8), (255, 0, 0)))
        again = images.write(np.zeros((8, 8, 3), np.uint8))
        assert old != again and old.parent == images.folder == again.parent
        with Image.open(old) as image:
            assert image.format == "PNG" and image.info == {}
        os.utime(old, (time.time() - 5, time.time() - 5))  # written 5 s ago
        time.sleep(0.15)  # sweeps come at most every keep_s / 10
        new = images.write(Image.new("RGB", (8, 8)))
        assert not old.exists() and again.exists() and new.exists()
    finally:
        images.close()
    assert not images.folder.exists()

