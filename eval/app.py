"""The blind A/B page: layout and wiring only; the logic is eval/blind.py's.

Every event is private (`api_visibility="private"`: hidden from API clients), and none
returns anything that names a model before `BlindEval.vote` has committed the vote.
The pair id travels in `gr.State`, which stays on the server.
"""

from __future__ import annotations

import gradio as gr

from cli.errors import DataError
from data.stats import percent
from data.store import QUESTIONS
from eval.blind import BlindEval, Progress, Reveal
from eval.stats import Tally
from pages.shared import FRAME_PX, check_name, markdown_literal, server_options

IDS = {"A": "eval-vote-a", "B": "eval-vote-b", "tie": "eval-vote-tie", "both_bad": "eval-vote-bad"}
LABELS = {"A": "A is better  [a / ←]", "B": "B is better  [b / →]", "tie": "Tie  [t / ↓]",
          "both_bad": "Both are bad  [x / ↑]"}
NEXT_LABEL = "Next pair  [n / Enter]"

# Keyboard shortcuts: a click on the matching button, unless the key is typed into a
# text field (the voter's name) or the button is disabled.
HEAD = """
<script>
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  const target = event.target;
  if (target && (target.isContentEditable ||
                 ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
  if (event.key === "Enter" && target && target.tagName === "BUTTON") return;
  const ids = {a: "eval-vote-a", ArrowLeft: "eval-vote-a", b: "eval-vote-b",
               ArrowRight: "eval-vote-b", t: "eval-vote-tie", ArrowDown: "eval-vote-tie",
               x: "eval-vote-bad", ArrowUp: "eval-vote-bad", n: "eval-next", Enter: "eval-next"};
  const id = ids[event.key.length === 1 ? event.key.toLowerCase() : event.key];
  const button = id && document.getElementById(id);
  if (button && !button.disabled) {
    event.preventDefault();
    button.click();
  }
});
</script>
"""


def tally_text(tallies: dict[str, Tally]) -> str:
    """The running tally of every vote on this comparison, aligned over base."""
    t = tallies["all"]
    if t.n + t.both_bad == 0:
        return "**Tally, aligned over base:** no votes yet."
    wilson = "" if t.wilson is None else \
        f" (Wilson 95% {100 * t.wilson.low:.1f}-{100 * t.wilson.high:.1f}%)"
    total = t.n + t.both_bad
    return (f"**Tally, aligned over base:** {total} vote{'s' * (total != 1)}: {t.wins} aligned, "
            f"{t.losses} base, {t.ties} ties, {t.both_bad} both bad. Win rate "
            f"{percent(t.win_rate)}{wilson}; decisive {percent(t.decisive_win_rate)}; sign test "
            f"p = {t.sign_test_p:.3g}; the left image won {percent(t.left_win_rate)} of "
            f"{t.left_decisive_votes} decisive votes.")


def progress_text(progress: Progress, dealt_out: bool = False) -> str:
    """Where the image making is while it is not done; `dealt_out`: no pair is ready that
    this voter has not seen revealed, and why."""
    if progress.failed:
        done = " You have voted on each of them." if dealt_out and progress.pairs else ""
        return ("**Making images stopped** (the error is in the terminal that started this "
                f"page). {progress.pairs} of {progress.items} pairs can be shown.{done}")
    if progress.images >= progress.total:
        return "**You have voted on every pair of this comparison.** Thank you." \
            if dealt_out else ""
    if dealt_out and progress.pairs:
        waiting = ("you have voted on every pair ready so far: the next appears here as soon "
                   "as its images exist")
    elif not progress.pairs:
        waiting = "the first pair appears as soon as both its images exist"
    else:
        waiting = f"{progress.pairs} of {progress.items} pairs can be shown so far"
    return f"**Making images: {progress.images} of {progress.total}** ({waiting})."


def reveal_text(reveal: Reveal) -> str:
    """Which model made which image, and what the vote meant."""
    v = reveal.vote
    said = {"A": "A is better", "B": "B is better", "tie": "a tie",
            "both_bad": "both are bad"}[v.choice]
    winner = {v.side_a: reveal.name_a, reveal.side_b: reveal.name_b}.get(v.outcome)
    name_a, model_a, name_b, model_b = map(markdown_literal, (
        reveal.name_a, reveal.model_a, reveal.name_b, reveal.model_b))
    meaning = f"a win for {markdown_literal(winner)}" if winner else \
        {"tie": "a tie", "both_bad": "no preference (both bad)"}[v.outcome]
    return (f"**Image A: {name_a}** ({model_a}) · **Image B: {name_b}** ({model_b}). "
            f"You said {said}: {meaning}.")


def board_text(matchups: list[tuple[str, str, int]]) -> str:
    """How the board's votes so far fall on its matchups."""
    voted = [f"{markdown_literal(a)} v {markdown_literal(b)}: {n}" for a, b, n in matchups if n]
    return ("**Votes per matchup** (each pair is drawn from the closest-rated matchup with "
            "the fewest votes): " + ("; ".join(voted) if voted else "none yet") + ".")


TALLY_CHOICES = [("All voters", "all"), ("Your votes", "mine")]


def standing_text(blind: BlindEval, voter: str | None = None) -> str:
    """The running tally of a two-model comparison (of every voter, or of `voter`); a
    board's votes per matchup."""
    if blind.is_board:
        return board_text(blind.matchup_votes())
    if voter is not None and not voter.strip():
        return "Type your name to see the tally of your votes."
    mine = voter is not None
    text = tally_text(blind.tallies(voter.strip() if mine else None))
    return (f"**Your votes** ({markdown_literal(voter.strip())}): " if mine else "") + text


def build_app(blind: BlindEval, voter: str | None = None, auth: bool = False) -> gr.Blocks:
    """The page for one comparison or board. `voter`: a fixed name; `auth`: the login
    names the voter; otherwise the page asks."""
    gr.set_static_paths([blind.showings.folder])  # each showing's own files, served as they are
    with gr.Blocks(title="Blind A/B evaluation") as demo:
        asked = ("Which image is better for its prompt?" if blind.question == "preference"
                 else QUESTIONS[blind.question])
        gr.Markdown(f"## {asked}\nThe two models' images are "
                    "shown in random order; who made which is shown after you vote. "
                    "Shortcuts: **a** or **←** A is better, **b** or **→** B is better, "
                    "**t** or **↓** tie, **x** or **↑** both are bad, **n** or **Enter** "
                    "next pair.", elem_id="eval-help")
        with gr.Row(equal_height=True):
            prompt = gr.Markdown(elem_id="eval-prompt")
            name = gr.Textbox(value=voter or "", label="Your name (recorded with your votes)",
                              visible=voter is None and not auth, elem_id="eval-voter",
                              max_lines=1)
        pair_id = gr.State(None)
        progress = gr.Markdown(progress_text(blind.progress()), elem_id="eval-progress")
        waiting = gr.Timer(1.0, active=False)  # polls for a first pair while images are made
        with gr.Row():
            image_a = gr.Image(label="A", interactive=False, format="png", buttons=[],
                               height=FRAME_PX, elem_id="eval-image-a")
            image_b = gr.Image(label="B", interactive=False, format="png", buttons=[],
                               height=FRAME_PX, elem_id="eval-image-b")
        with gr.Row():
            buttons = {c: gr.Button(LABELS[c], elem_id=IDS[c], interactive=False,
                                    variant="primary" if c in ("A", "B") else "secondary")
                       for c in IDS}
        reveal = gr.Markdown(elem_id="eval-reveal")
        next_button = gr.Button(NEXT_LABEL, elem_id="eval-next", interactive=False,
                                variant="primary")
        tally = gr.Markdown(standing_text(blind), elem_id="eval-tally")
        tally_of = gr.Radio(TALLY_CHOICES, value="all", label="Tally of",
                            elem_id="eval-tally-of", visible=not blind.is_board)

        def who(voter_name: str, request: gr.Request) -> str:
            return request.username if auth else voter_name.strip()

        def standing(voter_name: str, scope: str, request: gr.Request) -> str:
            return standing_text(blind, who(voter_name, request) if scope == "mine" else None)

        tally_of.change(standing, [name, tally_of], tally, api_visibility="private")

        def show(voter_name: str, scope: str, request: gr.Request):
            voter_name = who(voter_name, request)
            pair = blind.deal(voter_name)
            made = blind.progress()
            status = progress_text(made, dealt_out=pair is None)
            if pair is None:  # polls while images are made: an unseen pair may come
                return (None, "", None, None, "", *[gr.Button(interactive=False)] * len(buttons),
                        gr.Button(interactive=False), standing(voter_name, scope, request),
                        status, gr.Timer(active=not made.failed and made.images < made.total))
            shown = blind.show(pair)
            prompt_line = f"### {markdown_literal(shown.prompt)}"
            return (shown.pair_id, prompt_line, shown.image_a, shown.image_b,
                    "", *[gr.Button(interactive=True)] * len(buttons),
                    gr.Button(interactive=False), standing(voter_name, scope, request),
                    status, gr.Timer(active=False))

        def show_when_ready(current: str | None, voter_name: str, scope: str,
                            request: gr.Request):
            if current is not None:  # a pair is on the page already
                return (gr.skip(),) * (len(shown_outputs) - 1) + (gr.Timer(active=False),)
            return show(voter_name, scope, request)

        shown_outputs = [pair_id, prompt, image_a, image_b, reveal, *buttons.values(),
                         next_button, tally, progress, waiting]
        demo.load(show, [name, tally_of], shown_outputs, api_visibility="private")
        next_button.click(show, [name, tally_of], shown_outputs, api_visibility="private")
        waiting.tick(show_when_ready, [pair_id, name, tally_of], shown_outputs,
                     api_visibility="private")

        def voter_for(choice: str):
            def vote(current: str | None, voter_name: str, scope: str, request: gr.Request):
                try:
                    voter_name = who(voter_name, request)
                    revealed = blind.vote(current or "", check_name(voter_name), choice)
                except DataError as error:  # the pair stays to vote on; Next deals another
                    gr.Warning(str(error))
                    return (*(gr.skip(),) * (len(buttons) + 1), gr.Button(interactive=True),
                            gr.skip())
                return (reveal_text(revealed), *[gr.Button(interactive=False)] * len(buttons),
                        gr.Button(interactive=True), standing(voter_name, scope, request))
            return vote

        for choice, button in buttons.items():
            button.click(voter_for(choice), [pair_id, name, tally_of],
                         [reveal, *buttons.values(), next_button, tally],
                         api_visibility="private", concurrency_limit=None)
    return demo


def launch_options(host: str, port: int | None) -> dict:
    """How the page is served: the shortcuts' script, no run history kept in the browser,
    and nothing served beside the page (`server_options`)."""
    return {"server_name": host, "server_port": port, "head": HEAD, "run_history": False,
            "footer_links": ["gradio", "settings"], **server_options()}
