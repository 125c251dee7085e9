"""A campaign served for real: three logins vote in a browser on overlapping pairs, and
the campaign page and `data stats` give the figures a hand computation gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from annotate.config import PageConfig
from annotate.serve import open_app
from data.pairs import decode_image
from data.stats import format_stats, store_stats
from data.store import stable_id
from tests.helpers import serving

PROMPTS = ["a red circle", "a blue square"]
GOLD_PROMPT = "gold check: which one is green?"
GREEN, BLACK = (0, 200, 0), (0, 0, 0)
# What each annotator says of the two shared pairs, in storage order (image 0, image 1),
# and whether they answer gold pairs right. Worked by hand from these votes:
#   P1 {tie, 0, 0}, P2 {tie, 1, 1}: coincidences o00 = o11 = 1, o0t = ot0 = o1t = ot1 = 1,
#   n0 = n1 = nt = 2, n = 6; alpha = 1 - (n - 1) * 4 / (36 - 12) = 1/6 = 0.167
#   pairwise: one agreeing pair of three per pair = 2/6 = 33%
#   ann agrees with 0 of 4 others' votes, bea with 2 of 4 (50%), cy 2 of 4 (50%)
PLAN = {"ann": ("tie", "tie"), "bea": (0, 1), "cy": (0, 1)}
GOLD_RIGHT = {"ann": True, "bea": False, "cy": True}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    folder = tmp_path_factory.mktemp("campaign")
    (folder / "logins.txt").write_text("ann:a-pass\nbea:b-pass\ncy:c-pass\n")
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    Image.new("RGB", (32, 32), GREEN).save(folder / "green.png")
    Image.new("RGB", (32, 32), BLACK).save(folder / "black.png")
    (folder / "gold.jsonl").write_text(
        f'{{"prompt": "{GOLD_PROMPT}", "better": "green.png", "worse": "black.png"}}\n')
    server = open_app(PageConfig(
        db=folder / "prefs.duckdb", steps=2, auth=folder / "logins.txt",
        prompts=folder / "prompts.txt", gold=folder / "gold.jsonl", gold_rate=0.4, seed=3,
        buffer=0, overlap=3, overlap_share=1.0))
    with serving(server.demo, auth=server.logins) as url:
        yield server, url
    server.close()


def log_in(browser, url: str, user: str, ready: str = "#generate"):
    page = browser.new_page()
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(f"{user[0]}-pass")
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector(ready, timeout=60_000)
    return page


def wait_for_pair(page, previous: str | None):
    page.wait_for_function(
        "(previous) => !document.querySelector('#vote-left').disabled"
        " && document.querySelectorAll('#left-image img, #right-image img').length === 2"
        " && document.querySelector('#left-image img').getAttribute('src') !== previous",
        arg=previous, timeout=60_000)
    return page.locator("#left-image img").get_attribute("src")


def picture(page, side: str) -> np.ndarray:
    src = page.locator(f"#{side}-image img").get_attribute("src")
    image = Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")
    return np.asarray(image.resize((32, 32), Image.Resampling.NEAREST), float)


def left_is_image_0(server, prompt: str, left: np.ndarray) -> bool:
    """Whether the left picture is image 0 of the stored pair for `prompt` (ann's vote
    stored it first), told by its pixels."""
    [ranking] = server.store.rankings(
        "caption = ? AND user_id = ? AND question = 'preference'",
        [prompt, stable_id("user:ann")])
    jpgs = server.store.image_jpgs([ranking.image_0_uid, ranking.image_1_uid])
    distance = [np.abs(np.asarray(decode_image(jpgs[uid]), float) - left).mean()
                for uid in (ranking.image_0_uid, ranking.image_1_uid)]
    assert min(distance) < 8 < max(distance), distance
    return distance[0] < distance[1]


def vote_through_the_page(browser, url, server, user: str) -> dict:
    """Log in, take pairs from the prompt set, vote as PLAN says; what was answered."""
    page = log_in(browser, url, user)
    page.get_by_text("Auto: next prompt from the prompt set").click()
    page.locator("#generate").click()
    shown, gold, previous = 0, 0, None
    while shown < 2:
        previous = wait_for_pair(page, previous)
        prompt = page.locator("#shown-prompt textarea").input_value()
        left = picture(page, "left")
        if prompt == GOLD_PROMPT:
            left_green = left[..., 1].mean() > 100
            right_answer = "left" if left_green else "right"
            wrong = "right" if left_green else "left"
            page.locator(f"#vote-{right_answer if GOLD_RIGHT[user] else wrong}").click()
            gold += 1
            continue
        assert prompt == PROMPTS[shown]  # the shared pairs, oldest first
        said = PLAN[user][shown]
        if said == "tie":
            page.locator("#vote-tie").click()
        else:
            on_left = 0 if left_is_image_0(server, prompt, left) else 1
            page.locator(f"#vote-{'left' if said == on_left else 'right'}").click()
        shown += 1
    page.wait_for_function(  # the last vote is stored
        f"() => document.querySelector('#tally').innerText.includes('total: {2 + gold}')",
        timeout=60_000)
    page.close()
    return {"gold": gold}


def test_three_annotators_on_shared_pairs_and_the_campaign_page(browser, campaign):
    server, url = campaign
    answered = {user: vote_through_the_page(browser, url, server, user) for user in PLAN}

    # every vote is stored under the login that cast it
    for user, seen in answered.items():
        rows = server.store.rankings("user_id = ?", [stable_id(f"user:{user}")])
        assert len(rows) == 2 + seen["gold"]
        shared = [r for r in rows if not r.is_gold]
        assert [r.caption for r in shared] == PROMPTS
    stats = store_stats(server.store)
    crowd = stats.crowd
    assert crowd.alpha == pytest.approx(1 / 6) and crowd.agreement == pytest.approx(2 / 6)
    by = {a.name: a for a in crowd.annotators}
    assert (by["ann"].agreement, by["bea"].agreement, by["cy"].agreement) == (0, 0.5, 0.5)
    for user, seen in answered.items():
        right = seen["gold"] if GOLD_RIGHT[user] else 0
        assert (by[user].gold_right, by[user].gold_answered) == (right, seen["gold"])
    text = format_stats(stats)
    assert "Krippendorff's alpha 0.167" in text and "pairwise agreement 33.3%" in text
    assert server.store.overlap_progress() == (2, 2)

    # the campaign page, for its owner (the first login): the same figures
    page = log_in(browser, url + "campaign", "ann", "#campaign-summary")
    summary = page.locator("#campaign-summary")
    summary.get_by_text("Krippendorff's alpha").wait_for(timeout=60_000)
    assert "alpha 0.167" in summary.inner_text()
    assert "pairwise 33%" in summary.inner_text()
    assert "2 complete of 2 started" in summary.inner_text()
    cells = [line for line in page.locator("#campaign-annotators").inner_text().splitlines()
             if line.strip()]
    for user, seen in answered.items():
        at = cells.index(user)  # then votes, agreement, compared, gold accuracy, ...
        gold = "n/a" if not seen["gold"] else ("100%" if GOLD_RIGHT[user] else "0%")
        agreement = "0%" if user == "ann" else "50%"
        assert cells[at + 1:at + 5] == [str(2 + seen["gold"]), agreement, "4", gold], cells
    page.set_viewport_size({"width": 1280, "height": 1100})
    page.screenshot(path=str(server.store.path.parent / "campaign.png"), full_page=True)
    page.close()
    # another login sees none of it
    other = log_in(browser, url + "campaign", "bea", "#campaign-summary")
    other.get_by_text("This page is for the campaign's owner").wait_for(timeout=60_000)
    assert "alpha" not in other.locator("#campaign-summary").inner_text()
    other.close()


def test_the_three_questions_through_the_page_api(tmp_path):
    from gradio_client import Client

    server = open_app(PageConfig(db=tmp_path / "prefs.duckdb", steps=2,
                                buffer=0, questions=3, min_display_ms=0))
    with serving(server.demo) as url:
        client = Client(url, verbose=False)
        shown = client.predict("ann", "a red circle", "new", api_name="/generate")
        refused = client.predict("ann", "new", shown[3], "left", None, api_name="/vote_left")
        assert "Answer every question first" in refused[5]
        assert server.store.counts()["rankings"] == 0
        after = client.predict("ann", "new", shown[3], "right", "tie", api_name="/vote_left")
        assert after[3] != shown[3] and after[-2:] == (None, None)  # fresh, unanswered
    rows = {r.question: r for r in server.store.rankings()}
    server.close()
    assert sorted(rows) == ["alignment", "appeal", "preference"]
    assert rows["preference"].outcome == "left" and rows["appeal"].outcome == "right"
    assert rows["alignment"].outcome == "tie"
    assert {r.user_id for r in rows.values()} == {stable_id("user:ann")}


@pytest.fixture
def listener():
    """An HTTP server on 127.0.0.1 that records every path requested of it."""
    import http.server
    import threading

    seen: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's name is http.server's)
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_names_holding_markup_are_shown_as_text_on_the_campaign_page(browser, tmp_path,
                                                                    listener):
    """Names a store may hold from before names were checked: Markdown and HTML that would
    make the owner's browser fetch a URL. The page shows them literally and fetches none."""
    from data.store import Store
    from tests.helpers import record

    base, seen = listener
    names = [f"![t]({base}/markdown.png)", f'<img src="{base}/html.png">',
             f"[x]({base}/link) & <b>bold</b> *em* `code` O'Neil"]
    with Store(tmp_path / "prefs.duckdb") as store:
        for name in names:  # flagged: ten votes each, each a quick look
            for k in range(10):
                record(store, f"prompt {k}", "left", user=name, dwell_ms=100)
    server = open_app(PageConfig(db=tmp_path / "prefs.duckdb", steps=2,
                                buffer=0))
    try:
        with serving(server.demo) as url:
            page = browser.new_page()
            page.goto(url + "campaign")
            flagged = page.locator("#campaign-flagged")
            flagged.get_by_text("Flagged annotators: 3").wait_for(timeout=60_000)
            page.locator("#campaign-annotators").get_by_text(names[0]).wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # a fetch the page would make is made by now
            shown, html = flagged.inner_text(), flagged.inner_html()
            table = page.locator("#campaign-annotators").inner_text()
            markup = page.locator("#campaign-flagged img, #campaign-flagged a, "
                                  "#campaign-flagged b, #campaign-flagged li em, "
                                  "#campaign-flagged li code").count()
            page.close()
    finally:
        server.close()
    assert seen == []
    for name in names:
        assert f"{name}: median look 0.1 s" in shown, shown
        assert name in table
    assert markup == 0, html
