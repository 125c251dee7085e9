"""This process's place in an `accelerate launch`, for the commands that split work.

AI feedback, pair pools and eval auto make images for a list of items that follow from
the run's settings alone. Under `accelerate launch` every process takes every `count`-th
batch of the same plan (its share), so the union of the shares is exactly what one
process would make, whatever the number of processes. A plain `python -m ...` is the
launch of one process. The processes meet only at the start (the plan) and at the end
(the tallies): no process waits on another for longer than one batch's work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    rank: int = 0
    count: int = 1
    device: str | None = None  # None: models.loading's default device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: list[T]) -> list[T]:
        """This process's items: every `count`-th, from its rank."""
        return items[self.rank::self.count]

    def broadcast(self, value: Any) -> Any:
        """The main process's `value`, in every process."""
        if self.count == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order (in every process)."""
        if self.count == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def wait(self) -> None:
        if self.count > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


ONE_PROCESS = Launch()


def this_launch() -> Launch:
    """The launch this process runs in: several processes under `accelerate launch`
    (one GPU each where there are GPUs), else one."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Launch()
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # as accelerate's Accelerator does: CPU processes when asked, or when there is no GPU
    on_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    device = None if state.device.type == "cpu" else str(state.device)
    return Launch(state.process_index, state.num_processes, device)
