"""Many annotators at once on the real page: pairs served from a pool against pairs made live.

    python benchmarks/pool_serving.py                     # 30 annotators, 10 votes each
    python benchmarks/pool_serving.py --annotators 2 --votes 2 --think 0.2   # a check

For each case a store is prepared, `python -m annotate` is started as a server process on
127.0.0.1 (the toy model, `--min-display-ms 0`, the default queue of 8 waiting people),
and `--annotators` sessions (threads spread over `--client-processes` processes: one
Python process's lock would otherwise serialise 30 clients), each speaking Gradio's queue
protocol over HTTP as the page's browser tab does (`Session`) under its own name, press
Generate in Auto mode and then vote `--votes` times, each after looking at the pair for
`--think` seconds (default 4: a crowd that votes every 4-5 s). A vote's latency is the
time from sending it to holding the next pair (the vote's answer names the next pair's
images; both are downloaded). Cases:
- pool: `python -m annotate pool` first makes every pair the annotators will need, then the
  server runs with `--pool`;
- live: the same server without a pool: every pair is generated when it is needed (the
  page keeps `--buffer 3` pairs ready per prompt source).
Reported per case: votes acknowledged, votes a second over the voting phase, p50/p95/max
latency, the votes answered "busy" or refused, and whether every acknowledged vote is in
the store exactly once (read after the server stopped). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from data.store import Store  # noqa: E402
from pages.shared import free_port  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(db: Path, port: int, pool: bool, steps: int) -> subprocess.Popen:
    """`python -m annotate` on the toy, answering on 127.0.0.1:port once this returns."""
    server = subprocess.Popen(
        [sys.executable, "-m", "annotate", "--db", str(db), "--port", str(port),
         "--min-display-ms", "0", "--steps", str(steps), *(["--pool"] if pool else [])],
        cwd=db.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not answer within 180 s")


class Session:
    """One browser tab's traffic, without the browser: Gradio's own queue protocol over
    HTTP (join the queue, read the event's answer from its server-sent events), then the
    two image files the answer names, as the page fetches them, then the event the page
    chains after it (`arm`, which turns the vote buttons on). Costs the client a few ms of
    CPU a vote (gradio_client: about 150 ms), so on a shared machine the figures are the
    server's, not the simulated annotators'."""

    def __init__(self, url: str):
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=120)
        config = self.http.get(f"{self.url}/config").json()
        self.prefix = self.url + config.get("api_prefix", "/gradio_api")
        events = config["dependencies"]
        self.events = {d["api_name"]: i for i, d in enumerate(events) if d.get("api_name")}
        self.chained = {d["trigger_after"]: i for i, d in enumerate(events)
                     if d.get("trigger_after") is not None}  # `.then` events, by the first
        self.session = secrets.token_hex(6)

    def call(self, api: str, *data) -> list:
        """The event's outputs, with its images downloaded."""
        return self._event(self.events[api], list(data))

    def then(self, api: str, showing_id: str) -> None:
        """What the page runs after `api` answered (it turns the vote buttons on)."""
        self._event(self.chained[self.events[api]], [showing_id])

    def _event(self, index: int, data: list) -> list:
        joined = self.http.post(f"{self.prefix}/queue/join", json={
            "data": data, "fn_index": index, "session_hash": self.session,
            "event_data": None, "trigger_id": None})
        joined.raise_for_status()
        event = joined.json()["event_id"]
        with self.http.stream("GET", f"{self.prefix}/queue/data",
                              params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event:  # the session's other events
                    continue
                if message.get("msg") == "process_completed":
                    if not message.get("success", True):
                        raise RuntimeError(str(message.get("output"))[:200])
                    outputs = [None if _unchanged(value) else value
                               for value in message["output"]["data"]]
                    for image in outputs[:2]:
                        if isinstance(image, dict) and image.get("url"):
                            self.http.get(image["url"]).raise_for_status()
                    return outputs
        raise RuntimeError(f"event {index}: the stream ended without an answer")


def _unchanged(value) -> bool:
    """Whether an output is Gradio's "leave it as it is" (`gr.skip()`): no new value."""
    return isinstance(value, dict) and value.get("__type__") == "update" and "value" not in value


def annotate(url: str, k: int, votes: int, think: float, out: dict) -> None:
    """One annotator's session: Generate in Auto mode, then `votes` votes."""
    record = out[k] = {"latencies": [], "acknowledged": 0, "refused": [], "error": None}
    try:
        session = Session(url)
        name = f"annotator-{k}"

        def fresh() -> list:
            """Generate until a pair is shown: a busy generator refuses, and the
            annotator presses Generate again after looking away for `think` seconds."""
            while True:
                shown = session.call("generate", name, "", "auto")
                if shown[3]:
                    session.then("generate", shown[3])
                    return shown
                record["refused"].append(shown[5])
                time.sleep(think)

        shown = fresh()
        for _ in range(votes):
            time.sleep(think)
            start = time.perf_counter()
            after = session.call("vote_left", name, "auto", shown[3])
            latency = time.perf_counter() - start
            if after[3] and after[3] != shown[3]:  # the vote counted and a pair followed
                record["latencies"].append(latency * 1000)
                record["acknowledged"] += 1
                shown = after
                session.then("vote_left", shown[3])
            else:  # said in the note: a vote stored with no pair after it ("busy"), or not
                record["refused"].append(after[5])
                record["acknowledged"] += after[5].startswith("Vote recorded")
                shown = fresh()
    except Exception as error:  # reported in the result, with the annotator
        record["error"] = f"{type(error).__name__}: {error}"


def annotators(url: str, ks: list[int], votes: int, think: float,
               timeout: float) -> dict[int, dict]:
    """Annotators `ks`, a thread each, in this (client) process; their records."""
    out: dict[int, dict] = {}
    threads = [threading.Thread(target=annotate, args=(url, k, votes, think, out))
               for k in ks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return out


def children_cpu() -> float:
    """CPU seconds of this process's ended children (the client processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(work: Path, pool: bool, args: argparse.Namespace) -> dict:
    db = work / ("pool" if pool else "live") / "prefs.duckdb"
    db.parent.mkdir(parents=True)
    made_s = None
    if pool:  # every pair the session will ask for, and one more each for the last reply
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "annotate", "pool", "--db", str(db),
                        "--pairs", str(args.annotators * (args.votes + 2)), "--steps",
                        str(args.steps), "--no-progress"], cwd=db.parent, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        made_s = round(time.perf_counter() - start, 1)
    port = free_port()
    server = start_server(db, port, pool, args.steps)
    out: dict[int, dict] = {}
    served_by = psutil.Process(server.pid)
    server_cpu, clients_cpu = sum(served_by.cpu_times()[:2]), children_cpu()
    groups = [list(range(k, args.annotators, args.client_processes))
              for k in range(min(args.client_processes, args.annotators))]
    try:
        start = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(len(groups)) as clients:
            for part in clients.starmap(annotators, [
                    (f"http://127.0.0.1:{port}/", group, args.votes, args.think,
                     args.timeout) for group in groups]):
                out.update(part)
        seconds = time.perf_counter() - start
        server_cpu = sum(served_by.cpu_times()[:2]) - server_cpu
        clients_cpu = children_cpu() - clients_cpu
    finally:
        server.terminate()
        server.wait(timeout=60)
    latencies = [ms for r in out.values() for ms in r["latencies"]]
    acknowledged = {f"annotator-{k}": r["acknowledged"] for k, r in out.items()}
    with Store(db, read_only=True) as store:
        stored = dict(store.cursor().execute(
            "SELECT u.name, count(*) FROM rankings r JOIN users u USING (user_id) "
            "WHERE r.source = 'human' GROUP BY 1").fetchall())
        distinct = store.cursor().execute(
            "SELECT count(DISTINCT vote_id) = count(*) FROM rankings").fetchone()[0]
    refused = [note for r in out.values() for note in r["refused"]]
    return {
        "case": "pool" if pool else "live", "annotators": args.annotators,
        "pool_made_s": made_s,
        "votes_acknowledged": sum(acknowledged.values()),
        "votes_with_next_pair": len(latencies),
        "votes_per_s": round(sum(acknowledged.values()) / seconds, 2),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(percentile(latencies, 0.95), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "refused": len(refused), "busy": sum("busy" in note for note in refused),
        "refusals": sorted(set(refused))[:3],
        "errors": [r["error"] for r in out.values() if r["error"]],
        "every_acknowledged_vote_stored_once": bool(distinct) and all(
            stored.get(name, 0) == n for name, n in acknowledged.items()),
        "seconds": round(seconds, 1),
        # the cores the server and the simulated annotators' processes kept busy
        "server_cores": round(server_cpu / seconds, 2),
        "clients_cores": round(clients_cpu / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=30)
    parser.add_argument("--votes", type=int, default=10, help="votes per annotator")
    parser.add_argument("--think", type=float, default=4.0,
                        help="seconds an annotator looks at a pair before voting")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps per image")
    parser.add_argument("--cases", nargs="+", choices=["pool", "live"],
                        default=["pool", "live"])
    parser.add_argument("--client-processes", type=int, default=3,
                        help="processes the simulated annotators are spread over")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds a case's annotators get before they are left")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pool-serving-") as folder:
        results = []
        for case in args.cases:
            results.append(run_case(Path(folder), case == "pool", args))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({
        "benchmark": "pool_serving", "model": "toy", "steps": args.steps,
        "think_s": args.think, "votes_per_annotator": args.votes,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_at_start": round(load, 2), "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
