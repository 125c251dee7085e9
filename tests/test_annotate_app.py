"""The annotate page, served for real: a browser, concurrent API clients, and logins."""

from __future__ import annotations

import io
import threading

import httpx
import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from annotate.serve import AppConfig, open_app
from data.pairs import decode_image
from data.store import stable_id
from models.generate import PairVariety
from tests.helpers import serving

RED = "a red circle on a white background"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The page on the toy model (2 steps: only the plumbing is under test here)."""
    folder = tmp_path_factory.mktemp("annotate")
    server = open_app(AppConfig(db=folder / "prefs.duckdb", variety=PairVariety(steps=2),
                                seed=0, buffer=2))
    with serving(server.demo) as url:
        yield server, url
    server.close()


def user_rankings(server, name):
    return server.store.rankings("user_id = ?", [stable_id(f"user:{name}")])


# -- the browser -----------------------------------------------------------------------


def wait_for_pair(page):
    page.wait_for_function(
        "() => !document.querySelector('#vote-left').disabled"
        " && document.querySelectorAll('#left-image img, #right-image img').length === 2",
        timeout=60_000,
    )


def shown_images(page) -> tuple[Image.Image, Image.Image]:
    """The pixels the page shows on the left and on the right."""
    pictures = []
    for side in ("left", "right"):
        src = page.locator(f"#{side}-image img").get_attribute("src")
        pictures.append(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
    return pictures[0], pictures[1]


def stored_index(server, ranking, picture: Image.Image) -> int:
    """Which of the ranking's two stored images (0 or 1) looks like `picture`."""
    jpgs = server.store.image_jpgs([ranking.image_0_uid, ranking.image_1_uid])
    stored = [decode_image(jpgs[uid]) for uid in (ranking.image_0_uid, ranking.image_1_uid)]
    picture = picture.resize(stored[0].size, Image.Resampling.NEAREST)  # sent enlarged
    distance = [np.abs(np.asarray(image, float) - np.asarray(picture, float)).mean()
                for image in stored]
    assert min(distance) < 8 < max(distance), distance  # one matches, the other does not
    return int(np.argmin(distance))


def test_a_person_votes_with_the_mouse_then_the_keyboard(browser, app):
    server, url = app
    page = browser.new_page()
    page.goto(url)
    page.locator("#name textarea").fill("ann")
    assert page.locator("#vote-left").is_disabled()  # nothing to vote on yet
    page.locator("#prompt textarea").fill(RED)
    page.locator("#generate").click()
    wait_for_pair(page)
    first = shown_images(page)
    first_src = page.locator("#left-image img").get_attribute("src")
    assert page.get_by_text("Keys: ← left is better").is_visible()

    page.locator("#vote-left").click()
    page.wait_for_function(
        f"() => document.querySelector('#left-image img')?.getAttribute('src') !== "
        f"'{first_src}' && document.querySelector('#tally').innerText.includes('today: 1')",
        timeout=60_000)
    wait_for_pair(page)
    second = shown_images(page)
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "() => document.querySelector('#tally').innerText.includes('today: 2')",
        timeout=60_000)

    mouse, keyboard = user_rankings(server, "ann")  # exactly these two, oldest first
    assert (mouse.outcome, keyboard.outcome) == ("left", "right")
    for ranking, (left, right) in ((mouse, first), (keyboard, second)):
        assert ranking.caption == RED and ranking.source == "human"
        assert ranking.shown_left == stored_index(server, ranking, left)
        assert 1 - ranking.shown_left == stored_index(server, ranking, right)
    assert mouse.best_image_uid == (mouse.image_0_uid, mouse.image_1_uid)[mouse.shown_left]
    assert keyboard.best_image_uid == (
        keyboard.image_0_uid, keyboard.image_1_uid)[1 - keyboard.shown_left]
    assert {mouse.label_0, mouse.label_1} == {0.0, 1.0}
    page.close()


def test_markup_in_a_prompt_is_shown_as_text_and_stored_verbatim(browser, app):
    server, url = app
    prompt = ('<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
              " <b>a red circle</b> & friends")
    page = browser.new_page()
    page.goto(url)
    page.locator("#name textarea").fill("mallory")
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()
    wait_for_pair(page)
    assert page.locator("#shown-prompt textarea").input_value() == prompt
    assert page.evaluate("() => window.__pwned === undefined")
    assert page.locator("b, #shown-prompt script, #shown-prompt img").count() == 0
    page.locator("#vote-tie").click()
    page.wait_for_function(
        "() => document.querySelector('#tally').innerText.includes('today: 1')")
    [ranking] = user_rankings(server, "mallory")
    assert ranking.caption == prompt and ranking.outcome == "tie"
    assert page.evaluate("() => window.__pwned === undefined")
    page.close()


def test_an_empty_prompt_is_refused_with_a_message(browser, app):
    _, url = app
    page = browser.new_page()
    page.goto(url)
    page.locator("#name textarea").fill("ann")
    page.locator("#generate").click()
    page.get_by_text("The prompt is empty: type what the images should show.").wait_for()
    assert page.locator("#vote-left").is_disabled()
    page.close()


# -- API clients -----------------------------------------------------------------------


def test_sixteen_concurrent_sessions_each_vote_ten_times_under_their_own_names(app):
    server, url = app
    before = server.store.counts()["rankings"]
    outcomes = ["left", "right", "tie", "both_bad", "skip"]
    errors = []

    def annotate(k: int) -> None:
        try:
            client = Client(url, verbose=False)
            name, prompt = f"client-{k}", f"{RED} number {k}"
            client.predict(name, prompt, "new", api_name="/generate")
            for v in range(10):
                result = client.predict(name, "new", api_name=f"/vote_{outcomes[(k + v) % 5]}")
                assert result[2] == prompt  # the next pair is for this session's prompt
        except Exception as error:  # reported below, with the session
            errors.append(f"client-{k}: {error!r}")

    threads = [threading.Thread(target=annotate, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert errors == []
    assert server.store.counts()["rankings"] - before == 160
    for k in range(16):
        rankings = user_rankings(server, f"client-{k}")
        assert len(rankings) == 10
        assert {r.caption for r in rankings} == {f"{RED} number {k}"}
        assert [r.outcome for r in rankings] == [outcomes[(k + v) % 5] for v in range(10)]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotate-auth")
    logins = folder / "logins.txt"
    logins.write_text("alice:wonderland\nbob:builder\n")
    server = open_app(AppConfig(db=folder / "prefs.duckdb", variety=PairVariety(steps=2),
                                auth=logins, buffer=0))
    with serving(server.demo, auth=server.logins) as url:
        yield server, url
    server.close()


def test_without_a_login_there_is_no_image_and_no_vote(guarded):
    server, url = guarded
    with pytest.raises(Exception, match="(?i)login|auth|401|403"):
        Client(url, verbose=False)
    with pytest.raises(Exception, match="(?i)login|auth|401|403"):
        Client(url, auth=("alice", "wrong"), verbose=False)
    for endpoint in ("generate", "vote_left"):
        response = httpx.post(f"{url}gradio_api/call/{endpoint}",
                              json={"data": ["eve", RED, "new"]})
        assert response.status_code in (401, 403), response.text
    assert server.store.counts() == {"images": 0, "rankings": 0, "users": 0}


def test_with_a_login_the_user_id_comes_from_the_login_alone(guarded):
    server, url = guarded
    client = Client(url, auth=("alice", "wonderland"), verbose=False)
    client.predict("bob", RED, "new", api_name="/generate")  # the name field claims bob
    client.predict("bob", "new", api_name="/vote_left")
    [ranking] = server.store.rankings()
    assert ranking.user_id == stable_id("user:alice")
    names = server.store.cursor().execute("SELECT name FROM users").fetchall()
    assert names == [("alice",)]


def test_the_command_serves_the_toy_model_on_localhost_and_prints_the_url(tmp_path):
    import re
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "annotate", "--port", str(port)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        line = server.stdout.readline()
        url = re.search(r"open (http://\S+)", line).group(1)
        assert url == f"http://127.0.0.1:{port}/"
        assert "runs/prefs.duckdb" in line
        assert httpx.get(url, timeout=30).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert (tmp_path / "runs" / "prefs.duckdb").exists()
