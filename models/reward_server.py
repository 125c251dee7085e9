"""A scorer served over HTTP, and the client that uses one like any other scorer.

    python -m models.reward_server --scorer toy_judge --port 8765
    python -m models.reward_server --scorer my_rewards:hpsv3 --port 8766   # its own venv

Reward models pin library versions that clash (hpsv3 pins transformers 4.45.2,
image-reward timm 0.6.13), so the RL frameworks run them as servers; here any scorer a
command takes (a built-in, a judge's folder, a `module:callable`) can run in a process
and environment of its own, and every command takes `http://HOST:PORT` where it takes a
scorer: the trainer's --rewards, --scorer and --guard_scorers, AI feedback, eval auto,
the leaderboard.

The protocol (docs/SCORERS.md, "A scorer over HTTP"), JSON both ways:
- `GET /` -> {"scorer": NAME}
- `POST /score` {"prompts": [P, ...], "images": [PNG as base64, ...]} -> {"scores": [S, ...]},
  one finite float per (prompt, image), in order; any length the server's memory allows.
- An error is a 4xx/5xx reply {"error": ONE LINE}; the client raises it as a ModelError.
PNG keeps pixels exact: a scorer gives the same number over HTTP as in process.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from PIL import Image

from cli.errors import ModelError, UsageError
from cli.parser import parse, setting
from models.scorer_names import SCORER_HELP

TIMEOUT_S = 600  # a large batch of a large reward model on a busy GPU


def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


class HttpScorer:
    """The client: `score(prompts, images)` posts them to a reward server."""

    def __init__(self, url: str, timeout: float = TIMEOUT_S):
        self.url, self.timeout = url.rstrip("/"), timeout

    def _request(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as error:
            try:
                said = json.loads(error.read()).get("error", error.reason)
            except ValueError:
                said = error.reason
            raise ModelError(f"reward server {self.url}: {said}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ModelError(f"reward server {self.url} does not answer ({reason}): start "
                             "it with python -m models.reward_server --scorer NAME "
                             "--port PORT") from None

    def name(self) -> str:
        return self._request("/")["scorer"]

    def __call__(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> torch.Tensor:
        reply = self._request("/score", {"prompts": list(prompts),
                                         "images": [encode_png(im) for im in images]})
        return torch.tensor(reply["scores"], dtype=torch.float64)


@dataclass(frozen=True)
class ServeConfig:
    """Serve one scorer over HTTP for the trainer, AI feedback and eval to call."""

    scorer: str = setting("the scorer served: " + SCORER_HELP, "toy_judge")
    host: str = setting("address to listen on (127.0.0.1: this machine only)", "127.0.0.1")
    port: int = setting("port to listen on (0: any free one, printed)", 8765)
    device: str = setting("where the scorer runs: cpu, cuda, cuda:1 ...", "cpu")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError("--port must be between 0 and 65535")


def make_server(scorer, name: str, host: str, port: int) -> ThreadingHTTPServer:
    """A server for `scorer`, one request at a time through the scorer (a model on one
    device scores one batch at a time)."""
    from models.scorers import checked_scores

    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._reply(200, {"scorer": name})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/score":
                self._reply(404, {"error": f"no {self.path}: POST /score"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompts, images = body["prompts"], [decode_png(i) for i in body["images"]]
                if len(prompts) != len(images):
                    raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
            except (ValueError, KeyError, TypeError, OSError) as error:
                self._reply(400, {"error": f"bad request: {error}"})
                return
            try:
                with lock:
                    scores = checked_scores(scorer, name, prompts, images)
            except ModelError as error:
                self._reply(500, {"error": str(error)})
                return
            self._reply(200, {"scores": scores})

        def log_message(self, format: str, *args) -> None:  # quiet: one line per batch is noise
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    from models.scorers import load_scorer

    config = parse(ServeConfig, argv, prog="python -m models.reward_server")
    scorer = load_scorer(config.scorer, device=config.device)
    server = make_server(scorer, config.scorer, config.host, config.port)
    host, port = server.server_address[:2]
    print(f"serving {config.scorer} at http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    from cli.entry import run_main

    sys.exit(run_main(main))
