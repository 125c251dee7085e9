"""Resumable checkpoints: accelerate's full state plus the trainer's own position.

A checkpoint is written to `checkpoint-NNNNNN.tmp` by every process and renamed when
complete, so `latest` never names a half-written folder. The data position is the step
number itself (batches are a function of the step, see trainer.batch_positions), so
resuming never replays the data loader.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from train.errors import TrainError

STATE_FILE = "trainer_state.json"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"checkpoint-{step:06d}"


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


def save(accelerator, output_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Save everything needed to continue after `step`; keep only the newest `keep`."""
    final = checkpoint_dir(output_dir, step)
    temp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        temp.rename(final)
        for old in completed(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, checkpoint: Path) -> dict:
    """Restore model, optimizer, LR schedule and RNG states; return the trainer state."""
    accelerator.load_state(str(checkpoint))
    return json.loads((checkpoint / STATE_FILE).read_text())
