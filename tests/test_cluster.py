"""The trainer at launch scale, on CPU: a cold cache built by every process of a launch,
a killed build resumed, new pairs encoded alone, a collective that waits too long."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import public_shard_table, write_shard

REPO = Path(__file__).resolve().parents[1]
PAIRS = 2_000
COLOURS = ("red", "blue", "green", "orange", "purple")
ENCODED = re.compile(r"process (\d+): encoded ([\d,]+) of ([\d,]+) pairs to cache in "
                     r"([\d.]+) s \(([\d.]+) s CPU\)")


def shard(path: Path, rows: int, start_id: int) -> Path:
    """`rows` decisive toy pairs over rows / 5 captions."""
    table = public_shard_table(
        [(f"a {COLOURS[i % 5]} circle number {i // 5}", float(i % 2), float(1 - i % 2))
         for i in range(rows)], start_id=start_id)
    return write_shard(path, table)


@pytest.fixture(scope="module")
def pairs_2000(tmp_path_factory) -> Path:
    return shard(tmp_path_factory.mktemp("shards") / "train-00000-of-00001.parquet", PAIRS,
                 start_id=10_000)


def train_args(data: list[Path], out: Path, cache: Path, *more: str) -> list[str]:
    return ["toy", "--data", *map(str, data), "--output_dir", str(out), "--cache_dir",
            str(cache), "--eval_every", "0", "--batch_size", "4", "--effective_batch", "8",
            *more]


def launch(processes: int, args: list[str], port: int, timeout: int = 600,
           config: list[str] = ()):
    """`accelerate launch` of the trainer on CPU: DDP, or `config`'s (["--config_file", F])."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "-q",
         *(config or ["--multi_gpu"]), "--num_processes", str(processes), "--num_machines",
         "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
         "--main_process_port", str(port), "-m", "train", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def encoded(stdout: str) -> dict[int, tuple[int, int, float, float]]:
    """process -> (pairs it encoded, pairs the cache lacked, seconds, CPU seconds)."""
    return {int(m[1]): (int(m[2].replace(",", "")), int(m[3].replace(",", "")),
                        float(m[4]), float(m[5])) for m in ENCODED.finditer(stdout)}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


def test_a_cold_two_process_launch_builds_the_cache_together_under_a_15_s_timeout(
        pairs_2000, tmp_path):
    """Neither process waits for the other's encoding: each encodes its share (busy all
    the while: CPU time near wall time) and the launch trains to the end under a 15 s
    process-group timeout; the cache is the one a single process builds."""
    cache = tmp_path / "cache"
    out = launch(2, train_args([pairs_2000], tmp_path / "run", cache, "--max_steps", "2",
                               "--process_group_timeout", "15"), port=29543)
    assert out.returncode == 0, out.stderr[-3000:]
    shares = encoded(out.stdout)
    assert sorted(shares) == [0, 1], out.stdout
    assert sum(share[0] for share in shares.values()) == PAIRS
    for pairs, lacked, seconds, cpu in shares.values():
        assert pairs > PAIRS // 3 and lacked == PAIRS
        assert cpu > 0.25 * seconds, shares  # encoding, not waiting (0-1% before)
    alone = tmp_path / "alone"
    single = subprocess.run(
        [sys.executable, "-m", "train", *train_args([pairs_2000], tmp_path / "one", alone,
                                                    "--max_steps", "1")],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    assert encoded(single.stdout)[0][0] == PAIRS
    assert files(alone) == files(cache)


def test_a_killed_build_resumes_and_new_pairs_alone_are_encoded(pairs_2000, tmp_path):
    """Killed after some chunks: the next run encodes only the rest and leaves no
    temporary folder; ten new pairs beside the 2,000 encode ten pairs."""
    from train.cache import CHUNK

    cache, chunks = tmp_path / "cache", lambda: list(tmp_path.glob("cache/*/pairs/*"))
    args = train_args([pairs_2000], tmp_path / "run", cache, "--max_steps", "1")
    first = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while sum("." not in c.name for c in chunks()) < 2:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    done = sum("." not in c.name for c in chunks())
    assert 2 <= done < -(-PAIRS // CHUNK)
    again = subprocess.run([sys.executable, "-m", "train", *args], capture_output=True,
                           text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert encoded(again.stdout)[0][:2] == (PAIRS - done * CHUNK,) * 2, again.stdout
    assert not [p for p in cache.rglob("*") if ".tmp-" in p.name]
    more = shard(tmp_path / "more" / "train-00000-of-00001.parquet", 10, start_id=90_000)
    grown = subprocess.run(
        [sys.executable, "-m", "train", *train_args([pairs_2000, more], tmp_path / "grown",
                                                    cache, "--max_steps", "1")],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert encoded(grown.stdout)[0][:2] == (10, 10), grown.stdout


def test_a_process_that_waits_past_the_timeout_says_so_in_one_line(pairs_2000, tmp_path):
    """With a 1 s timeout one process's wait for the other ends the run, in words, on a
    line of its own (the other's progress bar may be mid-line): a share of the cache
    that finishes first, or the main process evaluating before the first step."""
    out = launch(2, [*train_args([pairs_2000], tmp_path / "run", tmp_path / "cache",
                                 "--max_steps", "2", "--process_group_timeout", "1"),
                     "--eval_every", "1"], port=29542)
    assert out.returncode != 0
    said = [line for line in out.stderr.splitlines() if "process_group_timeout" in line]
    assert len(said) == 1, out.stderr[-3000:]
    assert said[0].startswith("a process waited more than process_group_timeout (1 s)")
    assert "raise --process_group_timeout" in said[0]


def two_machines(folders: list[Path], args: list[str], port: int) -> list[subprocess.Popen]:
    """Two `accelerate launch`es of two processes each, one per working folder, joined as
    the two machines of one 4-process run (relative paths: each its own disk). Each
    writes its output to out.log and err.log in its folder."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo"}
    return [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "-q", "--multi_gpu",
         "--num_processes", "4", "--num_machines", "2", "--machine_rank", str(rank),
         "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
         "--mixed_precision", "no", "--dynamo_backend", "no",
         "--num_cpu_threads_per_process", "1", "-m", "train", *args],
        cwd=folder, env={**env, "PYTHONPATH": str(REPO)}, stdout=open(folder / "out.log", "w"),
        stderr=open(folder / "err.log", "w"), start_new_session=True)
        for rank, folder in enumerate(folders)]


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process under it (torch's launcher starts its workers
    in sessions of their own, out of reach of a kill of its process group)."""
    import psutil

    children = []
    with contextlib.suppress(psutil.NoSuchProcess):  # a launcher that already ended
        children = psutil.Process(process.pid).children(recursive=True)
    tree = [process.pid, *(child.pid for child in children)]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def logs(folder: Path) -> tuple[str, str]:
    return (folder / "out.log").read_text(), (folder / "err.log").read_text()


@pytest.mark.parametrize("storage", ["node-local", "shared"])
def test_two_machines_checkpoint_are_killed_and_resume_at_one_step(storage, tmp_path):
    """Each machine its own disk (relative paths in two working folders): each builds its
    own cache and keeps a whole copy of each checkpoint. One shared folder: they share
    both. Killed mid-run, `--resume latest` resumes every machine at one step."""
    from train import checkpoints

    data = shard(tmp_path / "shards" / "train-00000-of-00001.parquet", 600, start_id=50_000)
    folders = [tmp_path / "machine-0", tmp_path / "machine-1"]
    for folder in folders:
        folder.mkdir()
    where = (Path("run"), Path("cache")) if storage == "node-local" else \
        (tmp_path / "shared" / "run", tmp_path / "shared" / "cache")
    runs = [folder / where[0] for folder in folders] if storage == "node-local" else \
        [where[0]]
    args = train_args([data], where[0], where[1], "--checkpoint_every", "1",
                      "--checkpoints_kept", "3", "--process_group_timeout", "120",
                      "--batch_size", "2")
    port = 29551 if storage == "node-local" else 29553  # the other's may linger in TIME_WAIT
    launched = two_machines(folders, [*args, "--max_steps", "100000"], port=port)
    try:
        deadline = time.monotonic() + 400
        while not all(len(checkpoints.completed(run)) >= 2 for run in runs):
            assert all(p.poll() is None for p in launched), logs(folders[0])[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        for process in launched:
            kill_tree(process)
    if storage == "node-local":
        for run in runs:  # each machine's copy holds the model, not only its RNG states
            assert (checkpoints.completed(run)[-1] / "model.safetensors").is_file()
        caches = [sorted(p.name for p in (f / "cache").glob("*/pairs/*")) for f in folders]
        assert caches[0] == caches[1] and len(caches[0]) == 3  # each built it all
    step = min(checkpoints.step_of(checkpoints.completed(run)[-1]) for run in runs)
    resumed = two_machines(folders, [*args, "--resume", "latest", "--max_steps",
                                     str(step + 2)], port=port + 1)
    for process, folder in zip(resumed, folders, strict=True):
        assert process.wait(timeout=600) == 0, logs(folder)[1][-3000:]
    outs = [logs(folder) for folder in folders]
    said = [line for stdout, _ in outs for line in stdout.splitlines()
            if line.startswith("resumed from")]
    assert len(said) == 2 and all(line.endswith(f"at step {step}") for line in said), said
    summary = json.loads([line for line in outs[0][0].splitlines() if line.startswith("{")][0])
    assert summary["steps"] == step + 2 and summary["trained_steps"] == 2


def test_fsdp2_trains_as_ddp_does_and_resumes_from_its_sharded_checkpoint(tmp_path):
    """Full DPO with a frozen reference, 2 processes, 10 steps: FSDP2 (docs/accelerate/
    fsdp.yaml, the policy and the reference sharded) and DDP read the same losses (both
    fp32; the sums run in another order, hence 1e-5, not equality); FSDP2's final weights
    equal DDP's, load with plain from_pretrained, and a launch resumed from its step-5
    checkpoint (every process's shard) reads the uninterrupted run's last 5 losses.
    Evaluations (held-out check, sample grid, keep_best) run at steps 0 and 10."""
    import torch
    from diffusers import UNet2DConditionModel

    data = shard(tmp_path / "shards" / "train-00000-of-00001.parquet", 200, start_id=20_000)
    steps = ["--max_steps", "10", "--log_every", "1", "--checkpoint_every", "5",
             "--holdout_pairs", "20", "--beta", "50", "--eval_every", "10", "--sample_seeds",
             "1", "--keep_best", "true"]
    fsdp = ["--config_file", str(REPO / "docs/accelerate/fsdp.yaml")]
    averaged = launch(2, train_args([data], tmp_path / "ema", tmp_path / "cache", *steps),
                      port=29564, config=fsdp)  # the toy preset's moving average: not yet
    assert averaged.returncode == 1, averaged.stderr[-3000:]
    assert "ema_decay does not run under FSDP yet" in averaged.stderr
    assert "give --ema_decay 0" in averaged.stderr and "Traceback" not in averaged.stderr
    steps += ["--ema_decay", "0"]
    runs = {}
    for name, config, port in (("ddp", [], 29561), ("fsdp", fsdp, 29562)):
        out = launch(2, train_args([data], tmp_path / name, tmp_path / "cache", *steps),
                     port=port, config=config)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[name] = [json.loads(line)["loss"]
                      for line in (tmp_path / name / "metrics.jsonl").open()]
    assert len(runs["ddp"]) == 10 and runs["ddp"][0] == pytest.approx(0.6931, abs=1e-4)
    assert runs["fsdp"] == pytest.approx(runs["ddp"], rel=1e-5, abs=1e-6)
    # evaluated as DDP is (held-out accuracy, the grid's score), best/ kept from every shard
    evals = {name: [json.loads(line) for line in (tmp_path / name / "eval.jsonl").open()]
             for name in runs}
    assert [e["step"] for e in evals["fsdp"]] == [0, 10]
    for mine, theirs in zip(evals["fsdp"], evals["ddp"], strict=True):
        assert mine == pytest.approx(theirs, rel=1e-4)
    assert (tmp_path / "fsdp" / "best" / "unet").is_dir()
    ddp, sharded = (UNet2DConditionModel.from_pretrained(tmp_path / name / "final" / "unet")
                    for name in ("ddp", "fsdp"))
    for (key, mine), theirs in zip(sharded.state_dict().items(),
                                   ddp.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6, msg=key)
    checkpoints = tmp_path / "fsdp" / "checkpoints"
    assert (checkpoints / "checkpoint-000005" / "pytorch_model_fsdp_0").is_dir()  # shards
    for later in (checkpoints / "checkpoint-000010", tmp_path / "fsdp" / "final"):
        shutil.rmtree(later)
    resumed = launch(2, train_args([data], tmp_path / "fsdp", tmp_path / "cache", *steps,
                                   "--resume", "latest"), port=29563, config=fsdp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 5" in resumed.stdout
    again = [json.loads(line)["loss"] for line in (tmp_path / "fsdp" / "metrics.jsonl").open()]
    assert again == pytest.approx(runs["fsdp"], rel=1e-6, abs=1e-7)
