"""What the two pages (`annotate` and `eval`) share: how an image is sent to the page,
which port a page takes, and what a typed name may be.

It lives beside both apps, in its own package, because the apps never import each other
(docs/ARCHITECTURE.md).
Nothing here imports Gradio.

- Images: a small image (the toy model's are 32x32) would show at its native size in a
  frame of `FRAME_PX` pixels. `enlarge` repeats each pixel into a square block (an
  integer factor, nearest neighbour), so the browser shows it as large as fits, at 1:1,
  with no interpolation to blur it. Only the copy sent to the page is enlarged; the
  store keeps the bytes as generated. The factor depends on the image's size alone, so
  on the blind page it says nothing about which model made an image.
- Image files: both pages hand Gradio image files (`PageImages`), never PIL images.
  Gradio caches a returned PIL image under its content hash and rewrites that file each
  time the same image is returned, so a second viewer of one image (an overlap pair, a
  gold pair) can fetch it mid-rewrite, empty or cut short. A returned file it copies
  into its cache under a temporary name and renames into place (the annotate page), or
  serves as it is from a static path (the blind eval page). Each file here is written
  once, under a fresh random name, with no metadata.
- Ports: `pick_port` is the one rule. With `--port`, that port, or a one-line error
  naming `--port` when it is taken; without, 7860 or the next free one. Commands call it
  before they open or create any file, so a taken port leaves nothing behind, and start
  the page through `launch_page`: a port another server takes in between is, when asked
  for, the same one-line error, and when chosen, given up for the next free one (two
  pages started at once both start).
- Logins: `read_logins` reads the `--auth` file both pages take.
- Serving: `server_options` closes what Gradio serves beside the page (uploads, the
  route list, the API description on the login page); both pages launch with it.
- Names: `check_name` bounds a typed annotator or voter name and keeps it to letters,
  digits, spaces and a little punctuation, with a one-line message; `markdown_literal`
  shows any user-given text (a name a store holds from before, a prompt) in Markdown as
  the text itself: no markup, no HTML, no image fetched.
"""

from __future__ import annotations

import errno
import re
import secrets
import shutil
import socket
import tempfile
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from cli.errors import DataError, DiskFullError, StoreWriteError

FRAME_PX = 400  # the height of each image frame on both pages
FIRST_PORT = 7860  # Gradio's default, and the first port tried without --port
PORT_TRIES = 100
PORT_HELP = f"port (default: {FIRST_PORT}, or the next free one when it is taken)"
MAX_NAME = 64
_ALLOWED_FORMAT = {"\u200c", "\u200d"}  # zero-width (non-)joiners, which some scripts need
_NAME_PUNCTUATION = "-_.'\u2019"  # \u2019: the typographic apostrophe (O\u2019Brien)
_NAME_RULE = "letters, digits, spaces and - _ . '"

Picture = TypeVar("Picture", Image.Image, np.ndarray)


def scale_for(width: int, height: int, frame: int = FRAME_PX) -> int:
    """The integer factor that makes an image as large as fits in `frame` (1: as it is)."""
    return max(1, frame // max(width, height, 1))


def enlarge(image: Picture, frame: int = FRAME_PX) -> Picture:
    """`image` with each pixel repeated into a `scale_for` square: a PIL image or an
    (H, W, C) array in, the same kind out. Images already as large as the frame are
    returned unchanged."""
    if isinstance(image, np.ndarray):
        factor = scale_for(image.shape[1], image.shape[0], frame)
        return image if factor == 1 else image.repeat(factor, 0).repeat(factor, 1)
    factor = scale_for(image.width, image.height, frame)
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


class PageImages:
    """A folder of the image files a page shows; `close` deletes it.

    With `keep_s`, files older than that are deleted as new ones are written: for a page
    whose files Gradio copies into its own cache as it answers, so that an old one is
    never read again. Without, the owner deletes each file once it is done with it."""

    def __init__(self, prefix: str, keep_s: float | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self.keep_s = keep_s
        self._swept = time.monotonic()

    def write(self, image: Image.Image | np.ndarray | bytes) -> Path:
        """`image` as a PNG under a fresh random name (no metadata travels with it); bytes
        are an encoded JPEG (the store's), written as they are: a 1024 px PNG takes about
        100 ms to encode, and the annotator then sees exactly the image that is stored."""
        if isinstance(image, bytes):
            path = self.folder / f"{secrets.token_hex(16)}.jpg"
            path.write_bytes(image)
        else:
            if isinstance(image, np.ndarray):
                image = Image.fromarray(image)
            path = self.folder / f"{secrets.token_hex(16)}.png"
            image.save(path, format="PNG", compress_level=1)
        if self.keep_s is not None and time.monotonic() - self._swept > self.keep_s / 10:
            self._sweep()
        return path

    def _sweep(self) -> None:
        self._swept = time.monotonic()
        old = time.time() - self.keep_s
        for path in self.folder.iterdir():
            try:
                if path.stat().st_mtime < old:
                    path.unlink()
            except FileNotFoundError:  # two sweeps at once
                pass

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def port_free(host: str, port: int) -> bool:
    """Whether a server can listen on `host:port` now (False: another one listens there).

    Binds as Gradio and uvicorn do (SO_REUSEADDR), on `host` and on 127.0.0.1 (Gradio
    checks there first), so the answer agrees with what `launch` will find. A host that
    is not this machine's, or a port this user may not take, is a `DataError`.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise DataError(f"cannot serve on host {host!r} ({error}): check --host") from None
    targets = {infos[0][0::4], (socket.AF_INET, ("127.0.0.1", port))}  # (family, address)
    for family, address in targets:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return False
                raise DataError(f"cannot serve on {host}:{port} ({error.strerror}): "
                                "check --host and --port") from None
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that the system says is free now (for a server started next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pick_port(host: str, port: int | None) -> int:
    """The port a page serves on: `port` when given and free, else the first free one
    from `FIRST_PORT`. A taken or impossible `port` is a `DataError` naming `--port`."""
    if port is not None:
        if not 1 <= port <= 65535:
            raise DataError(f"--port {port} is not a port number: give one from 1 to 65535")
        if not port_free(host, port):
            raise DataError(f"port {port} is in use on {host}: give a free one with --port, "
                            f"or leave --port out to take the next free one from {FIRST_PORT}")
        return port
    for candidate in range(FIRST_PORT, FIRST_PORT + PORT_TRIES):
        if port_free(host, candidate):
            return candidate
    raise DataError(f"ports {FIRST_PORT}-{FIRST_PORT + PORT_TRIES - 1} are all in use on "
                    f"{host}: give a free one with --port")


def launch_page(launch: Callable[[int], None], host: str, port: int, asked: bool) -> int:
    """Start a page by `launch(port)` on the port `pick_port` gave, and return the port it
    serves on. `launch` raises OSError when the port was taken since: with `asked` (the
    user's --port) that is a one-line `DataError`; else the next free port is tried."""
    for _ in range(PORT_TRIES):
        try:
            launch(port)
            return port
        except OSError:
            if asked:
                raise DataError(f"port {port} on {host} was taken as the page started: "
                                "give a free one with --port") from None
            port = pick_port(host, None)
    raise DataError(f"every free port on {host} was taken as the page started: give a free "
                    "one with --port")


def check_name(name: str | None) -> str:
    """A typed annotator or voter name, stripped; a `DataError` with a one-line message
    when it is empty, longer than `MAX_NAME` characters, or holds anything but letters
    and digits (any script, with their combining marks), spaces and `_NAME_PUNCTUATION`.

    Names are shown on other people's pages (the campaign page, stats): markup in one
    (`![t](http://...)`, `<img src=...>`) would make their browsers fetch a URL."""
    name = (name or "").strip()
    if not name:
        raise DataError("Type your name first (in \"Your name\"): your votes are recorded "
                        "under it.")
    if len(name) > MAX_NAME:
        raise DataError(f"Your name is {len(name)} characters long: use at most {MAX_NAME}.")
    for char in name:
        category = unicodedata.category(char)
        if category.startswith("C") and char not in _ALLOWED_FORMAT:
            raise DataError(f"Your name holds a control character (U+{ord(char):04X}): "
                            f"use {_NAME_RULE} only.")
        if not (category[0] in "LMN" or char == " " or char in _NAME_PUNCTUATION
                or char in _ALLOWED_FORMAT):
            raise DataError(f'Your name holds "{char}": use {_NAME_RULE} only.')
    return name


def markdown_literal(text: str) -> str:
    """`text` as Markdown that shows exactly `text`: every ASCII punctuation character
    backslash-escaped (CommonMark then reads each as itself: no emphasis, link, image,
    HTML tag or entity can start), line breaks kept as breaks."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text).replace("\n", "  \n")


def read_logins(path: Path) -> list[tuple[str, str]]:
    """`user:password` lines (blank and # lines skipped)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: write one user:password per line")
    logins = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.strip().partition(":")
        if not sep or not user.strip() or not password:
            raise DataError(f"{path}:{number}: write user:password")
        logins.append((user.strip(), password))
    if not logins:
        raise DataError(f"{path} has no logins: write one user:password per line")
    return logins


def server_options() -> dict:
    """What both pages pass to Gradio's `launch` so that the server answers the page and
    nothing more, to anyone (logged in or not):

    - No uploads. Neither page has an upload component, yet Gradio keeps any file posted
      to /gradio_api/upload for up to an hour; that route is answered 403 before a byte
      is read, and `max_file_size=0` refuses a file to Gradio's other multipart routes.
    - No route list: FastAPI's /openapi.json, /docs and /redoc are off.
    - No API description before a login: Gradio embeds every endpoint in each page's HTML
      (`window.gradio_api_info`), the login page's too, and has no switch for it. It is
      blanked; the browser's client then asks /gradio_api/info, which needs the login.
    """
    from starlette.middleware import Middleware

    return {"max_file_size": 0,
            "app_kwargs": {"openapi_url": None, "docs_url": None, "redoc_url": None,
                           "middleware": [Middleware(_page_only)]}}


_UPLOAD_ROUTE = "/gradio_api/upload"
_API_INFO = re.compile(rb"(window\.gradio_api_info\s*=\s*).*?(;?</script>)", re.S)


def _page_only(app: Callable) -> Callable:
    """`app` (ASGI) with uploads refused and the API description cut out of every page
    (see `server_options`)."""
    async def guarded(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        if scope["path"].rstrip("/").endswith(_UPLOAD_ROUTE):
            body = b"uploads are off: these pages take no files"
            await send({"type": "http.response.start", "status": 403, "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        start: dict | None = None
        chunks: list[bytes] = []

        async def send_page(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if b"text/html" in dict(message.get("headers", [])).get(b"content-type", b""):
                    start = message  # held until the whole page is read
                    return
            elif start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                page = _API_INFO.sub(rb"\1null\2", b"".join(chunks))
                headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length",
                                                            str(len(page)).encode())]})
                message = {"type": "http.response.body", "body": page}
            await send(message)

        return await app(scope, receive, send_page)

    return guarded


def unsaved_vote(error: StoreWriteError, folder: Path) -> str:
    """The line both pages show when the file system refused a vote (`error`; the votes
    file is in `folder`): why, and what to do. The pair stays on the page, nothing else
    was lost."""
    problem = (f"disk full ({folder}) - free space" if isinstance(error, DiskFullError)
               else str(error))
    return f"Could not save the vote: {problem} and vote again (the pair stays)."
