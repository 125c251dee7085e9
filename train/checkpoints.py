"""Resumable checkpoints: accelerate's full state plus the trainer's own position.

A checkpoint is written to `checkpoint-NNNNNN.tmp` by every process and renamed when
complete. Its marker, `trainer_state.json`, is what makes it complete: it is written
last (after every other file is on disk, itself written aside, synced and renamed) and
deleted first (before anything else of a pruned checkpoint), so a kill at any moment
leaves no folder that `latest` would take for complete. The data position is the step
number itself (batches are a function of the step, see trainer.batch_positions), so
resuming never replays the data loader.

The marker also records what kind of run wrote the checkpoint (`run_kind`): a resume
with other settings that change the saved state is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

from cli.errors import TrainError
from models.loading import same_model
from train.config import ONLINE_OBJECTIVES, TrainConfig

STATE_FILE = "trainer_state.json"
KIND_KEY = "run_kind"  # the marker's record of the run that wrote the checkpoint


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"checkpoint-{step:06d}"


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1].split(".")[0])


def completed(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("checkpoint-*")
                  if not p.name.endswith(".tmp") and (p / STATE_FILE).exists())


def find(output_dir: Path, resume: str) -> Path | None:
    """The checkpoint `resume` names (`latest` or a folder); None if `latest` finds none."""
    if resume == "latest":
        found = completed(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).exists():
        raise TrainError(f"{path} is not a complete checkpoint (no {STATE_FILE}): "
                         f"name a folder under {output_dir / 'checkpoints'} or `latest`")
    return path


# --- what kind of run a checkpoint continues ----------------------------------------------
def run_kind(config: TrainConfig) -> dict:
    """The settings that decide the saved state's shape: another value cannot load it (the
    moving average's decay is saved with it and would silently win)."""
    return {"model": config.model, "lora_rank": config.lora_rank,
            "lora_targets": config.lora_targets if config.lora_rank else None,
            "optimizer": config.optimizer, "ema_decay": config.ema_decay,
            "objective": config.objective}


# what a marker written before a setting was recorded means by its absence
_BEFORE_RECORDED = {"ema_decay": 0.0, "objective": "dpo"}


def _differs(key: str, theirs: object, mine: object) -> bool:
    """Whether a recorded setting makes the checkpoint another kind of run: the objective
    only between offline and online ones (an online run's state holds its old policy)."""
    if key == "model":
        return not same_model(theirs, mine)
    if key == "objective":
        return (theirs in ONLINE_OBJECTIVES) != (mine in ONLINE_OBJECTIVES)
    return theirs != mine


def _kind_text(kind: dict) -> str:
    what = (f"LoRA rank {kind['lora_rank']} on {', '.join(kind['lora_targets'])}"
            if kind["lora_rank"] else "a full fine-tune")
    averaged = f" and ema_decay {kind['ema_decay']}" if kind.get("ema_decay") else ""
    online = (f", online RL ({kind['objective']})" if kind.get("objective") in ONLINE_OBJECTIVES
              else "")
    return f"{what} of {kind['model']} with {kind['optimizer']}{averaged}{online}"


def check_kind(checkpoint: Path, config: TrainConfig) -> None:
    """Refuse, in one line, a checkpoint written by another kind of run (checkpoints
    written before the marker recorded it are checked when they load)."""
    theirs = json.loads((checkpoint / STATE_FILE).read_text()).get(KIND_KEY)
    mine = run_kind(config)
    if theirs is None:
        return
    theirs = {**_BEFORE_RECORDED, **theirs}
    differ = [key for key in mine if _differs(key, theirs.get(key), mine[key])]
    if not differ:
        return
    flags = " ".join(f"--{key} {shlex.join(map(str, theirs[key]))}"
                     if isinstance(theirs[key], list) else f"--{key} {theirs[key]}"
                     for key in differ if theirs[key] is not None)
    raise TrainError(f"{checkpoint} was written by another kind of run, {_kind_text(theirs)}; "
                     f"this run is {_kind_text(mine)}: resume with its settings ({flags}), "
                     "or start this run in a new folder (--output_dir NEW)")


# --- writing and removing, marker last and first ----------------------------------------
def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (a rename is durable once its folder is)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _mark_complete(folder: Path, state: dict) -> None:
    """Write the marker after every other file of `folder` is on disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
    aside = folder / (STATE_FILE + ".tmp")
    with open(aside, "w") as marker:
        marker.write(json.dumps(state, indent=1))
        marker.flush()
        os.fsync(marker.fileno())
    aside.replace(folder / STATE_FILE)
    _fsync(folder)


def remove(checkpoint: Path) -> None:
    """Delete a checkpoint marker first: a kill part-way leaves an incomplete folder."""
    marker = checkpoint / STATE_FILE
    if marker.exists():
        marker.unlink()
        _fsync(checkpoint)
    shutil.rmtree(checkpoint, ignore_errors=True)


def prune(output_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove older ones and the leftovers of
    an earlier prune that was killed part-way (incomplete folders older than the kept)."""
    done = completed(output_dir)
    if keep <= 0 or not done:
        return
    oldest_kept = step_of(done[-keep:][0])
    leftovers = [p for p in (output_dir / "checkpoints").glob("checkpoint-*")
                 if not p.name.endswith(".tmp") and p not in done and step_of(p) < oldest_kept]
    for old in [*done[:-keep], *leftovers]:
        remove(old)


def save(accelerator, output_dir: Path, step: int, state: dict, keep: int,
         kind: dict, writer: bool | None = None) -> Path:
    """Save everything needed to continue after `step`; keep only the newest `keep`.
    `kind` is the run's `run_kind`, recorded in the marker. `writer`: whether this process
    makes the folder and completes it (default: the main process; where each machine has
    its own disk, each machine's first process)."""
    writer = accelerator.is_main_process if writer is None else writer
    final = checkpoint_dir(output_dir, step)
    temp = final.with_name(final.name + ".tmp")
    if writer:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if writer:
        _mark_complete(temp, {"step": step, **state, KIND_KEY: kind})
        remove(final)
        temp.rename(final)
        _fsync(final.parent)
        prune(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, checkpoint: Path) -> dict:
    """Restore model, optimizer, LR schedule and RNG states; return the trainer state."""
    try:
        accelerator.load_state(str(checkpoint))
    except RuntimeError as error:
        if "state_dict" not in str(error):
            raise
        raise TrainError(f"{checkpoint} does not fit this run's network: it is another kind "
                         "of run (full fine-tune or LoRA, another LoRA rank or model); resume "
                         "with the settings of its folder's config.yaml, or start this run "
                         "in a new folder (--output_dir NEW)") from None
    state = json.loads((checkpoint / STATE_FILE).read_text())
    state.pop(KIND_KEY, None)
    return state


def interrupted_line(output_dir: Path, argv: list[str]) -> str:
    """What Ctrl+C leaves: the last checkpoint and the command that continues from it."""
    done = completed(output_dir)
    if not done:
        return ("interrupted: no checkpoint yet (checkpoints are written every "
                "checkpoint_every steps); run the same command again to start over")
    command = ["accelerate", "launch", "-m", "train", *_without_resume(argv),
               "--resume", "latest"]
    return (f"interrupted; last checkpoint: step {step_of(done[-1])} ({done[-1]}); "
            f"continue with: {shlex.join(command)}")


def _without_resume(argv: list[str]) -> list[str]:
    """`argv` less any --resume flag and its value."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    return kept
