"""The README cannot rot: every command in it is run here as written, or checked.

One walk through README.md, in its order, in an empty folder that holds only what a new
user would have there: a Pick-a-Pic shard where the README's download puts it. CHECKS
says how each command is checked:

- run: run as written; it must exit 0.
- shrink: run as written with SHRINK's flags appended (argparse keeps the last value),
  so the toy loop takes seconds; benchmarks/toy_loop.py runs the same text unshrunk.
- serve: started as written, its page opened in chromium (the blind page takes a vote
  that the next command reports), then stopped with Ctrl+C.
- ci: .ci/run runs it.
- loop: the flow toy's loop: benchmarks/toy_loop.py --loop toy-flow runs these very lines
  from README.md, and tests/test_benchmarks.py runs it at the tiny size (on two
  collections), so the walk does not run them a second time.
- gpu: it needs GPUs. accelerate's own parser and config loader read the launch part,
  and the train part runs with --dry_run for that many processes: the preset resolves,
  the data it names is there and holds enough pairs, and the batch divides.
- parse: it needs a real model or the network; its program's own parser reads it, and
  the model paths it names are the ones the trainer writes.
- download: it needs the network; the file it fetches is the one later commands read
  (and for `hf`, its --help knows every flag).

A README command missing from CHECKS, or a CHECKS entry no longer in the README, fails.
"""

from __future__ import annotations

import fnmatch
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import public_shard_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of scripts, not an installed package

from benchmarks.readme import (  # noqa: E402
    README,
    Block,
    Command,
    blocks,
    commands,
    python_blocks,
    within_threads,
)
from benchmarks.toy_loop import LOOPS, TINY, readme_stages  # noqa: E402

TOY_FEEDBACK = "python -m annotate feedback --pairs 2400 --per-prompt 16 --tie-margin 0.5 " \
    "--steps 10 --guidance-range 3 12"
ONE_PROCESS = "accelerate launch -q --config_file docs/accelerate/one_process.yaml"
TOY_TRAIN = "accelerate launch -q --num_cpu_threads_per_process 2 " \
    "--config_file docs/accelerate/one_process.yaml -m train toy --keep_best true"
TOY_BASE = "python -m models.toy.evaluate --model toy --pairs 400"
TOY_ALIGNED = "python -m models.toy.evaluate --model runs/train/toy/best --pairs 400"
TOY_AUTO = "python -m eval auto --aligned runs/train/toy/best --seeds 23 --tie-margin 0.1"
TOY_BLIND = "python -m eval --aligned runs/train/toy/best"
TOY_ROUNDS = "python -m rounds --rounds 3 --pairs 800 --reference previous --keep-best"
FLOW_FEEDBACK = "python -m annotate feedback --model toy-flow --db runs/toy-flow.duckdb " \
    "--pairs 2400 --per-prompt 16 --tie-margin 0.1"
FLOW_TRAIN = "accelerate launch -q --num_cpu_threads_per_process 2 " \
    "--config_file docs/accelerate/one_process.yaml -m train toy-flow"
FLOW_BASE = "python -m models.toy.evaluate --model toy-flow --pairs 400"
FLOW_ALIGNED = "python -m models.toy.evaluate --model runs/train/toy-flow/final --pairs 400"
FLOW_AUTO = "python -m eval auto --base toy-flow --aligned runs/train/toy-flow/final " \
    "--seeds 23 --tie-margin 0.1"
NFT_TRAIN = "accelerate launch -q --num_cpu_threads_per_process 2 " \
    "--config_file docs/accelerate/one_process.yaml -m train toy-flow-nft"
NFT_ALIGNED = "python -m models.toy.evaluate --model runs/train/toy-flow-nft/best --pairs 400"
ROUNDS_BOARD = "python -m eval --board runs/rounds/leaderboard/leaderboard.json --db " \
    "runs/rounds/votes.duckdb"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD35 = "stabilityai/stable-diffusion-3.5-medium"
MULTI_GPU = "accelerate launch -q --config_file docs/accelerate/multi_gpu.yaml"
SHARDS = "pickapic_v2/data"
SHARD = "data/train-00000-of-00645-8e4e2f1d6c0a.parquet"  # the public set's naming

CHECKS = {
    "bash scripts/setup.sh && python -m annotate": "serve",
    "bash scripts/test.sh": "ci",
    TOY_FEEDBACK: "shrink",
    TOY_TRAIN: "shrink",
    TOY_BASE: "shrink",
    TOY_ALIGNED: "shrink",
    TOY_AUTO: "shrink",
    TOY_BLIND: "serve",
    "python -m eval report": "run",
    TOY_ROUNDS: "shrink",
    FLOW_FEEDBACK: "loop",
    FLOW_TRAIN: "loop",
    FLOW_BASE: "loop",
    FLOW_ALIGNED: "loop",
    FLOW_AUTO: "loop",
    NFT_TRAIN: "shrink",
    NFT_ALIGNED: "shrink",
    "python -m annotate --model runs/rounds --db runs/people.duckdb --prompts "
    "runs/rounds/toy-prompts.csv": "serve",
    ROUNDS_BOARD: "serve",
    f"python -m annotate --model {SD15} --host 0.0.0.0": "parse",
    "hf download yuvalkirstain/pickapic_v2 --repo-type dataset --include "
    '"data/train-0000*" --local-dir pickapic_v2': "download",
    f"{ONE_PROCESS} -m train sd15 --data runs/prefs.duckdb {SHARDS} --dry_run": "run",
    "accelerate launch -q --config_file docs/accelerate/multi_gpu.yaml -m train sd15 "
    f"--data runs/prefs.duckdb {SHARDS}": "gpu",
    f"accelerate launch -q --config_file docs/accelerate/multi_gpu.yaml -m train sdxl "
    f"--data {SHARDS}": "gpu",
    f"{ONE_PROCESS} -m train lora --data runs/prefs.duckdb {SHARDS}": "gpu",
    "python -m annotate --model stabilityai/stable-diffusion-3.5-medium --guidance 4.5 "
    "--steps 40 --host 0.0.0.0": "parse",
    f"{ONE_PROCESS} -m train sd3 --data runs/prefs.duckdb {SHARDS}": "gpu",
    f"{ONE_PROCESS} -m train flux --data runs/prefs.duckdb {SHARDS}": "gpu",
    "python -m eval auto --base black-forest-labs/FLUX.1-dev --aligned runs/train/flux/final "
    "--prompts PartiPrompts.tsv --scorer pickscore --guidance 3.5 --steps 28": "parse",
    "accelerate launch -q --config_file docs/accelerate/multi_node.yaml --machine_rank 0 "
    f"-m train sd15 --data {SHARDS}": "gpu",
    "python -m annotate --model black-forest-labs/FLUX.2-klein-base-4B --guidance-range 3 6 "
    "--steps 50 --host 0.0.0.0": "parse",
    f"{ONE_PROCESS} -m train flux2-klein --data runs/prefs.duckdb": "gpu",
    f"{ONE_PROCESS} -m train qwen-image --data runs/prefs.duckdb": "gpu",
    "accelerate launch -q --config_file docs/accelerate/fsdp.yaml -m train qwen-image "
    "--lora_rank 0 --data runs/prefs.duckdb": "gpu",
    f"{ONE_PROCESS} -m train z-image --data runs/prefs.duckdb": "gpu",
    "python -m eval auto --base Tongyi-MAI/Z-Image --aligned runs/train/z-image/final "
    "--prompts PartiPrompts.tsv --scorer pickscore --guidance 4 --steps 50": "parse",
    "curl -LO https://raw.githubusercontent.com/google-research/parti/main/PartiPrompts.tsv":
        "download",
    f"python -m eval --base {SD15} --aligned runs/train/sd15/final --prompts PartiPrompts.tsv "
    "--host 0.0.0.0": "parse",
    f"python -m eval auto --base {SD15} --aligned runs/train/sd15/final --prompts "
    "PartiPrompts.tsv --scorer pickscore": "parse",
    f"{MULTI_GPU} -m annotate pool --model {SD35} --prompts PartiPrompts.tsv "
    "--guidance-range 3 12 --steps 40 --pairs 20000": "parse",
    f"python -m annotate --pool --model {SD35} --prompts PartiPrompts.tsv --steps 40 "
    "--overlap 3 --auth logins.txt --host 0.0.0.0": "parse",
    f"{MULTI_GPU} -m annotate feedback --model {SD35} --prompts PartiPrompts.tsv --scorer "
    "pickscore --tie-margin 0.1 --pairs 100000": "parse",
    f"{MULTI_GPU} -m eval auto --base {SD15} --aligned runs/train/sd15/final --prompts "
    "PartiPrompts.tsv --scorer pickscore --seeds 4": "parse",
    f"python -m data import {SHARDS} --source public:pickapic_v2": "run",
    "python -m data stats": "run",
    "python -m data export runs/export": "run",
}

# Size only: how many pairs, steps (training and sampling) and seeds. Nothing here changes
# what a command does. The toy-loop benchmark's --tiny sizes, appended to the same README
# commands; rounds' --train-args carries the train stage's size flags.
SHRINK = {readme_stages(loop)[stage]: flags for loop in LOOPS if loop != "toy-flow"
          for stage, flags in TINY.items()}
SHRINK[NFT_TRAIN] = ["--max_steps", "1", "--eval_every", "1", "--sample_seeds", "1",
                     "--sample_steps", "2", "--groups_per_step", "2", "--group_size", "2",
                     "--rollout_steps", "2"]
SHRINK[NFT_ALIGNED] = ["--pairs", "8"]
SHRINK[TOY_ROUNDS] = ["--rounds", "2", "--pairs", "16", "--per-prompt", "4", "--steps", "6",
                      "--eval-seeds", "1", "--adherence-pairs", "8", "--train-args",
                      "--max_steps", "2", "--eval_every", "2", "--sample_seeds", "1",
                      "--holdout_pairs", "1"]
SIZE_FLAGS = {"--pairs", "--per-prompt", "--steps", "--max_steps", "--eval_every",
              "--holdout_pairs", "--seeds", "--rounds", "--eval-seeds", "--adherence-pairs",
              "--sample_seeds", "--sample_steps", "--train-args", "--groups_per_step",
              "--group_size", "--rollout_steps"}


def test_every_readme_command_is_checked_and_every_check_is_in_the_readme():
    written = [c.text for c in commands()]
    unchecked = [text for text in written if text not in CHECKS]
    assert not unchecked, f"README commands that tests/test_readme.py does not check: {unchecked}"
    stale = [text for text in CHECKS if text not in written]
    assert not stale, f"checks of commands no longer in README.md: {stale}"
    assert len(python_blocks()) == 1
    # every block is a command or the Python example, but the citation, which is no code
    assert {b.language for b in blocks()} <= {"bash", "python", "bibtex"}


def test_shrinking_only_changes_sizes_and_the_benchmark_runs_the_same_text():
    for text, flags in SHRINK.items():
        assert CHECKS[text] == "shrink"
        assert {f for f in flags if f.startswith("--")} <= SIZE_FLAGS, text
    stages = {text for loop in LOOPS for text in readme_stages(loop).values()}
    flow = set(readme_stages("toy-flow").values())
    assert flow == {text for text, kind in CHECKS.items() if kind == "loop"}
    assert (stages - flow) | {TOY_ROUNDS, NFT_TRAIN, NFT_ALIGNED} == set(SHRINK)


def test_ci_runs_the_readme_test_command_and_it_sets_up_first():
    assert re.search(r"^bash scripts/test\.sh$", (REPO / ".ci/run").read_text(), re.M)
    test_script = (REPO / "scripts/test.sh").read_text()
    assert re.search(r"^bash scripts/setup\.sh$", test_script, re.M)
    assert re.search(r"pytest", test_script)


def test_the_readme_links_and_picture_exist():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)\)", text)
    assert "docs/toy_loop_before_after.png" in targets
    missing = [t for t in targets if not t.startswith("http") and not (REPO / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


# --- the walk ---------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """An empty folder with 600 decisive public pairs where the README's download puts them,
    and the clone's accelerate configs, which README's launch commands name."""
    shutil.copytree(REPO / "docs" / "accelerate", tmp_path / "docs" / "accelerate")
    rows = [(f"a test prompt {i % 50}", float(i % 2), float(1 - i % 2)) for i in range(600)]
    path = tmp_path / "pickapic_v2" / SHARD
    path.parent.mkdir(parents=True)
    pq.write_table(public_shard_table(rows, image_size=16), path)
    return tmp_path


def _environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(text: str, cwd: Path, **env: str) -> str:
    text = within_threads(text, os.environ.get("OMP_NUM_THREADS"))
    done = subprocess.run(["bash", "-c", text], cwd=cwd, env=_environment(**env),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"`{text}` exited {done.returncode}:\n{done.stderr[-3000:]}\n{done.stdout[-2000:]}")
    return done.stdout


class _Served:
    """A command started in its own process group, its stdout read line by line."""

    def __init__(self, text: str, cwd: Path):
        self.text = text
        self.process = subprocess.Popen(
            ["bash", "-c", text], cwd=cwd, env=_environment(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def url(self) -> str:
        while True:
            line = self.lines.get(timeout=300)
            assert line is not None, f"`{self.text}` stopped:\n{self.process.stderr.read()}"
            found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if found:
                return found.group(1)

    def stop(self) -> None:
        """Ctrl+C, as a person stops it; it must exit within a minute."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise


def _wait_for_a_pair(page, stalled_s: float = 300) -> None:
    """Until the blind page shows a pair to vote on. The page is up before its images are
    made and says how far that is: this waits as long as the count moves, however loaded
    the machine, and fails if it stops moving for `stalled_s` or the making stops."""
    last, since = None, time.monotonic()
    while not page.evaluate("() => !!document.querySelector('#eval-image-b img') && "
                            "!document.querySelector('#eval-vote-a').disabled"):
        progress = page.evaluate("() => document.querySelector('#eval-progress')?.innerText")
        assert "stopped" not in (progress or ""), progress
        if progress != last:
            last, since = progress, time.monotonic()
        assert time.monotonic() - since < stalled_s, f"no progress in {stalled_s} s: {last}"
        time.sleep(1)


def _serve(text: str, cwd: Path, browser) -> None:
    served = _Served(text, cwd)
    try:
        page = browser.new_page()
        page.goto(served.url())
        if text in (TOY_BLIND, ROUNDS_BOARD):
            _wait_for_a_pair(page)
            page.fill("#eval-voter input, #eval-voter textarea", "readme")
            page.click("#eval-vote-a")
            counted = ": 1 vote" if text == TOY_BLIND else ": 1."  # a board: per matchup
            page.wait_for_function("text => document.querySelector('#eval-tally').innerText"
                                   ".includes(text)", arg=counted, timeout=30_000)
        else:
            page.get_by_text("Which image is better?").wait_for(timeout=60_000)
            page.wait_for_selector("#vote-left", timeout=30_000)
        page.close()
    finally:
        served.stop()


def _check_run(text: str, cwd: Path) -> None:
    out = _run(text, cwd)
    if text == "python -m eval report":
        assert '"votes": 1' in out
        assert (cwd / "runs/eval/human-toy/report.md").exists()
    if text.endswith("--dry_run"):
        assert "1 process x 8 pairs x 256 accumulation = 2,048 pairs per step" in out, out


def _check_gpu(text: str, cwd: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    launch = launch_command_parser().parse_args(shlex.split(text)[2:])
    assert launch.module and launch.training_script == "train", text
    processes = 1
    if launch.config_file:
        config = load_config_from_file(str(REPO / launch.config_file))
        processes = launch.num_processes or config.num_processes
        assert launch.machine_rank is None or launch.machine_rank < config.num_machines
    out = _run(shlex.join([sys.executable, "-m", "train", *launch.training_script_args,
                           "--dry_run"]), cwd, WORLD_SIZE=str(processes))
    assert f"batch:  {processes} process" in out, out


def _check_parse(text: str) -> None:
    """The command's flags parse; under `accelerate launch`, the launcher's too, with a
    config file that exists, and the module's flags as the module reads them."""
    from accelerate.commands.launch import launch_command_parser

    from annotate.__main__ import COMMANDS as ANNOTATE
    from cli.parser import parse_command
    from eval.config import COMMANDS as EVAL
    from train.config import resolve

    argv = shlex.split(text)
    if argv[:2] == ["accelerate", "launch"]:
        launch = launch_command_parser().parse_args(argv[2:])
        assert launch.module and (REPO / launch.config_file).exists(), text
        module, args = launch.training_script, launch.training_script_args
    else:
        module, args = argv[2], argv[3:]
    commands, default = (EVAL, "blind") if module == "eval" else (ANNOTATE, "page")
    _, config = parse_command(commands, args, f"python -m {module}", default=default)
    aligned = getattr(config, "aligned", None)
    if aligned:  # what the trainer writes for that preset
        preset = Path(aligned).parent.name
        assert str(Path(resolve(preset).output_dir) / "final") == aligned, text


def _check_download(text: str, cwd: Path) -> None:
    argv = shlex.split(text)
    if argv[0] == "curl":
        name = argv[-1].rsplit("/", 1)[1]
        assert any(f"--prompts {name}" in t for t in CHECKS), f"nothing reads {name}"
        return
    help_text = _run("hf download --help", cwd)
    for flag in (a for a in argv if a.startswith("--")):
        assert flag in help_text, f"hf download has no {flag}"
    pattern = argv[argv.index("--include") + 1]
    local = argv[argv.index("--local-dir") + 1]
    assert fnmatch.fnmatch(SHARD, pattern)
    assert (cwd / local / SHARD).exists()  # where the walk's shard is: the README's path


def _check_python(block: Block, cwd: Path) -> None:
    out = _run(shlex.join([sys.executable, "-c", block.text]), cwd)
    assert re.search(r"^\d+ ", out, re.M), out  # len(pairs) and a caption


def test_the_readme_walk_from_an_empty_folder(sandbox, browser):
    steps: list[Command | Block] = sorted([*commands(), *python_blocks()],
                                          key=lambda step: step.line)
    for step in steps:
        where = f"README.md:{step.line}"
        if isinstance(step, Block):
            _check_python(step, sandbox)
            continue
        kind = CHECKS[step.text]
        print(f"{where} [{kind}] {step.text}", flush=True)
        if kind == "run":
            _check_run(step.text, sandbox)
        elif kind == "shrink":
            _run(f"{step.text} {shlex.join(SHRINK[step.text])}", sandbox)
        elif kind == "serve":
            _serve(step.text.split(" && ")[-1], sandbox, browser)
        elif kind == "gpu":
            _check_gpu(step.text, sandbox)
        elif kind == "parse":
            _check_parse(step.text)
        elif kind == "download":
            _check_download(step.text, sandbox)
        elif kind == "loop":
            pass  # tests/test_benchmarks.py::test_the_flow_toy_loop_on_two_collections
        else:
            assert kind == "ci"  # test_ci_runs_the_readme_test_command_and_it_sets_up_first
    assert (sandbox / "runs/train/toy/best").is_dir()  # what the toy's evaluations judge
    assert (sandbox / "runs/eval/auto-toy/report.md").exists()
    assert (sandbox / "runs/train/toy-flow-nft/best").is_dir()
    assert (sandbox / "runs/train/toy-flow-nft/rollouts.duckdb").exists()
    assert list((sandbox / "runs/export").rglob("*.parquet"))
    assert (sandbox / "runs/rounds/leaderboard/leaderboard.md").exists()
    assert (sandbox / "runs/rounds/votes.duckdb").exists()  # the board page's vote
