"""The annotate page: layout and wiring only; the logic is in annotate/showings.py.

Every event's function takes the name box (ignored with a login: the user id then comes
from the login alone), the mode and the showing id held by the page, and answers with the
whole view: both images (enlarged for the page by `pages.shared.enlarge`, as files of a
`pages.shared.PageImages`), the prompt shown, the showing id, the tally, the note and the
vote buttons. The showing id is held by the page (a hidden textbox, not server-side
state), so a vote names the pair that was on screen when it was cast. A new pair comes
with its buttons off; `arm` turns them on once the pair has been shown for the minimum
display time. A request the server refuses (no name, an empty prompt, a stale or
too-soon vote, a vote not saved, a busy generator) is answered in the note, under the
prompt box, and leaves the rest of the view as it was, so a pair on screen stays there
and can still be voted on.
"""

from __future__ import annotations

import asyncio
import functools
import random
from pathlib import Path

import anyio
import gradio as gr
import pandas as pd
from PIL import Image

from annotate.campaign import ANNOTATOR_COLUMNS, campaign
from annotate.showings import ANSWERS, Annotator, Collector, Pending, Showing
from cli.errors import DataError, NotCounted, PageError
from data.store import QUESTIONS, ImageRecord
from pages.shared import FRAME_PX, PageImages, check_name, enlarge, scale_for

BUTTONS = [  # (outcome, label, key name shown, KeyboardEvent.key values)
    ("left", "Left is better", "←", ["ArrowLeft"]),
    ("right", "Right is better", "→", ["ArrowRight"]),
    ("tie", "Tie", "↓", ["ArrowDown"]),
    ("both_bad", "Both are bad", "↑", ["ArrowUp"]),
    ("skip", "Skip", "S", ["s", "S"]),
]
MODE_CHOICES = [
    ("New pair for this prompt", "new"),
    ("Keep the winner", "keep"),
    ("Auto: next prompt from the prompt set", "auto"),
]
ANSWER_CHOICES = [(answer.capitalize(), answer) for answer in ANSWERS]
_ERRORS = (PageError, DataError)
_REFUSED = NotCounted  # a note; the pair stays


def page_script() -> str:
    """Run once per page load: keys press the vote buttons (not while typing)."""
    keys = {key: f"vote-{outcome}" for outcome, _, _, names in BUTTONS for key in names}
    entries = ", ".join(f'"{key}": "{elem}"' for key, elem in keys.items())
    return f"""() => {{
  document.addEventListener("keydown", (event) => {{
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA"
                   || target.isContentEditable)) return;
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const id = {{{entries}}}[event.key];
    const button = id && document.getElementById(id);
    if (button && !button.disabled) {{ event.preventDefault(); button.click(); }}
  }});
}}"""


def shown_file(images: PageImages, picture: Image.Image, record: ImageRecord) -> Path:
    """The file the page shows for one image: the stored JPEG itself when it fills the
    frame (no encoding on the server), else the picture enlarged pixel by pixel (the
    toy's 32-64 px images, which a browser would blur)."""
    if scale_for(picture.width, picture.height) == 1:
        return images.write(record.jpg)
    return images.write(enlarge(picture))


def build(collector: Collector, images: PageImages, prompt_set: list[str] | None = None,
          auth: bool = False, cap: int | None = None,
          owners: frozenset[str] = frozenset(), mode: str = "new") -> gr.Blocks:
    """The page for one server, its images written to `images`; `auth` hides the name box
    (the login names the user); `mode` is what follows a vote until the annotator picks
    another. The campaign page (/campaign) shows the store's figures; with `auth`, to the
    logins in `owners` alone."""
    pick = random.Random()
    one_vote_at_a_time = anyio.CapacityLimiter(1)
    asked = [q for q in collector.settings.questions if q != "preference"]

    def who(name: str, request: gr.Request) -> Annotator:
        if auth:
            return collector.annotator(request.username)
        return collector.annotator(check_name(name))

    def view(annotator: Annotator, shown: Showing | None, note: str | None = None):
        tally = collector.tally(annotator).text(cap)
        cleared = [None] * len(asked)  # the other questions, unanswered for a new pair
        if shown is None:
            return (None, None, "", "", tally, note or "", *_buttons(False), *cleared)
        note = "\n\n".join(n for n in (note, shown.note) if n)
        left, right = (shown_file(images, picture, record) for picture, record in shown.sides)
        return (left, right, shown.prompt, shown.showing_id,
                tally, note, *_buttons(False), *cleared)  # until `arm`: shown long enough

    def generate(name, prompt, mode, request: gr.Request, progress=gr.Progress()):
        try:
            annotator = who(name, request)
            shown = collector.start(annotator, prompt or "", mode, _reporter(progress))
        except (_REFUSED, *_ERRORS) as error:
            return refused(error, len(asked))
        return view(annotator, shown)

    async def arm(showing_id: str):
        """The vote buttons on once the pair has been shown long enough (never off)."""
        wait = collector.display_wait(showing_id)
        if wait is None:
            return [gr.skip() for _ in BUTTONS]
        await asyncio.sleep(wait)
        return _buttons(True)

    def record(outcome, name, mode, showing_id, answers, request):
        """Store the vote and make what follows: the page's outputs, or, when the
        generator must make the next pair, a function that waits for it and returns them."""
        try:
            annotator = who(name, request)
            try:
                _, voted = collector.vote(annotator, showing_id, outcome, answers=answers)
            except _REFUSED as error:
                return refused(error, len(asked))
            if voted is None:  # a repeated vote: the page already moved on
                return (gr.skip(),) * (6 + len(BUTTONS) + len(asked))
            try:
                shown = collector.next_showing(annotator, voted, outcome, mode, wait=False)
            except _ERRORS as error:  # the vote is stored; say why nothing follows
                return view(annotator, None, f"Vote recorded. {error}")
        except _ERRORS as error:
            return refused(error, len(asked))
        if isinstance(shown, Pending):
            return lambda progress: finish(annotator, shown, progress)
        return view(annotator, shown)

    def finish(annotator: Annotator, pending: Pending, progress):
        try:
            return view(annotator, pending.finish(_reporter(progress)))
        except _ERRORS as error:
            return view(annotator, None, f"Vote recorded. {error}")

    async def cast(outcome, name, mode, showing_id, answers, request, progress):
        """A vote, recorded one at a time: each takes about 10 ms of CPU, and run side by
        side in Gradio's threads they fought over the GIL (12 annotators at once: 250 ms a
        vote instead of 35; docs/BENCHMARKS.md, "Pools"). A wait for the generator
        (seconds) happens outside that line, so it holds up no one else's vote."""
        out = await anyio.to_thread.run_sync(
            functools.partial(record, outcome, name, mode, showing_id, answers, request),
            limiter=one_vote_at_a_time)
        if callable(out):
            out = await anyio.to_thread.run_sync(out, progress)
        return out

    def voter(outcome: str):
        async def vote(name, mode, showing_id, request: gr.Request, progress=gr.Progress()):
            return await cast(outcome, name, mode, showing_id, {}, request, progress)

        async def vote_answered(name, mode, showing_id, appeal, alignment,
                                request: gr.Request, progress=gr.Progress()):
            answers = {"appeal": appeal, "alignment": alignment}
            return await cast(outcome, name, mode, showing_id, answers, request, progress)

        return vote_answered if asked else vote

    def from_set():
        if not prompt_set:
            return gr.skip(), "This server has no prompt set: start it with --prompts FILE."
        return pick.choice(prompt_set), ""

    with gr.Blocks(title="Which image is better?", delete_cache=(600, 3600)) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown("## Which image is better?\nType your name and a prompt, press "
                        "Generate, then pick the image you prefer.")
            tally = gr.Markdown(elem_id="tally")
        with gr.Row(equal_height=True):
            name = gr.Textbox(label="Your name", elem_id="name", visible=not auth, scale=1)
            prompt = gr.Textbox(label="Prompt", elem_id="prompt", scale=3,
                                placeholder="a red circle")
            generate_button = gr.Button("Generate", variant="primary", elem_id="generate",
                                        scale=1)
            set_button = gr.Button("Prompt from the set", elem_id="from-set", scale=1)
        note = gr.Markdown(elem_id="note")
        with gr.Row(equal_height=True):
            mode = gr.Radio(MODE_CHOICES, value=mode, label="After a vote", elem_id="mode",
                            scale=3)
            shown_prompt = gr.Textbox(label="Prompt shown", interactive=False,
                                      elem_id="shown-prompt", scale=2)
        with gr.Row():
            left = gr.Image(label="Left", interactive=False, elem_id="left-image",
                            format="png", height=FRAME_PX, buttons=[])
            right = gr.Image(label="Right", interactive=False, elem_id="right-image",
                             format="png", height=FRAME_PX, buttons=[])
        questions = [
            gr.Radio(ANSWER_CHOICES, value=None, label=QUESTIONS[q], elem_id=f"question-{q}")
            for q in asked
        ]
        if asked:
            gr.Markdown(f"**{QUESTIONS['preference']}** Answer the questions above, then "
                        "vote below: the vote sends all three.", elem_id="question-preference")
        with gr.Row():
            buttons = [
                gr.Button(f"{label} ({key})", elem_id=f"vote-{outcome}", interactive=False)
                for outcome, label, key, _ in BUTTONS
            ]
        gr.Markdown("Keys: ← left is better · → right is better · ↓ tie · "
                    "↑ both are bad · S skip", elem_id="shortcuts")
        showing_id = gr.Textbox("", visible=False, elem_id="showing-id")

        outputs = [left, right, shown_prompt, showing_id, tally, note, *buttons, *questions]
        events = dict(outputs=outputs, concurrency_limit=None, show_progress="full",
                      show_progress_on=[left, right])
        armed = dict(fn=arm, inputs=showing_id, outputs=buttons, concurrency_limit=None,
                     show_progress="hidden", api_visibility="private")
        gr.on([generate_button.click, prompt.submit], generate, [name, prompt, mode],
              api_name="generate", **events).then(**armed)
        for (outcome, *_), button in zip(BUTTONS, buttons, strict=True):
            button.click(voter(outcome), [name, mode, showing_id, *questions],
                         api_name=f"vote_{outcome}", **events).then(**armed)
        set_button.click(from_set, None, [prompt, note], api_visibility="private")
        demo.load(None, js=page_script())
    campaign_page(demo, collector, auth, owners)
    return demo


def campaign_page(demo: gr.Blocks, collector: Collector, auth: bool,
                  owners: frozenset[str]) -> None:
    """The /campaign page: progress, votes over time, agreement, the annotator table and
    the flagged, refreshed every 15 s and on the button."""
    with demo.route("Campaign", "/campaign") as page:
        gr.Markdown("## Campaign")
        summary = gr.Markdown(elem_id="campaign-summary")
        with gr.Row():
            votes = gr.BarPlot(x="time", y="votes", label="Votes over time",
                               elem_id="campaign-timeline", height=260)
            agreement = gr.BarPlot(x="annotator", y="agreement", color="flagged",
                                   color_map={"flagged": "#d62728",
                                              "not flagged": "#4c78a8"},
                                   label="Agreement with the other annotators (%)",
                                   elem_id="campaign-agreement", height=260, y_lim=[0, 100])
        table = gr.Dataframe(headers=ANNOTATOR_COLUMNS, interactive=False, wrap=True,
                             elem_id="campaign-annotators", label="Annotators")
        flagged = gr.Markdown(elem_id="campaign-flagged")
        refresh = gr.Button("Refresh", elem_id="campaign-refresh")
        timer = gr.Timer(15)

        def show(request: gr.Request):
            if auth and request.username not in owners:
                note = "This page is for the campaign's owner (`--owner`)."
                return note, None, None, None, ""
            seen = campaign(collector.store)
            series = pd.DataFrame(seen.timeline, columns=["time", "votes"])
            bars = pd.DataFrame(seen.agreement, columns=["annotator", "agreement", "flagged"])
            rows = pd.DataFrame(seen.annotators, columns=ANNOTATOR_COLUMNS)
            return (seen.summary, gr.BarPlot(series, label=f"Votes per {seen.bucket}"),
                    bars, rows, seen.flagged)

        outputs = [summary, votes, agreement, table, flagged]
        gr.on([page.load, refresh.click, timer.tick], show, None, outputs,
              api_name="campaign", show_progress="hidden")


def refused(error: Exception, questions: int = 0) -> tuple:
    """The answer to a refused request: its one line in the note, the rest unchanged
    (the images are not marked as errors, and a pair on screen can still be voted on)."""
    return (*[gr.skip()] * 5, str(error), *[gr.skip()] * (len(BUTTONS) + questions))


def _buttons(enabled: bool) -> list:
    return [gr.update(interactive=enabled) for _ in BUTTONS]


def _reporter(progress: gr.Progress):
    def report(text: str, fraction: float | None) -> None:
        progress(fraction, desc=text)

    return report
