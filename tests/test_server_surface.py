"""What both pages' servers answer beside the page itself.

Each command is started as a user starts it, with `--auth`, and asked over HTTP on
127.0.0.1: without a login it describes none of its endpoints (no FastAPI route list, no
API docs, no API description embedded in the login page); with a login the page and
its API still answer, and a file sent to Gradio's upload route is refused, nothing of it
written to Gradio's upload folder (no page has an upload component).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pages.shared import free_port

LOGIN = {"username": "alice", "password": "wonderland"}
MARK = b"upload-probe-5e1f"  # bytes no file under the upload folder may hold afterwards
URL = re.compile(r"(http://127\.0\.0\.1:\d+/)")

COMMANDS = {  # how a user starts each page (small, so the toy model makes little)
    "annotate": ["-m", "annotate", "--db", "prefs.duckdb", "--steps", "2", "--buffer", "0"],
    "eval": ["-m", "eval", "--aligned", "toy", "--prompts", "prompts.txt", "--seeds", "1",
             "--steps", "2", "--db", "votes.duckdb", "--images", "images"],
}


def first_url(process: subprocess.Popen, timeout: float = 180) -> str:
    """The URL the command prints once its page is up; the command's stderr if it dies."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout],
                     daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no URL within {timeout} s")
    found = URL.search(line)
    assert found, line + (process.stderr.read() if process.poll() is not None else "")
    return found.group(1)


@pytest.fixture(scope="module", params=list(COMMANDS))
def server(request, tmp_path_factory) -> Iterator[tuple[str, str, Path]]:
    """(page, url, Gradio's upload folder) of the command serving on 127.0.0.1 with a
    login file."""
    folder = tmp_path_factory.mktemp(request.param)
    (folder / "logins.txt").write_text("alice:wonderland\n")
    (folder / "prompts.txt").write_text("a red circle on a white background\n")
    uploads = folder / "gradio"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads)}
    process = subprocess.Popen(
        [sys.executable, *COMMANDS[request.param], "--auth", "logins.txt", "--port",
         str(free_port())], cwd=folder, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        yield request.param, first_url(process), uploads
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def embedded_api_info(html: str):
    """What the page's HTML embeds as `window.gradio_api_info` (None when it holds none)."""
    found = re.search(r"window\.gradio_api_info\s*=\s*(.*?);?</script>", html, re.S)
    return json.loads(found.group(1)) if found else None


def test_without_a_login_no_route_list_and_no_api_description(server):
    page, url, _ = server
    with httpx.Client(timeout=30) as anonymous:
        for path in ("openapi.json", "docs", "redoc", "docs/oauth2-redirect"):
            response = anonymous.get(url + path)
            assert response.status_code in (401, 404), (path, response.text[:200])
        for path in ("gradio_api/openapi.json", "gradio_api/info"):
            assert anonymous.get(url + path).status_code == 401, path
        login_page = anonymous.get(url)
    assert login_page.status_code == 200 and '"auth_required":true' in login_page.text
    assert not embedded_api_info(login_page.text), embedded_api_info(login_page.text)
    assert "named_endpoints" not in login_page.text and "/generate" not in login_page.text


def files_under(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_uploads_are_refused_and_nothing_is_written(server):
    page, url, uploads = server
    before = files_under(uploads) if uploads.exists() else {}
    probe = {"files": ("probe.png", MARK * 4096, "image/png")}
    with httpx.Client(timeout=30) as anonymous:
        assert anonymous.post(url + "gradio_api/upload", files=probe).status_code in (401, 403)
    with httpx.Client(timeout=30) as alice:
        assert alice.post(url + "login", data=LOGIN).status_code == 200
        # logged in, the page and its API description answer as before
        main = alice.get(url)
        assert main.status_code == 200 and '"auth_required":true' not in main.text
        info = alice.get(url + "gradio_api/info")
        assert info.status_code == 200 and "named_endpoints" in info.json()
        if page == "annotate":  # the annotate page's API, for scripted clients
            assert "/generate" in info.json()["named_endpoints"]
        for path in ("gradio_api/upload", "gradio_api/upload/"):
            refused = alice.post(url + path, files=probe, follow_redirects=True)
            assert refused.status_code in (403, 413), (path, refused.text[:200])
            assert "upload" in refused.text.lower()
    after = files_under(uploads) if uploads.exists() else {}
    assert set(after) == set(before), set(after) - set(before)
    assert not [p for p, data in after.items() if MARK in data]


def test_with_a_login_the_page_and_its_api_client_work(server, browser):
    """The blanked API description costs a logged-in person and client nothing."""
    page_name, url, _ = server
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.get_by_label("username").fill(LOGIN["username"])
    page.get_by_label("password").fill(LOGIN["password"])
    page.get_by_role("button", name="Login").click()
    control = {"annotate": "#generate", "eval": "#eval-next"}[page_name]
    page.locator(control).wait_for(timeout=60_000)  # the page itself, past the login
    if page_name == "annotate":  # and its second page, for the owner
        page.goto(url + "campaign")
        page.wait_for_function("() => document.querySelector('#campaign-summary')"
                               "?.innerText.trim()", timeout=60_000)
    assert not errors, errors
    page.close()
    if page_name == "annotate":  # scripted clients log in and see its endpoints
        from gradio_client import Client

        api = Client(url, auth=(LOGIN["username"], LOGIN["password"]), verbose=False)
        assert "/generate" in api.view_api(print_info=False, return_format="dict")[
            "named_endpoints"]
